"""``reinlm explore --latent DIR "PROMPT"``: what the world model writes under each latent action, and the
policy's most likely actions for the prompt (the BWArea card's "I like eating" table). Flags are the fields
of :class:`ExploreConfig`."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, device_opt, opt
from reinlm.latent.model import LatentActionModel


@dataclass
class ExploreConfig(Config):
    latent: str = opt("", "latent model directory", required=True, metavar="DIR")
    new_tokens: int = opt(4, "greedy tokens written under each action", lo=1)
    top: int = opt(8, "policy actions listed", lo=1)
    device: str = device_opt("cpu")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("explore", help="show the continuation under each latent action",
                              description='Example: reinlm explore --latent runs/latent "I like eating"')
    p.add_argument("prompt", help="prompt text")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_dataclass_args(p, ExploreConfig)
    return p


def run(args: argparse.Namespace) -> int:
    from reinlm.latent.explore import explore, format_exploration

    cfg = build_config(ExploreConfig, args)
    model = LatentActionModel.from_pretrained(cfg.latent, device=cfg.device)
    ex = explore(model, args.prompt, new_tokens=cfg.new_tokens, top=cfg.top)
    if args.json:
        print_json(asdict(ex), indent=2)
    else:
        print(format_exploration(ex))
    return 0
