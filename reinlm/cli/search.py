"""``reinlm search``: Monte-Carlo tree search over latent actions (CoLA), optionally against best-of-N sampling.
Flags are the fields of :class:`reinlm.latent.search.SearchConfig`."""

from __future__ import annotations

import argparse

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.yamlfile import load_yaml
from reinlm.latent.search import SearchConfig, format_report, run_search


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "search", help="tree search over latent actions with a reward (and a Q-model), vs best-of-N",
        description="Example: reinlm search --latent runs/latent --reward sentiment --q runs/q --budget 1024 "
                    "--compare best-of-n \"I watched this film last night and\". The budget counts world-model "
                    "token forwards (rollouts included); best-of-N gets the same spend.")
    p.add_argument("prompt_text", nargs="?", default=None, metavar="PROMPT", help="the prompt (or use --prompts)")
    p.add_argument("--config", help="YAML file of these fields (flags override it)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_dataclass_args(p, SearchConfig)
    return p


def run(args: argparse.Namespace) -> int:
    values = load_yaml(args.config)
    if args.prompt_text is not None:
        values["prompt"] = args.prompt_text
    cfg = build_config(SearchConfig, args, values)
    report = run_search(cfg)
    if args.json:
        print_json(report, indent=2)
    else:
        print(format_report(report))
    return 0
