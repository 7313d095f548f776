"""Atomic writes: a file or a directory holds its old content or the new one, never a part.

Everything a run writes goes through here; :func:`remove_stale_temps` cleans up after a process killed mid-write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


TEMP_MARK = ".tmp-"  # the infix of every temporary name written by atomic_dir / atomic_write_*


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), since a set-and-restore
    would briefly affect files other threads create."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(directory: bool) -> int:
    """The mode a plain ``mkdir`` / ``open(..., "w")`` would give under the current umask (tempfile's
    mkdtemp / mkstemp use 0o700 / 0o600, which would make every atomically written output private)."""
    return (0o777 if directory else 0o666) & ~_umask()


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` (and the directories) to disk, so a rename never publishes data the
    kernel still holds only in memory."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success flush it to disk and rename it to ``final``.

    A crash inside the block leaves ``final`` untouched (the old version, or nothing), never a half-written
    directory. An existing ``final`` is replaced only after the new one is complete. A process killed
    mid-write leaves ``.NAME.tmp-*`` (or, between the two renames, ``.NAME.old``) beside ``final``:
    :func:`remove_stale_temps` cleans them up.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TEMP_MARK}", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(_default_mode(directory=True))
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and an atomic rename: ``path`` holds
    either its old content or the new one, never a part (a full disk leaves the old file intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode(directory=False))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Clean up after atomic writes killed in ``directory``: remove ``.NAME.tmp-*`` files and directories,
    and rename a ``.NAME.old`` back to ``NAME`` when ``NAME`` is missing (a kill between atomic_dir's two
    renames), else remove it. Returns the names removed or restored.

    Only call it while no other process writes there (``reinlm train`` holds the run-directory lock).
    """
    directory = Path(directory)
    done: list[str] = []
    if not directory.is_dir():
        return done
    for p in sorted(directory.iterdir()):
        name = p.name
        if name.startswith(".") and TEMP_MARK in name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            done.append(name)
        elif name.startswith(".") and name.endswith(".old"):
            target = directory / name[1:-len(".old")]
            if not target.exists():
                p.rename(target)
            else:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            done.append(name)
    return done
