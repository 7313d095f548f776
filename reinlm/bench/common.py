"""Plumbing shared by the benchmarks: one subprocess per side, its one-line JSON result, steady-state timing,
and the side-by-side table.

Each side of a benchmark runs in its own Python process so that its peak resident memory
(``VmHWM`` of that process, see ``utils.peak_rss_mb``) is its own, and so that one library's import-time state (threads, patched
classes, caches) cannot slow the other. The child prints exactly one result line,
``REINLM_BENCH_RESULT {json}``, on stdout; everything else it prints (library logs, progress) is ignored.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from reinlm.errors import ReinlmError
from reinlm.utils.jsonio import json_default

RESULT_PREFIX = "REINLM_BENCH_RESULT "


def dumps(obj: Any) -> str:
    """One-line JSON of a result (numpy / torch scalars and paths through reinlm.utils.jsonio.json_default)."""
    return json.dumps(obj, default=json_default)


def emit_result(result: dict[str, Any]) -> None:
    """Print ``result`` as the child's one result line (flushed)."""
    sys.stdout.write(RESULT_PREFIX + dumps(result) + "\n")
    sys.stdout.flush()


def parse_child_output(stdout: str) -> dict[str, Any]:
    """The result object of a child's stdout: its last ``REINLM_BENCH_RESULT`` line.

    Raises ReinlmError when there is none or it is not a JSON object.
    """
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                obj = json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError as e:
                raise ReinlmError(f"bench: the child's result line is not valid JSON ({e}): {line[:200]!r}.") from e
            if not isinstance(obj, dict):
                raise ReinlmError(f"bench: the child's result must be a JSON object, got {type(obj).__name__}.")
            return obj
    raise ReinlmError("bench: the child process printed no result line (a line starting with "
                      f"{RESULT_PREFIX.strip()!r}); its output ended with:\n{_tail(stdout)}")


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-n:]) or "(nothing)"


def run_child(module: str, argv: Sequence[str], *, label: str, timeout: float | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m module *argv`` in a fresh process and return its parsed result object.

    The child inherits the environment (plus ``HF_HUB_OFFLINE=1`` unless set, and ``env``); a non-zero exit
    raises ReinlmError with the tail of its stderr.
    """
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("HF_HUB_OFFLINE", "1")
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the child must import this same reinlm, installed or not (e.g. a source checkout)
    root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", module, *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ReinlmError(f"bench: the {label} side ran longer than {timeout:.0f} s and was stopped; "
                          "lower --steps or --max-new-tokens.") from e
    if proc.returncode != 0:
        raise ReinlmError(f"bench: the {label} side failed (exit status {proc.returncode}). "
                          f"Command: {' '.join(cmd)}\nIts stderr ended with:\n{_tail(proc.stderr, 8)}")
    return parse_child_output(proc.stdout)


def require_module(module: str, purpose: str, extra: str = "bench") -> None:
    """Raise a ReinlmError naming the pip extra when ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise ReinlmError(f"bench: {purpose} needs the package {module!r}, which is not installed; it is a "
                          f"benchmark-only extra: `pip install 'reinlm[{extra}]'`.")


def steady_state(step_seconds: Sequence[float]) -> tuple[list[int], int]:
    """Indices of the steps to time and how many leading warm-up steps were skipped.

    With more than two steps the first is a warm-up (allocator growth, lazy kernels, first-call caches)
    and is left out; with one or two steps every step is kept.
    """
    n = len(step_seconds)
    skip = 1 if n > 2 else 0
    return list(range(skip, n)), skip


def throughput(step_seconds: Sequence[float], completions: Sequence[float], tokens: Sequence[float]) -> dict[str, Any]:
    """Steady-state throughput over the timed steps: completions/s, tokens/s, mean and per-step seconds.

    ``completions[i]`` and ``tokens[i]`` are the completions and completion tokens produced at step i.
    """
    if not step_seconds:
        raise ReinlmError("bench: no step was timed; run at least one step.")
    idx, skip = steady_state(step_seconds)
    total = sum(step_seconds[i] for i in idx)
    return {
        "completions_per_s": sum(completions[i] for i in idx) / total,
        "tokens_per_s": sum(tokens[i] for i in idx) / total,
        "step_s_mean": total / len(idx),
        "step_s": [float(s) for s in step_seconds],
        "timed_steps": len(idx),
        "warmup_steps_skipped": skip,
    }


def mean_over(rows: Iterable[dict[str, Any]], key: str, idx: Sequence[int] | None = None) -> float | None:
    """Mean of ``row[key]`` over rows (restricted to positions ``idx``); None when no row has it."""
    rows = list(rows)
    if idx is not None:
        rows = [rows[i] for i in idx if i < len(rows)]
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0 or (isinstance(b, float) and math.isnan(b)):
        return None
    return a / b


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def format_table(columns: dict[str, dict[str, Any]], rows: Sequence[tuple[str, str]],
                 extra: dict[str, dict[str, Any]] | None = None) -> str:
    """A plain-text table: one column per side, one row per ``(label, key)``.

    ``extra`` adds columns (e.g. ``{"reinlm/trl": {key: ratio}}``) on the right.
    """
    cols = {**columns, **(extra or {})}
    header = ["metric", *cols]
    body = [[label, *(_fmt(c.get(key)) for c in cols.values())] for label, key in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)
