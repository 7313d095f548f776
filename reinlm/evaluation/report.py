"""Run reports and comparisons: ``report.md`` + PNG curves for one run, overlays for several.

Reads the run directory layout of docs/architecture.md: ``config.yaml``, ``metrics.jsonl`` (one object per
step; several lines of one step are merged), ``samples.jsonl`` (``step``, ``prompt``, ``completion``,
``reward``), and, when present, ``eval.json`` (from ``reinlm eval --out RUN_DIR``) and ``train_eval.json``
(the trainer's held-out before/after evaluation). Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from reinlm.errors import ReinlmError
from reinlm.evaluation.plots import save_step_plot, step_figure
from reinlm.evaluation.seed_groups import group_runs, plot_groups, steps_to_reach
from reinlm.utils.atomic import atomic_write_text
from reinlm.utils.integrity import json_file_problem
from reinlm.utils.jsonio import read_jsonl, write_json
from reinlm.utils.textfile import read_text

# Curves a report draws, in order; ``reward/<component>/mean`` keys are inserted after ``reward/mean``.
CURVE_KEYS = ("reward/mean", "env/return", "env/turns", "kl/mean", "kl/beta", "policy/entropy", "response/length_mean", "perf/completions_per_s")
CURVE_TITLES = {
    "reward/mean": "mean reward", "env/return": "mean episode return", "env/turns": "turns per episode",
    "kl/mean": "KL to reference", "kl/beta": "KL coefficient beta",
    "policy/entropy": "policy entropy", "response/length_mean": "mean response length (tokens)",
    "perf/completions_per_s": "completions per second",
}
_COMPONENT = re.compile(r"^reward/(.+)/mean$")


@dataclass
class RunData:
    """Everything a report needs from one run directory."""

    run_dir: Path
    config_text: str
    metrics: list[dict[str, Any]]  # one merged object per step, sorted by step
    samples: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None  # eval.json
    train_eval: dict[str, Any] | None = None  # train_eval.json

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    def curve_keys(self) -> list[str]:
        return curve_keys([self])

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of ``key``, skipping steps where it is absent or not a finite number."""
        xs, ys = [], []
        for row in self.metrics:
            v = row.get(key)
            if _is_number(v):
                xs.append(row["step"])
                ys.append(float(v))
        return xs, ys


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool): what a curve can plot."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def merge_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One object per ``step`` (later lines of a step update earlier ones), sorted by step."""
    merged: dict[int, dict[str, Any]] = {}
    for r in rows:
        if "step" in r:
            merged.setdefault(int(r["step"]), {}).update(r)
    return [merged[s] for s in sorted(merged)]


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory; a directory without ``metrics.jsonl`` lines is a :class:`ReinlmError`."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ReinlmError(f"run: {str(run)!r} is not a directory; allowed: a run directory written by "
                          "`reinlm train --out RUN_DIR`.")
    mpath = run / "metrics.jsonl"
    if not mpath.is_file():
        raise ReinlmError(f"run: {str(run)!r} has no metrics.jsonl yet (has training started?); allowed: a run "
                          "directory written by `reinlm train --out RUN_DIR` after its first step.")
    try:
        metrics = merge_steps(read_jsonl(mpath))
    except json.JSONDecodeError as e:
        raise ReinlmError(f"run: {str(mpath)!r} has a line that is not JSON ({e.msg}).") from e
    if not metrics:
        raise ReinlmError(f"run: {str(mpath)!r} holds no logged step yet; allowed: a run directory after its first "
                          "training step.")
    cfg = run / "config.yaml"
    samples = read_jsonl(run / "samples.jsonl") if (run / "samples.jsonl").is_file() else []
    ev, tev = (_read_run_json(run / name) for name in ("eval.json", "train_eval.json"))
    config_text = read_text(cfg, "run") if cfg.is_file() else ""
    return RunData(run_dir=run, config_text=config_text, metrics=metrics,
                   samples=samples, evaluation=ev, train_eval=tev)


def _read_run_json(path: Path) -> dict | None:
    """A run's JSON summary (``None`` when absent); a damaged one is a ReinlmError naming it."""
    if not path.is_file():
        return None
    problem = json_file_problem(path)
    if problem:
        raise ReinlmError(f"run: {str(path)!r} cannot be read: {problem}; restore it or remove it (the report then "
                          "leaves that part out).")
    return json.loads(path.read_text(encoding="utf-8"))


def curve_keys(runs: list[RunData]) -> list[str]:
    """The curve keys present in any of ``runs``: CURVE_KEYS order, reward components after reward/mean."""
    present = {k for r in runs for row in r.metrics for k, v in row.items() if _is_number(v)}
    components = sorted(k for k in present if _COMPONENT.match(k))
    keys: list[str] = []
    for k in CURVE_KEYS:
        if k in present:
            keys.append(k)
        if k == "reward/mean":
            keys += components
    return keys


