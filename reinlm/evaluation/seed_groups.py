"""Seed groups for ``reinlm compare --group-seeds``: runs that differ only in their seed, averaged.

RL curves from one seed are noisy; a claim such as "the critic reaches the baseline's final reward in half
the steps" needs several seeds and a smoothed curve. Runs whose ``config.yaml`` is identical apart from
``seed`` and ``out`` form one group; each group's curve is the mean over its runs of the per-run moving
average (window ``smooth`` steps, trailing), with the min-max over runs as a band. ``steps to reach`` is the
first step at which a group's mean curve is at or above the first group's (the baseline's) final value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from reinlm.errors import ReinlmError
from reinlm.evaluation.plots import save_step_plot, step_figure

IGNORED_KEYS = ("seed", "out")
_SEED_SUFFIX = re.compile(r"[-_.]?(s|seed)[-_]?\d+$")


@dataclass
class SeedGroup:
    """Runs (``RunData``) sharing every config field except ``seed`` / ``out``."""

    name: str
    runs: list  # list[RunData]
    seeds: list


def config_key(cfg: dict) -> str:
    """The parsed config minus ``seed`` and ``out``, as a canonical string (runs with equal keys form a group)."""
    return repr(sorted((k, repr(v)) for k, v in cfg.items() if k not in IGNORED_KEYS))


def group_name(run_names: list[str]) -> str:
    """``["ppo-s0", "ppo-s1"]`` -> ``"ppo"``: the run names without a trailing seed marker, when they agree."""
    stripped = {_SEED_SUFFIX.sub("", n) for n in run_names}
    return stripped.pop() if len(stripped) == 1 else run_names[0]


def group_runs(runs: list) -> list[SeedGroup]:
    """Partition ``runs`` into seed groups, in the order each group's first run appears."""
    if any(not r.config_text.strip() for r in runs):
        missing = [str(r.run_dir) for r in runs if not r.config_text.strip()]
        raise ReinlmError(f"compare --group-seeds: {', '.join(missing)} has no config.yaml; allowed: run "
                          "directories written by `reinlm train`.")
    groups: dict[str, list] = {}
    for r in runs:
        cfg = yaml.safe_load(r.config_text)
        cfg = cfg if isinstance(cfg, dict) else {"config": r.config_text}
        groups.setdefault(config_key(cfg), []).append((r, cfg.get("seed")))
    out = []
    for members in groups.values():
        out.append(SeedGroup(group_name([r.name for r, _ in members]), [r for r, _ in members],
                             [seed for _, seed in members]))
    names = [g.name for g in out]
    for i, g in enumerate(out):
        if names.count(g.name) > 1:
            g.name = f"{g.name} (group {i + 1})"
    return out


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start): (T,) -> (T,)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def group_curve(group: SeedGroup, key: str, smooth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over the group's runs of the smoothed ``key``, on the steps every run logged."""
    per_run = []
    for r in group.runs:
        xs, ys = r.series(key)
        per_run.append(dict(zip(xs, moving_average(np.asarray(ys), smooth))))
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    if not common:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    m = np.array([[d[s] for s in common] for d in per_run])  # (runs, T)
    return np.asarray(common), m.mean(0), m.min(0), m.max(0)


def first_step_reaching(steps: np.ndarray, values: np.ndarray, target: float) -> int | None:
    """The first step whose value is >= ``target``; None when the curve never gets there."""
    hit = np.flatnonzero(np.asarray(values) >= target)
    return int(steps[hit[0]]) if len(hit) else None


def steps_to_reach(groups: list[SeedGroup], key: str, smooth: int) -> list[dict]:
    """Per group: final smoothed value of ``key`` and the first step it reaches the first group's final."""
    curves = [group_curve(g, key, smooth) for g in groups]
    if not len(curves[0][0]):
        return []
    target = float(curves[0][1][-1])
    rows = []
    for g, (steps, mean, _, _) in zip(groups, curves):
        rows.append({"group": g.name, "runs": len(g.runs), "seeds": g.seeds,
                     "final": float(mean[-1]) if len(mean) else None, "target": target,
                     "first_step_reaching_target": first_step_reaching(steps, mean, target) if len(mean) else None})
    return rows


def plot_groups(groups: list[SeedGroup], key: str, path: Path, smooth: int, title: str) -> Path:
    """One PNG: each group's mean smoothed curve with its min-max band over seeds."""
    fig, ax = step_figure()
    for g in groups:
        steps, mean, lo, hi = group_curve(g, key, smooth)
        if len(steps):
            line = ax.plot(steps, mean, linewidth=1.8, label=f"{g.name} (n={len(g.runs)})")[0]
            ax.fill_between(steps, lo, hi, alpha=0.15, color=line.get_color())
    ax.set_title(f"{title}  ({key}; mean of seeds, {smooth}-step moving average, band = min-max)", fontsize=9)
    return save_step_plot(fig, ax, key, path, legend=True)
