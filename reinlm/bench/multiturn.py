"""Multi-turn vs single-turn decode throughput at the same batch (docs/environments.md, "Throughput").

``reinlm bench multiturn --model smollm2-135m --batch 8 --turns 4 --turn-tokens 16 --repeats 3``
(also ``python -m reinlm.bench.multiturn`` with the same flags)

Both sides sample the same number of model tokens per row (``turns x turn_tokens``, EOS ignored so no row
stops early) from the same weights in the same dtype: the single-turn side is one
:func:`~reinlm.rollout.token.generate_rollouts` call; the multi-turn side plays episodes of a scripted
environment whose every observation is one short sentence, through :func:`~reinlm.rollout.multiturn.
run_episodes`, twice: with each episode's key/value cache kept across turns (the default: a turn prefills only
the new observation) and with ``reprefill=True`` (each turn re-prefills the whole transcript, the driver before
the kept cache). The three are interleaved ``repeats`` times (A B C A B C ...) and the ratios of the medians are
reported: model tokens per second, multi-turn / single-turn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from reinlm.bench.common import dumps
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.hub import load_causal_lm
from reinlm.rollout.multiturn import EpisodeLimits, TurnFormat, run_episodes
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import generate_rollouts


@dataclass
class MultiturnBenchConfig(Config):
    """Flags of ``reinlm bench multiturn``."""

    model: str = opt("smollm2-135m", "model: embedded alias, local dir or HF id")
    dtype: str = opt("bfloat16", "the rollout dtype (the trainer's default on this CPU)",
                     choices=("bfloat16", "float32"))
    batch: int = opt(8, "episodes (rows) decoded together", lo=1)
    turns: int = opt(4, "model turns per episode", lo=1)
    turn_tokens: int = opt(16, "tokens per turn (EOS ignored); the single-turn side decodes turns x this", lo=1)
    repeats: int = opt(3, "timed rounds (medians reported), after one warm-up round", lo=1)


class _Scripted:
    """Answers every turn with the same sentence; never ends by itself."""

    def reset(self, seed: int = 0, **row) -> str:
        return "Tell me a short story about a dog, one sentence at a time."

    def step(self, text: str):
        return ("Good. Go on with the next sentence.", 0.0, False, {})


def measure(model, tok, batch: int, turns: int, turn_tokens: int, repeats: int, prompt_len_note: bool = True) -> dict:
    """-> tokens/s of each repeat for ``single``, ``multi`` (kept cache) and ``multi_reprefill``, and the ratios
    of the medians, multi / single and multi_reprefill / single."""
    fmt = TurnFormat(tok)
    prompt = tok.decode(fmt.first(_Scripted().reset()))
    S = turns * turn_tokens
    single_cfg = SamplingConfig(max_new_tokens=S, ignore_eos=True)
    multi_cfg = SamplingConfig(max_new_tokens=turn_tokens, ignore_eos=True)
    limits = EpisodeLimits(max_turns=turns, turn_tokens=turn_tokens, max_completion_length=S, env_timeout=None)
    rates: dict[str, list[float]] = {"single": [], "multi": [], "multi_reprefill": []}
    for r in range(repeats + 1):  # the first round warms up (fused weights, allocator)
        def gens():
            return [torch.Generator().manual_seed(r * 100 + i) for i in range(batch)]

        t0 = time.perf_counter()
        out = generate_rollouts(model, tok, [prompt] * batch, 1, single_cfg, generator=gens())
        n = {"single": int(out.response_mask.sum())}
        secs = {"single": time.perf_counter() - t0}
        for side in ("multi", "multi_reprefill"):
            t0 = time.perf_counter()
            eps = run_episodes(model, tok, [_Scripted() for _ in range(batch)], [{}] * batch, list(range(batch)), 1,
                               multi_cfg, limits, gens(), fmt, reprefill=side == "multi_reprefill")
            secs[side] = time.perf_counter() - t0
            n[side] = sum(ep.model_tokens for ep in eps)
        if r:
            for side in rates:
                rates[side].append(n[side] / secs[side])
    med = {side: statistics.median(v) for side, v in rates.items()}
    return {**{f"{side}_tokens_per_s": [round(x, 2) for x in v] for side, v in rates.items()},
            "ratio": med["multi"] / med["single"], "ratio_reprefill": med["multi_reprefill"] / med["single"],
            "tokens_per_row": S, "batch": batch, "turns": turns, "turn_tokens": turn_tokens}


def run_bench(args_or_cfg) -> dict[str, Any]:
    """Load the model once and :func:`measure` the three sides; -> the report (config, tokens/s, ratios, load)."""
    cfg = args_or_cfg if isinstance(args_or_cfg, MultiturnBenchConfig) else build_config(MultiturnBenchConfig,
                                                                                         args_or_cfg)
    print(f"bench multiturn: {cfg.model} {cfg.dtype}, batch {cfg.batch}, {cfg.turns} turns x {cfg.turn_tokens} "
          f"tokens, {cfg.repeats} rounds ...", file=sys.stderr, flush=True)
    load = {"before": os.getloadavg()[0]}
    model, tok = load_causal_lm(cfg.model, device="cpu", dtype=cfg.dtype)
    model.eval().requires_grad_(False)
    with torch.inference_mode():
        out = measure(model, tok, cfg.batch, cfg.turns, cfg.turn_tokens, cfg.repeats)
    load["after"] = os.getloadavg()[0]
    return {"config": asdict(cfg), **out, "load_average": load}


def format_report(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [f"multi-turn vs single-turn decode, {cfg['model']} {cfg['dtype']}, batch {cfg['batch']}, "
             f"{cfg['turns']} turns x {cfg['turn_tokens']} tokens vs {report['tokens_per_row']} in one turn "
             f"(interleaved, {cfg['repeats']} rounds; load average {report['load_average']['before']:.1f} -> "
             f"{report['load_average']['after']:.1f})"]
    for side, label in (("single", "single-turn"), ("multi", "multi-turn, kept cache"),
                        ("multi_reprefill", "multi-turn, re-prefill")):
        lines.append(f"{label:<26}" + " ".join(f"{x:8.1f}" for x in report[f"{side}_tokens_per_s"]) + "  tokens/s")
    lines.append(f"ratio multi/single: kept cache {report['ratio']:.2f}, re-prefill {report['ratio_reprefill']:.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, MultiturnBenchConfig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reinlm.bench.multiturn", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    report = run_bench(args)
    print(dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
