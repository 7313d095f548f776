"""``reinlm eval``: metrics of a model, run directory, latent model or generations file (flags = EvalConfig)."""

from __future__ import annotations

import argparse

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.yamlfile import load_yaml
from reinlm.evaluation.evaluate import METRICS, EvalConfig, evaluate, format_table
from reinlm.utils.outdir import check_output_dir


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate a model or generations: reward, quality-diversity, perplexity, distinct-n, ...",
        description="Sample M completions per prompt (seeded) from a model, a run directory (RUN_DIR/final) or a "
                    "latent-action model, or read existing ones with --generations, then compute metrics "
                    f"({', '.join(METRICS)}). Prints a table and writes OUT/eval.json and OUT/samples.jsonl. "
                    "Example: reinlm eval --model smollm2-135m --prompts builtin:neutral --samples-per-prompt 8 "
                    "--reward sentiment. See docs/evaluation.md.",
    )
    p.add_argument("--config", help="YAML file of eval options (flags override it)")
    p.add_argument("--json", action="store_true", help="print the result object (metrics + info) as JSON on stdout")
    add_dataclass_args(p, EvalConfig, group="evaluation options")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = build_config(EvalConfig, args, load_yaml(args.config))
    if cfg.out:
        check_output_dir(cfg.out)  # before any model loads
    result = evaluate(cfg)
    if args.json:
        print_json(result.to_json(), indent=2, default=str)  # the same object as eval.json
    else:
        print(format_table(result.metrics, result.info))
        print(f"wrote {result.out_dir / 'eval.json'} and {result.out_dir / 'samples.jsonl'}")
    return 0