def plot_file_name(key: str) -> str:
    """``reward/sentiment/mean`` -> ``reward_sentiment_mean.png``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") + ".png"


def plot_curves(runs: list[RunData], key: str, path: Path) -> Path:
    """One PNG of ``key`` against the step, one line per run (same axes)."""
    fig, ax = step_figure()
    for r in runs:
        xs, ys = r.series(key)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) <= 40 else None, markersize=3, linewidth=1.5, label=r.name)
    ax.set_title(f"{curve_title(key)}  ({key})", fontsize=10)
    return save_step_plot(fig, ax, key, path, legend=len(runs) > 1)


def curve_title(key: str) -> str:
    """Human title of a curve key: ``reward/sentiment/mean`` -> ``reward component: sentiment``."""
    m = _COMPONENT.match(key)
    return f"reward component: {m.group(1)}" if m else CURVE_TITLES.get(key, key)


def pick_sample_steps(samples: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The logged sample steps at the start, middle and end (fewer when fewer steps were logged)."""
    steps = sorted({int(s["step"]) for s in samples if "step" in s})
    if not steps:
        return []
    chosen = [("start", steps[0]), ("middle", steps[len(steps) // 2]), ("end", steps[-1])]
    seen: set[int] = set()
    return [(label, s) for label, s in chosen if not (s in seen or seen.add(s))]


def _cell(text: Any, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    s = s if len(s) <= limit else s[:limit - 1] + "…"
    return s.replace("|", "\\|") or " "


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _cell(v) if v is not None else "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if math.isfinite(v) and abs(v) < 1e4 else f"{v:.4g}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_num(c) if not isinstance(c, str) else _cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def samples_section(samples: list[dict[str, Any]], per_step: int = 4) -> str:
    picks = pick_sample_steps(samples)
    if not picks:
        return "_No samples logged (samples.jsonl is absent or empty)._"
    rows = []
    for label, step in picks:
        for s in [s for s in samples if int(s.get("step", -1)) == step][:per_step]:
            rows.append([f"{label} ({step})", s.get("prompt", ""), s.get("completion", ""), s.get("reward")])
    return markdown_table(["step", "prompt", "completion", "reward"], rows)


def train_eval_rows(tev: dict[str, Any]) -> list[list[Any]]:
    before, after = tev.get("before") or {}, tev.get("after") or {}
    keys = [k for k in dict.fromkeys([*before, *after]) if k not in ("samples",)
            and isinstance(before.get(k, after.get(k)), (int, float))]
    return [[k, before.get(k), after.get(k)] for k in keys]


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.md`` and ``RUN_DIR/plots/*.png``; returns the report's path."""
    run = load_run(run_dir)
    plots_dir = run.run_dir / "plots"
    parts = [f"# Run report: {run.name}", ""]
    last = run.metrics[-1]
    parts += [f"Steps logged: {len(run.metrics)} (last step {last['step']}). "
              f"Source: `{run.run_dir}`.", ""]
    if run.train_eval and run.train_eval.get("stopped"):
        parts += [f"**Stopped early: {run.train_eval['stopped']}** (final model from step "
                  f"{run.train_eval.get('final_step')}).", ""]
    alarms = [r["step"] for r in run.metrics if r.get("alarm/degeneration")]
    if alarms:
        parts += [f"**Degeneration alarm** at step(s) {', '.join(map(str, alarms))}.", ""]
    parts += ["## Curves", ""]
    keys = run.curve_keys()
    if not keys:
        parts += ["_None of the plotted metrics is in metrics.jsonl._", ""]
    for key in keys:
        p = plot_curves([run], key, plots_dir / plot_file_name(key))
        xs, ys = run.series(key)
        parts += [f"![{key}](plots/{p.name})", "",
                  f"`{key}`: first {_num(ys[0])}, last {_num(ys[-1])}, min {_num(min(ys))}, max {_num(max(ys))}.", ""]
    parts += ["## Samples (start, middle, end)", "", samples_section(run.samples), ""]
    parts += ["## Evaluation", ""]
    if run.train_eval:
        rows = train_eval_rows(run.train_eval)
        if rows:
            parts += ["Held-out prompts, before and after training (train_eval.json):", "",
                      markdown_table(["metric", "before", "after"], rows), ""]
    if run.evaluation:
        mets = run.evaluation.get("metrics", {})
        info = run.evaluation.get("info", {})
        parts += [f"Final evaluation (eval.json; {info.get('n_prompts', '?')} prompts, "
                  f"{info.get('n_samples', '?')} samples):", "",
                  markdown_table(["metric", "value"], [[k, v] for k, v in mets.items()]), ""]
    if not run.train_eval and not run.evaluation:
        parts += [f"_No evaluation yet: run `reinlm eval --model {run.run_dir} --out {run.run_dir}` to add one._", ""]
    parts += ["## Configuration", "", "```yaml", run.config_text.rstrip() or "# config.yaml not found", "```", ""]
    out = run.run_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out


def evaluation_metrics(run: RunData) -> dict[str, Any]:
    """The numbers a comparison tabulates: eval.json metrics, then train_eval.json's after/before values."""
    out: dict[str, Any] = {}
    if run.evaluation:
        out.update(run.evaluation.get("metrics", {}))
    if run.train_eval:
        for tag in ("after", "before"):
            for k, v in (run.train_eval.get(tag) or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"held_out/{k} ({tag})"] = v
    last = run.metrics[-1]
    for k in curve_keys([run]):
        if k in last:
            out[f"final step: {k}"] = last[k]
    return out


def write_comparison(run_dirs: list[str | Path], out_dir: str | Path | None = None, group_seeds: bool = False,
                     smooth: int = 5, target_key: str = "reward/mean") -> Path:
    """Overlay the runs' curves (one PNG per metric) and tabulate their evaluations in ``OUT/compare.md``.

    With ``group_seeds``, runs that differ only in ``seed`` are averaged first (see
    :mod:`reinlm.evaluation.seed_groups`) and the report adds, per group, the first step at which its
    smoothed ``target_key`` reaches the first group's final value.
    """
    if len(run_dirs) < 2:
        raise ReinlmError(f"compare: got {len(run_dirs)} run directory; allowed: two or more.")
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same basename in different parents: use the given paths
        for r, d in zip(runs, run_dirs):
            r.run_dir = Path(d)
        names = [str(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else Path(run_dirs[0]).resolve().parent / "compare"
    if group_seeds:
        return _write_group_comparison(runs, out, smooth, target_key)
    parts = [f"# Comparison: {', '.join(names)}", "", "## Curves", ""]
    for key in curve_keys(runs):
        p = plot_curves(runs, key, out / "plots" / plot_file_name(key))
        parts += [f"![{key}](plots/{p.name})", ""]
    parts += ["## Evaluations", ""]
    cols = [evaluation_metrics(r) for r in runs]
    keys = list(dict.fromkeys(k for c in cols for k in c))
    parts += [markdown_table(["metric", *names], [[k, *[c.get(k) for c in cols]] for k in keys]), ""]
    path = out / "compare.md"
    atomic_write_text(path, "\n".join(parts))
    return path


def _held_out(run: RunData, tag: str, key: str = "reward_mean") -> float | None:
    v = ((run.train_eval or {}).get(tag) or {}).get(key)
    return float(v) if _is_number(v) else None


def _write_group_comparison(runs: list[RunData], out: Path, smooth: int, target_key: str) -> Path:
    groups = group_runs(runs)
    names = [g.name for g in groups]
    parts = [f"# Comparison of seed groups: {', '.join(names)}", "",
             "Runs whose config.yaml differs only in `seed` / `out` form a group. Curves: mean over the group's "
             f"runs of a trailing {smooth}-step moving average; the band is the min-max over runs.", ""]
    if target_key not in curve_keys(runs):
        raise ReinlmError(f"compare: the runs do not log {target_key!r}; allowed: one of "
                          f"{', '.join(curve_keys(runs)) or '(none logged)'}.")
    reach = steps_to_reach(groups, target_key, smooth)
    rows = []
    for r, g in zip(reach, groups):
        before = [v for v in (_held_out(x, "before") for x in g.runs) if v is not None]
        after = [v for v in (_held_out(x, "after") for x in g.runs) if v is not None]
        spread = f" ± {stdev(after):.4f}" if len(after) > 1 else ""
        rows.append([g.name, ", ".join(str(s) for s in r["seeds"]), r["final"],
                     r["first_step_reaching_target"] if r["first_step_reaching_target"] is not None else "never",
                     f"{mean(before):.4f}" if before else "-", f"{mean(after):.4f}{spread}" if after else "-"])
    parts += ["## Steps to reach the baseline", "",
              f"Baseline = the first group ({names[0]}); its final smoothed `{target_key}` is {_num(reach[0]['target'])}. "
              "Held-out columns: `reward_mean` of train_eval.json, mean over seeds (± sample sd).", "",
              markdown_table(["group", "seeds", f"final smoothed {target_key}", "first step reaching baseline final",
                              "held-out reward before", "held-out reward after"], rows), ""]
    parts += ["## Curves", ""]
    for key in curve_keys(runs):
        p = plot_groups(groups, key, out / "plots" / plot_file_name(key), smooth, curve_title(key))
        parts += [f"![{key}](plots/{p.name})", ""]
    path = out / "compare.md"
    atomic_write_text(path, "\n".join(parts))
    write_json(out / "compare.json", {"smooth": smooth, "target_key": target_key, "groups": reach})
    return path
