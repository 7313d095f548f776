"""``reinlm reward``: score texts with a reward SPEC (the grammar of docs/rewards.md).

Prints one row per text (the total, and each component when there are several); ``--json`` prints a JSON list
of totals, one number per text (``null`` for a text skipped with ``--on-error skip``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Literal

from reinlm.config import add_dataclass_args, build_config, check_choice, load_yaml, opt
from reinlm.errors import ConfigError


@dataclass
class RewardCommandConfig:
    """Flags of ``reinlm reward`` (besides the texts and ``--json``)."""

    reward: str = opt("", "reward SPEC, e.g. sentiment, contains_words:red,blue, 0.5*sentiment+target_length:80")
    prompt: str = opt("", "prompt the texts are completions of (passed to every reward as the prompt)")
    reference: str | None = opt(None, "reference text, passed as the `reference` column (for rouge)")
    on_error: Literal["fail", "skip"] = opt("fail", "a reward returning NaN/None/wrong length or raising: fail, or skip that text")
    device: str = opt("cpu", "device for rewards that run a model (cpu, cuda, auto)")

    def __post_init__(self):
        if not self.reward or not str(self.reward).strip():
            raise ConfigError("reward: got no SPEC; allowed: --reward SPEC, e.g. --reward sentiment or "
                              "--reward '0.5*sentiment+contains_words:red'.")
        check_choice("on_error", self.on_error, ("fail", "skip"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``reinlm reward`` and return its parser."""
    from reinlm.rewards.base import available_rewards

    p = subparsers.add_parser(
        "reward", help="score texts with a reward SPEC",
        description="Score each TEXT with the reward SPEC and print the scores. SPEC grammar: docs/rewards.md; "
                    "e.g. sentiment, contains_words:red,blue, 'embedding_similarity:target=\"Hi, there!\"', "
                    "'0.5*sentiment+-1*target_length:20', my_rewards.py:fn. Registered rewards: "
                    f"{', '.join(available_rewards())}.",
    )
    add_dataclass_args(p, RewardCommandConfig)
    p.add_argument("--config", help="YAML file with these fields; flags override it")
    p.add_argument("--json", action="store_true", help="print a JSON list of totals, one per text")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to score (completions of --prompt)")
    return p


def run(args: argparse.Namespace) -> int:
    """Score ``args.texts`` and print a table (or JSON); returns 0."""
    from reinlm.rewards import parse_reward_spec

    cfg = build_config(RewardCommandConfig, args, load_yaml(args.config))
    reward_set = parse_reward_spec(cfg.reward, on_error=cfg.on_error, device=cfg.device)
    texts = list(args.texts)
    columns = {"reference": [cfg.reference] * len(texts)} if cfg.reference is not None else None
    prompts = [cfg.prompt] * len(texts)
    scores = reward_set.score(prompts, texts, columns)
    totals = [t if ok else None for t, ok in zip(scores.total.tolist(), scores.valid.tolist())]
    if args.json:
        print(json.dumps(totals))
        return 0
    print(format_table(texts, totals, {k: v.tolist() for k, v in scores.components.items()}))
    for problem in scores.problems:
        print(f"skipped: {problem}")
    return 0


def format_table(texts: list[str], totals: list[float | None], components: dict[str, list[float]]) -> str:
    """A plain-text table: total, then each component when there are several, then the text (shortened)."""
    cols = ["total"] + (list(components) if len(components) > 1 else [])
    widths = [max(9, len(c)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths)) + "  text"]
    for i, text in enumerate(texts):
        cells = ["skipped" if totals[i] is None else f"{totals[i]:.4f}"]
        cells += [f"{components[c][i]:.4f}" for c in cols[1:]]
        short = " ".join(text.split())
        short = short if len(short) <= 70 else short[:67] + "..."
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)) + f"  {short}")
    return "\n".join(lines)
