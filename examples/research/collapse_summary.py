"""Summarise examples/research/collapse.sh: one row per (hypothesis, seed) and the stress test's verdict per
hypothesis (held-out perplexity within 1.5x, distinct-2 kept at least half, degeneration alarm silent: the
criteria of ``reinlm bench reward-hacking``), plus per-step curves of the collapse diagnostics.

Usage: python examples/research/collapse_summary.py RUNS_DIR [--plot OUT.png] [--json OUT.json]
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

from reinlm.bench.reward_hacking import summarize
from reinlm.utils.jsonio import read_jsonl

SERIES = {"policy/entropy": "action entropy (nats)", "latent/distinct_actions": "distinct actions in the batch",
          "kl/mean": "KL to the BC policy (nats / sample)", "response/distinct_2": "distinct-2",
          "response/perplexity_frozen": "perplexity under the backbone", "reward/mean": "mean reward"}


def load_run(run_dir: Path) -> dict | None:
    """The figures of one finished run directory (None while it is still training)."""
    ev_path = run_dir / "train_eval.json"
    if not ev_path.is_file():
        return None
    ev = json.loads(ev_path.read_text())
    if "after" not in ev:  # still training (the file holds the 'before' evaluation only)
        return None
    rows = read_jsonl(run_dir / "metrics.jsonl")
    before, after = ev.get("before", {}), ev.get("after", {})
    alarms = [r["step"] for r in rows if r.get("alarm/degeneration")]
    config, seed = run_dir.name.rsplit("-seed", 1)
    return {"config": config, "seed": int(seed), "space": "latent",
            "reward_before": before.get("reward_mean"), "reward_after": after.get("reward_mean"),
            "ppl_before": before.get("perplexity_frozen"), "ppl_after": after.get("perplexity_frozen"),
            "distinct2_before": before.get("distinct_2"), "distinct2_after": after.get("distinct_2"),
            "kl_after": after.get("kl_to_reference"), "alarm_first_step": alarms[0] if alarms else None,
            "alarm_steps": len(alarms), "samples_after": [s["completion"] for s in after.get("samples", [])[:2]],
            "steps": [{k: r.get(k) for k in ("step", *SERIES)} for r in rows]}


def fmt(v, f="{:.3f}"):
    return "-" if v is None else f.format(v)


def table(runs: list[dict]) -> str:
    """Markdown: one row per run, the last step's diagnostics beside the held-out before/after figures."""
    out = ["| hypothesis | seed | reward before -> after | perplexity (ratio) | distinct-2 | KL to BC after | "
           "action entropy step 1 -> last | distinct actions step 1 -> last | alarm |", "|" + " --- |" * 9]
    for r in runs:
        s0, s1 = r["steps"][0], r["steps"][-1]
        ratio = r["ppl_after"] / r["ppl_before"] if r["ppl_after"] and r["ppl_before"] else None
        out.append(f"| {r['config']} | {r['seed']} | {fmt(r['reward_before'])} -> {fmt(r['reward_after'])} | "
                   f"{fmt(r['ppl_before'], '{:.1f}')} -> {fmt(r['ppl_after'], '{:.1f}')} ({fmt(ratio, '{:.2f}x')}) | "
                   f"{fmt(r['distinct2_before'], '{:.2f}')} -> {fmt(r['distinct2_after'], '{:.2f}')} | "
                   f"{fmt(r['kl_after'], '{:.2f}')} | {fmt(s0.get('policy/entropy'), '{:.2f}')} -> "
                   f"{fmt(s1.get('policy/entropy'), '{:.2f}')} | {fmt(s0.get('latent/distinct_actions'), '{}')} -> "
                   f"{fmt(s1.get('latent/distinct_actions'), '{}')} | "
                   f"{'never' if r['alarm_first_step'] is None else 'step %d' % r['alarm_first_step']} |")
    return "\n".join(out)


def plot(runs: list[dict], path: Path) -> None:
    """One panel per diagnostic against the step; one colour per hypothesis, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({r["config"] for r in runs})
    colours = {c: f"C{i}" for i, c in enumerate(configs)}
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (key, title) in zip(axes.flat, SERIES.items()):
        for r in runs:
            ys = [s.get(key) if s.get(key) is not None else float("nan") for s in r["steps"]]
            ax.plot([s["step"] for s in r["steps"]], ys, color=colours[r["config"]], alpha=0.8, lw=1,
                    label=r["config"] if r["seed"] == min(x["seed"] for x in runs if x["config"] == r["config"]) else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[4].set_yscale("log")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--plot", default="")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    runs = [r for d in sorted(Path(a.runs).iterdir()) if d.is_dir() and (r := load_run(d))]
    runs.sort(key=lambda r: (r["config"], r["seed"]))
    print(table(runs))
    by_cfg = defaultdict(list)
    for r in runs:
        by_cfg[r["config"]].append(r)
    verdicts = {c: summarize(rs)["latent"] for c, rs in by_cfg.items()}
    for c, v in verdicts.items():
        gain = [r["reward_after"] - r["reward_before"] for r in by_cfg[c]]
        print(f"{c}: stable on {v['stable']}/{v['seeds']} (perplexity within 1.5x {v['perplexity_within_1.5x']}, "
              f"distinct-2 kept half {v['distinct2_kept_half']}, alarm silent {v['alarm_silent']}); "
              f"reward gain {', '.join(f'{g:+.3f}' for g in gain)}")
    if a.plot:
        plot(runs, Path(a.plot))
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "verdicts": verdicts}, indent=1))


if __name__ == "__main__":
    main()
