"""User-supplied text files read as UTF-8, with one-paragraph errors (missing, a directory, unreadable, bad bytes)."""

from __future__ import annotations

import os
from pathlib import Path

from reinlm.errors import ReinlmError
from reinlm.utils.oserrors import os_reason


def read_bytes(path: str | os.PathLike, what: str = "file", hint: str = "") -> bytes:
    """The bytes of a user-supplied file; a missing file, a directory or an unreadable file raises a
    ReinlmError naming ``what`` (e.g. "prompts"), the path and ``hint`` (what to pass instead)."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if path.is_dir():
        raise ReinlmError(f"{what}: {str(path)!r} is a directory, not a file{tail}.")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ReinlmError(f"{what}: file {str(path)!r} does not exist{tail}.") from None
    except OSError as e:
        raise ReinlmError(f"{what}: cannot read {str(path)!r} ({os_reason(e)}){tail}.") from None


def decode_text(data: bytes, source: str, what: str = "file") -> str:
    """``data`` decoded as UTF-8 (a BOM is dropped); bad bytes raise a ReinlmError naming the file, the
    line, the byte offset and the byte, and saying how to fix it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = data[e.start:e.end].hex(" ")
        kind = " (it looks binary)" if b"\x00" in data[:4096] else ""
        name = Path(source)
        raise ReinlmError(f"{what}: {source!r} is not UTF-8 text{kind}: line {line}, byte {col} of that line (offset "
                          f"{e.start}) is 0x{bad}; allowed: a UTF-8 file. Convert it, e.g. iconv -f latin1 -t utf-8 "
                          f"{name.name} > {name.stem}.utf8{name.suffix}.") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ReinlmError(f"{what}: {source!r} holds a NUL byte on line {line}; it looks like a binary file, "
                          "not text.")
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | os.PathLike, what: str = "file", hint: str = "") -> str:
    """Read a user-supplied text file as UTF-8 with one-paragraph errors (missing, a directory,
    unreadable, bad bytes: see :func:`read_bytes` and :func:`decode_text`)."""
    return decode_text(read_bytes(path, what, hint), str(path), what)
