"""JSON and JSONL files: reinlm's own logs (atomic JSON, flushed JSONL lines, tolerant reading) and users' JSONL."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reinlm.errors import ReinlmError
from reinlm.utils.atomic import atomic_write_text
from reinlm.utils.textfile import read_text


def json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON object as a line (flushed, so a crash keeps every finished line; a line torn by a
    crash or a full disk is dropped by :func:`read_jsonl_tolerant`). An OS error names the file."""
    line = json.dumps(obj, default=json_default) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL log written by reinlm (metrics, samples) into a list of objects: blank lines and lines torn
    by an interrupted write are skipped (see :func:`read_jsonl_tolerant`)."""
    return read_jsonl_tolerant(path)[0]


def read_jsonl_tolerant(path: str | Path) -> tuple[list[dict], list[int]]:
    """The JSON objects of a run's own JSONL log, and the numbers of the lines that are not (a line torn by a
    kill or a full disk, a NUL-filled tail after a crash): those are skipped, not fatal."""
    rows, bad = [], []
    data = Path(path).read_bytes().decode("utf-8", "replace")
    for lineno, line in enumerate(data.split("\n"), 1):
        if not line.strip("\x00 \t\r"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(lineno)
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad.append(lineno)
    return rows, bad


def read_jsonl_objects(path: str | os.PathLike, what: str, allowed: str) -> list[tuple[int, dict]]:
    """User-supplied JSONL -> [(line number, object)], blank lines skipped.

    A line that is not JSON, or not a JSON object, raises a ReinlmError naming ``what`` (e.g. "prompts"),
    the file, the line and ``allowed`` (the expected format).
    """
    rows = []
    for lineno, line in enumerate(read_text(path, what).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReinlmError(f"{what}: {str(path)!r} line {lineno} is not valid JSON ({e.msg}); "
                              f"allowed: {allowed}.") from e
        if not isinstance(obj, dict):
            raise ReinlmError(f"{what}: {str(path)!r} line {lineno} is a {type(obj).__name__}; "
                              f"allowed: {allowed}.")
        rows.append((lineno, obj))
    return rows
