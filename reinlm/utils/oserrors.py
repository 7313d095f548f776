"""OS errors a user can fix, in words: a full disk, a missing permission, a file where a directory was expected."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def describe_os_error(e: OSError, path: str | os.PathLike | None = None, doing: str = "") -> str:
    """One paragraph for an OS error a user can fix: the path, what went wrong in words ("the disk is full",
    "permission denied", ...) and what to do; nothing written before the failure is lost (every file a run
    writes is written atomically)."""
    where = path if path is not None else (e.filename if getattr(e, "filename", None) else None)
    target = f" {str(where)!r}" if where is not None else ""
    doing = f" while {doing}" if doing else ""
    if e.errno == errno.ENOSPC:
        advice = ("free some space (or choose another --out) and run the command again; files written before are "
                  "intact, and a training run continues from its last checkpoint with --resume RUN_DIR")
        return f"disk full{doing}: no space left on the device holding{target or ' the output'}; {advice}."
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded{doing} at{target or ' the output'}; free some space and run the command again."
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write{target}{doing}: {os_reason(e)}; make it writable or choose another path (--out); "
                "files written before are intact.")
    if isinstance(e, FileExistsError):
        return (f"{(where and repr(str(where))) or 'a path'} already exists{doing} (a file where a directory was "
                "expected?); choose another path.")
    if isinstance(e, FileNotFoundError):
        return f"{(where and repr(str(where))) or 'a file'} does not exist{doing}."
    if isinstance(e, IsADirectoryError):
        return f"{(where and repr(str(where))) or 'a path'} is a directory, not a file{doing}."
    if isinstance(e, NotADirectoryError):
        return f"{(where and repr(str(where))) or 'a path'} is not a directory (a part of it is a file){doing}."
    return f"{os_reason(e)}{doing}{(' at' + target) if target else ''} ({type(e).__name__}, errno {e.errno})."


def disk_full_at(path: str | os.PathLike, margin_bytes: int = 1 << 20) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) has less than
    ``margin_bytes`` free: libraries such as torch.save report a full disk as an unexplained write error."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < margin_bytes
    except OSError:
        return False


def os_reason(e: OSError) -> str:

    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    return e.strerror or type(e).__name__
