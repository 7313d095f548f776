"""Search over latent actions vs best-of-N, on held-out prompts x seeds, at equal world-model forwards and at
equal wall-clock, with and without the Q-model; paired Wilcoxon signed-rank test and effect sizes.

For every (seed, prompt, with/without Q-model):
1. the search (``LatentSearch``) spends at most ``--budget`` world-model token forwards: reward, forwards, seconds;
2. best-of-N at the search's own forwards (``best_of_n``): the equal-compute baseline;
3. best-of-N at the search's own wall-clock: step 2's samples plus more, until its forwards reach the search's
   scaled by (search seconds / step-2 seconds), both measured one after the other in this process (batched
   best-of-N decodes more tokens per second).
Rows go to OUT.jsonl as they finish; re-running skips the finished ones. ``--analyze`` prints the tables.

Usage:
  python examples/research/search_vs_bon.py --latent DIR --q QDIR --out OUT.jsonl [--seeds 0 1 2]
  python examples/research/search_vs_bon.py --analyze OUT.jsonl [OUT2.jsonl ...]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

PROMPTS, HELD_OUT, SPLIT_SEED = "builtin:reviews", 0.4, 0  # train-q uses the other 60% (same split seed)


def held_out_prompts() -> list[str]:
    from reinlm.data import load_prompts

    return list(load_prompts(PROMPTS).split(HELD_OUT, SPLIT_SEED)[1].prompts)


def run(a) -> None:
    import torch

    from reinlm.latent.model import LatentActionModel
    from reinlm.latent.qmodel import QModel
    from reinlm.latent.search import LatentSearch, SearchConfig, best_of_n
    from reinlm.rewards import parse_reward_spec

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    done = set()
    if out.is_file():
        done = {(r["seed"], r["prompt_index"], r["q_model"]) for r in map(json.loads, out.read_text().splitlines())}
    lam = LatentActionModel.from_pretrained(a.latent, device="cpu")
    lam.eval()
    reward = parse_reward_spec(a.reward)
    qmodels = {False: None}
    if a.q:
        qmodels[True] = QModel.from_pretrained(a.q, lam)
    qmodels = {k: v for k, v in qmodels.items() if a.which == "both" or (a.which == "with") == k}
    prompts = held_out_prompts()[: a.num_prompts or None]
    print(f"{len(prompts)} held-out prompts, seeds {a.seeds}, Q-model: {bool(a.q)}", flush=True)
    with out.open("a") as fh:
        for seed in a.seeds:
            for i, p in enumerate(prompts):
                for use_q, q in qmodels.items():
                    if (seed, i, use_q) in done:
                        continue
                    cfg = SearchConfig(latent=a.latent, reward=a.reward, budget=a.budget, max_depth=a.max_depth,
                                       td_threshold=a.td_threshold, seed=seed * 1000 + i)
                    res = LatentSearch(lam, reward, cfg, q).search(p)
                    s_fw, s_sec = res.stats["wm_forwards"], res.stats["seconds"]
                    t = time.perf_counter()
                    bon_f = best_of_n(lam, reward, p, s_fw, a.max_depth, 1.0, seed * 1000 + i)
                    bon_f["seconds"] = time.perf_counter() - t
                    # equal wall-clock: more samples drawn until best-of-N has spent the search's seconds, at the
                    # rate just measured; the equal-forwards samples are its first part (samples are i.i.d.)
                    extra_fw = int(s_fw * s_sec / max(bon_f["seconds"], 1e-3)) - bon_f["wm_forwards"]
                    t = time.perf_counter()
                    extra = best_of_n(lam, reward, p, max(extra_fw, 0), a.max_depth, 1.0, seed * 1000 + i + 500)
                    bon_t = _merge(bon_f, extra, time.perf_counter() - t)
                    row = {"seed": seed, "prompt_index": i, "prompt": p, "q_model": use_q,
                           "search": {"reward": res.reward, "text": res.text, **res.stats},
                           "bon_equal_forwards": {k: bon_f[k] for k in ("n", "wm_forwards", "reward", "mean_reward", "seconds", "text")},
                           "bon_equal_time": {k: bon_t[k] for k in ("n", "wm_forwards", "reward", "mean_reward", "seconds", "text")},
                           "load": open("/proc/loadavg").read().split()[:3]}
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    print(f"seed {seed} prompt {i} q={use_q}: search {res.reward:.3f} ({s_fw} fw, {s_sec:.1f} s) | "
                          f"bon@fw {bon_f['reward']:.3f} (n={bon_f['n']}, {bon_f['seconds']:.1f} s) | "
                          f"bon@time {bon_t['reward']:.3f} (n={bon_t['n']}, {bon_t['seconds']:.1f} s)", flush=True)


def _merge(first: dict, extra: dict, extra_seconds: float) -> dict:
    """Best-of-(n1 + n2) from two best-of-N draws (``extra`` may be empty: n = 0)."""
    if not extra["n"]:
        return dict(first)
    n = first["n"] + extra["n"]
    best = first if first["reward"] >= extra["reward"] else extra
    return {"n": n, "wm_forwards": first["wm_forwards"] + extra["wm_forwards"], "reward": best["reward"],
            "text": best["text"], "seconds": first["seconds"] + extra_seconds,
            "mean_reward": (first["mean_reward"] * first["n"] + extra["mean_reward"] * extra["n"]) / n}


def paired(x: np.ndarray, y: np.ndarray) -> dict:
    """Wilcoxon signed-rank (two-sided, zero differences dropped) of x - y, the matched-pairs rank-biserial
    correlation r = (W+ - W-) / (W+ + W-) (Kerby 2014), the mean difference with a 95% bootstrap interval."""
    from scipy.stats import rankdata, wilcoxon

    d = x - y
    nz = d[d != 0]
    p = float(wilcoxon(nz).pvalue) if len(nz) >= 1 else float("nan")
    ranks = rankdata(np.abs(nz))
    wp, wm = ranks[nz > 0].sum(), ranks[nz < 0].sum()
    rng = np.random.default_rng(0)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(5000)]
    return {"n": len(d), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
            "mean_x": float(x.mean()), "mean_y": float(y.mean()), "mean_diff": float(d.mean()),
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "wilcoxon_p": p, "rank_biserial": float((wp - wm) / (wp + wm)) if wp + wm else 0.0}


def analyze(paths: list[str]) -> None:
    rows = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()]
    print("| Q-model | baseline | unit | pairs | search / best-of-N mean best reward | diff [95% CI] | "
          "wins / losses / ties | Wilcoxon p | rank-biserial r | forwards search / BoN | seconds search / BoN |")
    print("|" + " --- |" * 11)
    for use_q in (False, True):
        for base in ("bon_equal_forwards", "bon_equal_time"):
            rs = [r for r in rows if r["q_model"] == use_q]
            if not rs:
                continue
            seeds = sorted({r["seed"] for r in rs})
            # unit 1: each (prompt, seed); unit 2: each prompt, averaged over the seeds it has all of
            units = {"prompt x seed": rs}
            by_p = {}
            for r in rs:
                by_p.setdefault(r["prompt_index"], []).append(r)
            for unit, sel in units.items():
                s = np.array([r["search"]["reward"] for r in sel])
                b = np.array([r[base]["reward"] for r in sel])
                st = paired(s, b)
                fw = (np.mean([r["search"]["wm_forwards"] for r in sel]), np.mean([r[base]["wm_forwards"] for r in sel]))
                sec = (np.mean([r["search"]["seconds"] for r in sel]), np.mean([r[base]["seconds"] for r in sel]))
                print(_line(use_q, base, unit, st, fw, sec))
            full = [v for v in by_p.values() if len(v) == len(seeds)]
            if full and len(seeds) > 1:
                s = np.array([np.mean([r["search"]["reward"] for r in v]) for v in full])
                b = np.array([np.mean([r[base]["reward"] for r in v]) for v in full])
                st = paired(s, b)
                print(_line(use_q, base, f"prompt (mean of {len(seeds)} seeds)", st, ("", ""), ("", "")))
    key = {(r["seed"], r["prompt_index"], r["q_model"]): r["search"]["reward"] for r in rows}
    both = [k for k in key if k[2] and (k[0], k[1], False) in key]
    if both:
        st = paired(np.array([key[k] for k in both]), np.array([key[(k[0], k[1], False)] for k in both]))
        print(f"search with vs without the Q-model, {st['n']} (prompt, seed) pairs: {st['mean_x']:.3f} vs "
              f"{st['mean_y']:.3f}, wins / losses / ties {st['wins']} / {st['losses']} / {st['ties']}, Wilcoxon p "
              f"{st['wilcoxon_p']:.2g}, rank-biserial {st['rank_biserial']:+.2f}")
    for use_q in (False, True):
        rs = [r for r in rows if r["q_model"] == use_q]
        if rs:
            stops = {}
            for r in rs:
                stops[r["search"]["stopped_by"]] = stops.get(r["search"]["stopped_by"], 0) + 1
            print(f"Q-model {use_q}: {len(rs)} searches; stopped by {stops}; mean node length "
                  f"{np.mean([r['search']['mean_segment_tokens'] for r in rs]):.1f} tokens; mean rollout reward "
                  f"{np.mean([r['search']['mean_rollout_reward'] for r in rs]):.3f} vs best-of-N samples "
                  f"{np.mean([r['bon_equal_forwards']['mean_reward'] for r in rs]):.3f}")


def _line(use_q, base, unit, st, fw, sec) -> str:
    f = lambda v: f"{v:.0f}" if isinstance(v, (float, np.floating)) else str(v)
    g = lambda v: f"{v:.1f}" if isinstance(v, (float, np.floating)) else str(v)
    return (f"| {'with' if use_q else 'without'} | {base.replace('bon_', '').replace('_', ' ')} | {unit} | {st['n']} | "
            f"{st['mean_x']:.3f} / {st['mean_y']:.3f} | {st['mean_diff']:+.3f} [{st['ci95'][0]:+.3f}, {st['ci95'][1]:+.3f}] | "
            f"{st['wins']} / {st['losses']} / {st['ties']} | {st['wilcoxon_p']:.2g} | {st['rank_biserial']:+.2f} | "
            f"{f(fw[0])} / {f(fw[1])} | {g(sec[0])} / {g(sec[1])} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", default="")
    ap.add_argument("--q", default="")
    ap.add_argument("--reward", default="sentiment")
    ap.add_argument("--out", default="")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-prompts", type=int, default=0)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--max-depth", type=int, default=16)
    ap.add_argument("--td-threshold", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--which", choices=["both", "with", "without"], default="both", help="searches with the "
                    "Q-model, without, or both (two processes can split the work: separate --out files)")
    ap.add_argument("--analyze", nargs="*", default=[])
    a = ap.parse_args()
    analyze(a.analyze) if a.analyze else run(a)
