"""``reinlm reward``: score texts with a reward SPEC (the grammar of docs/rewards.md).

Texts come from the command line or from a JSONL file (``--data``: one object per line with ``completion``, an
optional ``prompt`` and any other columns, passed to the rewards as keyword arguments as in training).
Prints one row per text (the total, and each component when there are several); ``--json`` prints a JSON list
of totals, one number per text (``null`` for a text that no reward scored or that was skipped).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.coerce import check_choice
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, check_device, opt
from reinlm.config.yamlfile import load_yaml
from reinlm.errors import ConfigError
from reinlm.rewards import parse_reward_spec
from reinlm.rewards.base import available_rewards
from reinlm.rewards.combine import completion_text


@dataclass
class RewardCommandConfig(Config):
    """Flags of ``reinlm reward`` (besides the texts and ``--json``)."""

    reward: str = opt("", "reward SPEC, e.g. sentiment, contains_words:red,blue, 0.5*sentiment+target_length:80")
    prompt: str = opt("", "prompt the texts are completions of (passed to every reward as the prompt)")
    reference: str | None = opt(None, "reference text, passed as the `reference` column (for rouge)")
    data: str | None = opt(None, "JSONL file, one object per line: completion (text, or TRL's [{role, content}] "
                                 "messages), optional prompt (text or a message list), any other columns (passed "
                                 "to the rewards by name); instead of TEXT arguments")
    tokenizer: str | None = opt(None, "model whose tokenizer gives the completion_ids rewards receive (e.g. "
                                      "smollm2-135m); without it rewards get no completion_ids (unless the data "
                                      "has a completion_ids column)")
    on_error: Literal["fail", "skip"] = opt("fail", "a reward returning NaN/None/wrong length or raising: fail, or skip that text")
    device: str = opt("cpu", "device for rewards that run a model (cpu, cuda, auto)", check=check_device)

    def __post_init__(self):
        super().__post_init__()  # every field checked and coerced first
        if not self.reward or not str(self.reward).strip():
            raise ConfigError("reward: got no SPEC; allowed: --reward SPEC, e.g. --reward sentiment or "
                              "--reward '0.5*sentiment+contains_words:red'.")
        check_choice("on_error", self.on_error, ("fail", "skip"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``reinlm reward`` and return its parser."""
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
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to score (completions of --prompt); or --data FILE")
    return p


def run(args: argparse.Namespace) -> int:
    """Score ``args.texts`` (or the rows of ``--data``) and print a table (or JSON); returns 0."""
    cfg = build_config(RewardCommandConfig, args, load_yaml(args.config))
    prompts, texts, columns = _inputs(cfg, list(args.texts))
    reward_set = parse_reward_spec(cfg.reward, on_error=cfg.on_error, device=cfg.device)
    completion_ids = columns.pop("completion_ids", None)
    if completion_ids is None and cfg.tokenizer:
        from reinlm.hub import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
        completion_ids = tok([completion_text(t) for t in texts], add_special_tokens=False)["input_ids"]
    scores = reward_set.score(prompts, texts, columns or None, completion_ids=completion_ids)
    totals = [t if ok else None for t, ok in zip(scores.total.tolist(), scores.valid.tolist())]
    if args.json:
        print_json(totals)
        return 0
    shown = [completion_text(t) for t in texts]
    print(format_table(shown, totals, {k: v.tolist() for k, v in scores.components.items()}))
    for problem in scores.problems:
        print(f"skipped: {problem}")
    for name, value in scores.metrics.items():
        print(f"log_metric {name}: {value:.4f}")
    return 0


def _inputs(cfg: RewardCommandConfig, texts: list[str]) -> tuple[list, list, dict[str, list]]:
    """``(prompts, completions, columns)`` from the TEXT arguments and flags, or from ``--data``."""
    if cfg.data is None:
        if not texts:
            raise ConfigError("texts: got none; allowed: one or more TEXT arguments, or --data FILE.jsonl.")
        columns = {"reference": [cfg.reference] * len(texts)} if cfg.reference is not None else {}
        return [cfg.prompt] * len(texts), texts, columns
    if texts:
        raise ConfigError(f"texts: got {len(texts)} TEXT argument(s) and --data {cfg.data!r}; allowed: one of them.")
    from reinlm.data.prompts import read_table_rows

    rows = read_table_rows(cfg.data, "data")
    if not rows:
        raise ConfigError(f"data: {cfg.data!r} holds no rows; allowed: a JSONL file with one object per line, e.g. "
                          '{"prompt": "2+2?", "completion": "4", "answer": "4"}.')
    completions = []
    for i, row in enumerate(rows):
        c = row.get("completion")
        if not (isinstance(c, str) or (isinstance(c, list) and all(isinstance(m, dict) for m in c))):
            raise ConfigError(f"data: {cfg.data!r} row {i} has completion {c!r}; allowed: a text, or a list of "
                              f'{{"role": ..., "content": ...}} messages, in every row.')
        completions.append(c)
    prompts = [row.get("prompt", cfg.prompt) for row in rows]
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ("prompt", "completion")))
    columns = {k: [r.get(k) for r in rows] for k in names}
    if cfg.reference is not None:
        columns.setdefault("reference", [cfg.reference] * len(rows))
    return prompts, completions, columns


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
