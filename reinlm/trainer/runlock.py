"""One writer per run directory: an exclusive lock on ``RUN_DIR/.lock``.

Two ``reinlm train`` on the same ``--out`` (two fresh runs, one with ``--overwrite``, or two ``--resume``)
would interleave their steps in ``metrics.jsonl`` and overwrite each other's checkpoints. The lock is a
``fcntl.flock`` on ``RUN_DIR/.lock``: the kernel releases it when its holder exits, however it exits
(SIGKILL included), so a lock left by a dead process is simply taken over. The file holds the holder's
pid, host and start time, so the refusal can name them. Linux/macOS only (``fcntl``); elsewhere the lock is
a no-op with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from reinlm.errors import ReinlmError
from reinlm.utils.outdir import ensure_writable_dir

log = logging.getLogger("reinlm")

LOCK_NAME = ".lock"
_held_here: dict[str, int] = {}  # run dirs this process holds -> nesting depth (the CLI, then the Trainer)


class RunDirLocked(ReinlmError):
    """Another live process holds the run directory."""


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive lock on a run directory; use as a context manager or call :meth:`acquire` / :meth:`release`.

    >>> with RunLock("runs/x"):   # a second process entering this block for runs/x gets RunDirLocked
    ...     pass
    """

    def __init__(self, run_dir: str | os.PathLike[str], what: str = "out"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.what = what
        self._fd: int | None = None
        self._created = False
        self._nested = False

    def acquire(self) -> "RunLock":
        """Take the lock (creating the run directory); raises :class:`RunDirLocked` naming the holder's pid.
        Re-entrant within one process (``reinlm train`` locks before loading models, the Trainer again)."""
        key = str(self.run_dir.resolve())
        if _held_here.get(key):
            _held_here[key] += 1
            self._nested = True
            return self
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            log.warning("run-directory locking is not available on this platform; do not start two runs on %s",
                        self.run_dir)
            return self

        self._created = not self.run_dir.exists()
        ensure_writable_dir(self.run_dir, self.what)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_holder(self.path)
            pid = holder.get("pid", "unknown")
            since = holder.get("started")
            when = f", running since {since}" if since else ""
            host = f" on {holder['host']}" if holder.get("host") and holder.get("host") != socket.gethostname() else ""
            raise RunDirLocked(f"{self.what}: {str(self.run_dir)!r} is in use by another reinlm process (pid {pid}"
                               f"{host}{when}); two writers would interleave metrics and overwrite each other's "
                               f"checkpoints. Wait for it to finish, stop it (kill {pid}), or choose another "
                               "--out.") from None
        previous = _read_holder(self.path)
        if previous.get("pid") and previous.get("pid") != os.getpid() and not _pid_alive(int(previous["pid"])):
            log.info("took over the lock of %s left by pid %s, which is no longer running", self.run_dir,
                     previous["pid"])
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:8]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        _held_here[key] = 1
        return self

    def release(self) -> None:
        """Release the lock (the file stays: removing it could let two processes lock two different files)."""
        key = str(self.run_dir.resolve())
        if self._nested:
            self._nested = False
            _held_here[key] -= 1
            return
        if self._fd is None:
            return
        _held_here.pop(key, None)
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if self._created:  # a run that failed before writing anything leaves no empty directory behind
            try:
                if [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
                    self.path.unlink()
                    self.run_dir.rmdir()
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_main_process() -> bool:
    """Whether this is rank 0 of a torchrun / accelerate launch (or a single process): only it takes the lock."""
    return int(os.environ.get("RANK", "0") or 0) == 0
