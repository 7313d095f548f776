"""Shared helpers: seeding, devices, atomic writes, JSONL. Import these; never copy them."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from reinlm.errors import bad_value


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict[str, Any]:
    """Snapshot of every RNG state, for checkpoints."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot made by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(device: "str | torch.device" = "auto") -> torch.device:
    """Map ``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` (or a torch device) to a torch device.

    auto: CUDA when available. ``cpu:N`` is accepted too: it is what Accelerate reports as the device of a
    process in multi-process CPU training (torchrun + gloo).
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if re.fullmatch(r"cpu(:\d+)?", device) or re.fullmatch(r"cuda(:\d+)?", device):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise bad_value("device", device, "cpu or auto: no CUDA device is visible on this machine")
        return torch.device(device)
    raise bad_value("device", device, "cpu, cuda, cuda:N or auto")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``float32`` | ``bfloat16`` | ``float16`` to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise bad_value("dtype", dtype, ", ".join(DTYPES))
    return DTYPES[dtype]


def native_bfloat16(device: str | torch.device = "auto") -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (not by emulation, which is slower
    than float32): a CUDA GPU that supports it, or a CPU with the ``avx512_bf16`` or ``amx_bf16`` flag."""
    dev = resolve_device(str(device))
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cast_parameters(model: torch.nn.Module, dtype: str | torch.dtype) -> torch.nn.Module:
    """Cast the parameters of ``model`` (in place) to ``dtype``, leaving its buffers alone.

    ``model.to(torch.bfloat16)`` would also round the rotary ``inv_freq`` buffer, which ``from_pretrained``
    keeps in float32, and rotary positions would lose precision. Tied weights stay tied (each shared
    Parameter is cast once).
    """
    dt = resolve_dtype(dtype)
    for p in model.parameters():
        p.data = p.data.to(dt)
    if hasattr(getattr(model, "config", None), "dtype"):
        model.config.dtype = dt
    return model


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success rename it to ``final``.

    A crash inside the block leaves ``final`` untouched (the old version, or nothing), never a half-written
    directory. An existing ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON object as a line (flushed, so a crash keeps every finished line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=_json_default) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file into a list of objects (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_jsonl_objects(path: str | os.PathLike, what: str, allowed: str) -> list[tuple[int, dict]]:
    """User-supplied JSONL -> [(line number, object)], blank lines skipped.

    A line that is not JSON, or not a JSON object, raises a ReinlmError naming ``what`` (e.g. "prompts"),
    the file, the line and ``allowed`` (the expected format).
    """
    from reinlm.errors import ReinlmError

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


def _os_reason(e: OSError) -> str:
    import errno

    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    return e.strerror or type(e).__name__


def read_bytes(path: str | os.PathLike, what: str = "file", hint: str = "") -> bytes:
    """The bytes of a user-supplied file; a missing file, a directory or an unreadable file raises a
    ReinlmError naming ``what`` (e.g. "prompts"), the path and ``hint`` (what to pass instead)."""
    from reinlm.errors import ReinlmError

    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if path.is_dir():
        raise ReinlmError(f"{what}: {str(path)!r} is a directory, not a file{tail}.")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ReinlmError(f"{what}: file {str(path)!r} does not exist{tail}.") from None
    except OSError as e:
        raise ReinlmError(f"{what}: cannot read {str(path)!r} ({_os_reason(e)}){tail}.") from None


def decode_text(data: bytes, source: str, what: str = "file") -> str:
    """``data`` decoded as UTF-8 (a BOM is dropped); bad bytes raise a ReinlmError naming the file, the
    line, the byte offset and the byte, and saying how to fix it."""
    from reinlm.errors import ReinlmError

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


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def chunked(items: list, size: int) -> Iterable[list]:
    """Split ``items`` into consecutive lists of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
