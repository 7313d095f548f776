"""``reinlm critique``: ask the critic about one text and show its spans and per-token rewards."""

from __future__ import annotations

import argparse
import os
import sys

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.critic.align import token_offsets
from reinlm.critic.config import CriticConfig

GREEN, RED, DIM, BOLD, RESET = "\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "critique", help="show the LLM critic's spans and per-token rewards for a text",
        description="Ask the critic which spans of TEXT earn or lose reward and print the per-token rewards "
                    "(green positive, red negative). Example: reinlm critique --task sentiment "
                    "\"The plot was dull but the acting was superb.\"",
    )
    p.add_argument("text", help="the text to critique (as the policy would have written it)")
    p.add_argument("--task", dest="critic_task", help="sentiment, toxicity, summarization, or a YAML template file "
                   "(default: sentiment)")
    p.add_argument("--values", dest="critic_values", help="values of tokens in positive,negative spans (default: 0.5,-0.5)")
    p.add_argument("--default", dest="critic_default", type=float, help="value of the other tokens (default: 0.0)")
    p.add_argument("--source", help="the source document (summarization task)")
    p.add_argument("--score", type=float, help="the extrinsic score shown to the critic (summarization: 0-10)")
    p.add_argument("--tokenizer", help="tokenizer whose tokens get the rewards (default: the critic's, or "
                   "smollm2-135m with --critic-url)")
    p.add_argument("--json", action="store_true", help="print {spans: [...], tokens: [[text, start, end, reward]]}")
    p.add_argument("--raw", action="store_true", help="also print the critic's raw answer")
    add_dataclass_args(p, CriticConfig, group="critic options (--task/--values/--default are short for --critic-*)")
    return p


def _use_colour(stream) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def critique_text(cfg, text: str, source: str | None = None, score: float | None = None, tokenizer=None):
    """Run the critic on one text: (result, [(token text, start, end, reward)])."""
    reward = cfg.build()
    backend = reward.backend
    if tokenizer is None:
        if hasattr(backend, "tokenizer"):
            tokenizer = backend.tokenizer
        else:
            from reinlm.hub import load_tokenizer

            tokenizer = load_tokenizer("smollm2-135m")
    tok_texts, offsets = token_offsets(tokenizer, text)
    columns = {"extrinsic": [score]} if score is not None else {}
    if source is not None:
        columns["source"] = [source]
    rewards = reward([source or ""], [text], completion_token_spans=[offsets], **columns)[0]
    result = reward.critique([source or ""], [text], **columns)[0]  # cached: no second request
    return result, [(t, s, e, r) for t, (s, e), r in zip(tok_texts, offsets, rewards)], reward


def run(args: argparse.Namespace) -> int:
    cfg = build_config(CriticConfig, args)
    tokenizer = None
    if args.tokenizer:
        from reinlm.hub import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    result, tokens, reward = critique_text(cfg, args.text, args.source, args.score, tokenizer)
    if args.json:
        print_json({"status": result.status, "spans": [sp.to_dict() for sp in result.spans],
                    "missing": [{"label": lab, "text": t} for lab, t in result.missing],
                    "tokens": [[t, s, e, round(r, 6)] for t, s, e, r in tokens],
                    **({"raw": result.raw} if args.raw else {})}, ensure_ascii=False)
        return 0
    colour = _use_colour(sys.stdout)
    paint = (lambda code, s: f"{code}{s}{RESET}") if colour else (lambda code, s: s)
    print(paint(BOLD, f"critic status: {result.status}") + (f"  ({result.error})" if result.error else ""))
    if args.raw:
        print(paint(DIM, "raw answer:"))
        print("  " + (result.raw or "").replace("\n", "\n  "))
    print(paint(BOLD, "spans:") + ("" if result.spans else " none"))
    for sp in result.spans:
        code = GREEN if reward.values[sp.polarity] > 0 else RED if reward.values[sp.polarity] < 0 else DIM
        print(f"  {paint(code, sp.label):<10} [{sp.start:>3}, {sp.end:>3})  {sp.text!r}"
              + (f"  ({sp.match})" if sp.match != "exact" else ""))
    for lab, phrase in result.missing:
        print(f"  {lab:<10} not found in the text: {phrase!r}")
    print(paint(BOLD, "text:"))
    line = "".join(paint(GREEN if r > 0 else RED if r < 0 else "", t) if colour and r else t for t, _, _, r in tokens)
    print("  " + line)
    print(paint(BOLD, "tokens:"))
    for t, s, e, r in tokens:
        code = GREEN if r > 0 else RED if r < 0 else DIM
        print(f"  [{s:>3}, {e:>3})  {t!r:<18} {paint(code, f'{r:+.3f}')}")
    return 0
