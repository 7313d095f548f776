"""``reinlm explore --latent DIR "PROMPT"``: what the world model writes under each latent action, and the
policy's most likely actions for the prompt (the BWArea card's "I like eating" table)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from reinlm.cli.jsonout import print_json
from reinlm.config.coerce import check_field
from reinlm.config.schema import check_device
from reinlm.latent.model import LatentActionModel


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("explore", help="show the continuation under each latent action",
                              description='Example: reinlm explore --latent runs/latent "I like eating"')
    p.add_argument("prompt", help="prompt text")
    p.add_argument("--latent", required=True, metavar="DIR", help="latent model directory")
    p.add_argument("--new-tokens", type=int, default=4, help="greedy tokens written under each action (default: 4)")
    p.add_argument("--top", type=int, default=8, help="policy actions listed (default: 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(args: argparse.Namespace) -> int:
    from reinlm.latent.explore import explore, format_exploration

    for name, lo in (("new_tokens", 1), ("top", 1)):
        check_field(name, getattr(args, name), int, {"lo": lo})
    check_device("device", args.device)
    model = LatentActionModel.from_pretrained(args.latent, device=args.device)
    ex = explore(model, args.prompt, new_tokens=args.new_tokens, top=args.top)
    if args.json:
        print_json(asdict(ex), indent=2)
    else:
        print(format_exploration(ex))
    return 0
