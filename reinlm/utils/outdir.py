"""Output directories checked before any heavy work: writable, not a file, not under a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from reinlm.errors import ReinlmError
from reinlm.utils.atomic import TEMP_MARK
from reinlm.utils.oserrors import os_reason


def check_output_dir(path: str | os.PathLike, what: str = "out") -> Path:
    """Check, without creating anything, that directory ``path`` can be written (it, or its nearest existing
    parent, is a writable directory): call it before any model loads. A path that is a file, lies under a
    file, or is not writable raises a one-paragraph ReinlmError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ReinlmError(f"{what}: {str(path)!r} is a file, not a directory; choose another path.")
    probe_dir = path
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ReinlmError(f"{what}: {str(path)!r} lies under {str(parent)!r}, which is a file, not a directory; "
                              "choose another path.")
        if parent.exists():
            break
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    _check_can_write_in(probe_dir, what)
    return path


def _check_can_write_in(directory: Path, what: str) -> None:
    """Create and remove a probe file in the existing ``directory``; a one-paragraph ReinlmError if it cannot."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".write-check{TEMP_MARK}", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ReinlmError(f"{what}: cannot write in {str(directory)!r} ({os_reason(e)}); choose a writable "
                          "directory (check its permissions and free space).") from None


def ensure_writable_dir(path: str | os.PathLike, what: str = "out") -> Path:
    """Create directory ``path`` (and parents) and check that a file can be written in it, before any heavy
    work; a path that is a file, lies under a file, or is not writable raises a one-paragraph ReinlmError."""
    path = check_output_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReinlmError(f"{what}: cannot write in {str(path)!r} ({os_reason(e)}); choose a writable directory "
                          "(check its permissions and free space).") from None
    _check_can_write_in(path, what)
    return path
