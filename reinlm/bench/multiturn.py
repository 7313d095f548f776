"""Multi-turn vs single-turn decode throughput at the same batch (docs/environments.md, "Throughput").

``python -m reinlm.bench.multiturn --model smollm2-135m --batch 8 --turns 4 --turn-tokens 16 --repeats 3``

Both sides sample the same number of model tokens per row (``turns x turn_tokens``, EOS ignored so no row
stops early) from the same weights in the same dtype: the single-turn side is one
:func:`~reinlm.rollout.token.generate_rollouts` call; the multi-turn side plays episodes of a scripted
environment whose every observation is one short sentence, through :func:`~reinlm.rollout.multiturn.
run_episodes` (each turn re-prefills the transcript, then decodes). The two are interleaved ``repeats`` times
(A B A B ...) and the ratio of the medians is reported: model tokens per second, multi-turn / single-turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from reinlm.hub import load_causal_lm
from reinlm.rollout.multiturn import EpisodeLimits, TurnFormat, run_episodes
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import generate_rollouts


class _Scripted:
    """Answers every turn with the same sentence; never ends by itself."""

    def reset(self, seed: int = 0, **row) -> str:
        return "Tell me a short story about a dog, one sentence at a time."

    def step(self, text: str):
        return ("Good. Go on with the next sentence.", 0.0, False, {})


def measure(model, tok, batch: int, turns: int, turn_tokens: int, repeats: int, prompt_len_note: bool = True) -> dict:
    """-> {"single_tokens_per_s": [...], "multi_tokens_per_s": [...], "ratio": median ratio}."""
    fmt = TurnFormat(tok)
    prompt = tok.decode(fmt.first(_Scripted().reset()))
    S = turns * turn_tokens
    single_cfg = SamplingConfig(max_new_tokens=S, ignore_eos=True)
    multi_cfg = SamplingConfig(max_new_tokens=turn_tokens, ignore_eos=True)
    limits = EpisodeLimits(max_turns=turns, turn_tokens=turn_tokens, max_completion_length=S, env_timeout=None)
    single, multi = [], []
    for r in range(repeats + 1):  # the first pair warms up (fused weights, allocator)
        gens = [torch.Generator().manual_seed(r * 100 + i) for i in range(batch)]
        t0 = time.perf_counter()
        out = generate_rollouts(model, tok, [prompt] * batch, 1, single_cfg, generator=gens)
        t1 = time.perf_counter()
        n_single = int(out.response_mask.sum())
        eps = run_episodes(model, tok, [_Scripted() for _ in range(batch)], [{}] * batch, list(range(batch)), 1,
                           multi_cfg, limits, [torch.Generator().manual_seed(r * 100 + i) for i in range(batch)], fmt)
        t2 = time.perf_counter()
        n_multi = sum(ep.model_tokens for ep in eps)
        if r:
            single.append(n_single / (t1 - t0))
            multi.append(n_multi / (t2 - t1))
    return {"single_tokens_per_s": single, "multi_tokens_per_s": multi,
            "ratio": statistics.median(multi) / statistics.median(single),
            "tokens_per_row": S, "batch": batch, "turns": turns, "turn_tokens": turn_tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16", help="the rollout dtype (the trainer's default on this CPU)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--turn-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    model, tok = load_causal_lm(args.model, device="cpu", dtype=args.dtype)
    model.eval().requires_grad_(False)
    with torch.inference_mode():
        out = measure(model, tok, args.batch, args.turns, args.turn_tokens, args.repeats)
    out.update(model=args.model, dtype=args.dtype)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
