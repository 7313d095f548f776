"""Progress for anything that takes more than a couple of seconds: the one helper every command uses.

- :func:`task` wraps one long call with no loop of its own (loading a model, the held-out evaluation, saving a
  checkpoint): a line when it starts and one with the time it took when it ends.
- :func:`step_bar` follows a loop of steps: a tqdm bar when progress bars are on, else one plain line per step
  (``--progress false``), e.g. ``grpo/token step 3/30: reward 0.512, kl 0.010 (4.1 s)``.

Progress bars are on by default when stderr is a terminal; :func:`set_progress` (``--progress true|false``)
decides for the whole process. Everything goes to stderr, so stdout stays parseable (``--json``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator

_ENABLED: bool | None = None  # None: bars when stderr is a terminal


def set_progress(enabled: bool | None) -> None:
    """Turn progress bars on or off for the process (``None``: on when stderr is a terminal)."""
    global _ENABLED
    _ENABLED = enabled


def progress_enabled() -> bool:
    """Whether progress bars are shown (else plain lines)."""
    if _ENABLED is not None:
        return _ENABLED
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def note(text: str) -> None:
    """One informational line on stderr (e.g. how many prompts are held out), shown whatever the setting."""
    _say(text)


def format_seconds(s: float) -> str:
    """``4.1 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


@contextlib.contextmanager
def task(desc: str, *, quiet_below_s: float = 0.0) -> Iterator[None]:
    """Announce one long call: ``desc ...`` now, ``desc: done in 3.2 s`` when it ends (``failed after`` on an
    exception). Calls that end within ``quiet_below_s`` print only the first line."""
    t0 = time.perf_counter()
    _say(f"{desc} ...")
    try:
        yield
    except BaseException:
        _say(f"{desc}: failed after {format_seconds(time.perf_counter() - t0)}")
        raise
    dt = time.perf_counter() - t0
    if dt >= quiet_below_s:
        _say(f"{desc}: done in {format_seconds(dt)}")


class PlainSteps:
    """One plain line per step (the ``--progress false`` form of a bar): ``update`` prints it."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "step"):
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self._postfix: dict[str, Any] = {}
        self._t = time.perf_counter()

    def set_postfix(self, **values: Any) -> None:
        """Values shown on the next line (``reward=0.51``)."""
        self._postfix = values

    def update(self, n: int = 1) -> None:
        """Count ``n`` steps done and print the line."""
        self.n += n
        now = time.perf_counter()
        extra = ", ".join(f"{k} {v}" for k, v in self._postfix.items())
        _say(f"{self.desc} {self.unit} {self.n}/{self.total}" + (f": {extra}" if extra else "")
             + f" ({format_seconds(now - self._t)})")
        self._t = now

    def close(self) -> None:
        """Nothing to clean up (the tqdm bar needs it)."""


def step_bar(total: int, desc: str, *, initial: int = 0, unit: str = "step", enabled: bool | None = None):
    """A progress bar over ``total`` steps: tqdm when progress bars are on (``enabled``, else the process
    setting), else :class:`PlainSteps`. Both have ``update``, ``set_postfix`` and ``close``."""
    on = progress_enabled() if enabled is None else enabled
    if not on:
        return PlainSteps(total, desc, initial, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
