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


def check_output_dir(path: str | os.PathLike, what: str = "out") -> Path:
    """Check, without creating anything, that directory ``path`` can be written (it, or its nearest existing
    parent, is a writable directory): call it before any model loads. A path that is a file, lies under a
    file, or is not writable raises a one-paragraph ReinlmError."""
    from reinlm.errors import ReinlmError

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
    from reinlm.errors import ReinlmError

    try:
        fd, probe = tempfile.mkstemp(prefix=f".write-check{TEMP_MARK}", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ReinlmError(f"{what}: cannot write in {str(directory)!r} ({_os_reason(e)}); choose a writable "
                          "directory (check its permissions and free space).") from None


def ensure_writable_dir(path: str | os.PathLike, what: str = "out") -> Path:
    """Create directory ``path`` (and parents) and check that a file can be written in it, before any heavy
    work; a path that is a file, lies under a file, or is not writable raises a one-paragraph ReinlmError."""
    from reinlm.errors import ReinlmError

    path = check_output_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReinlmError(f"{what}: cannot write in {str(path)!r} ({_os_reason(e)}); choose a writable directory "
                          "(check its permissions and free space).") from None
    _check_can_write_in(path, what)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON object as a line (flushed, so a crash keeps every finished line; a line torn by a
    crash or a full disk is dropped by :func:`read_jsonl_tolerant`). An OS error names the file."""
    line = json.dumps(obj, default=_json_default) + "\n"
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


def describe_os_error(e: OSError, path: str | os.PathLike | None = None, doing: str = "") -> str:
    """One paragraph for an OS error a user can fix: the path, what went wrong in words ("the disk is full",
    "permission denied", ...) and what to do; nothing written before the failure is lost (every file a run
    writes is written atomically)."""
    import errno

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
        return (f"cannot write{target}{doing}: {_os_reason(e)}; make it writable or choose another path (--out); "
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
    return f"{_os_reason(e)}{doing}{(' at' + target) if target else ''} ({type(e).__name__}, errno {e.errno})."


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
    """Peak resident memory of this process in MiB.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec. Not ``ru_maxrss``: it carries the peak of
    the process this one was forked from across the exec, so a benchmark child started by a large parent (the
    demo, after training in-process) reported the parent's peak (both sides of latent-vs-token showed 7,926 MB).
    Elsewhere: ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


# ------------------------------------------------------------------------------------------ secrets
REDACTED = "[REDACTED]"
_SECRET_PATTERNS = [
    # an Authorization header value, whatever its scheme: "Authorization: Bearer xyz", 'authorization': 'Basic ...'
    re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)(?:(bearer|basic|token)\s+)?[^\s\"',;}]+"),
    re.compile(r"(?i)(\bbearer\s+)(?=[A-Za-z._~+/=\-]*\d)[A-Za-z0-9._~+/=\-]{8,}"),  # a token has a digit
    # key=value / "api_key": "value" forms
    re.compile(r"(?i)(\b(?:api[_-]?key|access[_-]?token|secret|password|x-api-key)[\"']?\s*[:=]\s*[\"']?)"
               r"[^\s\"',;}]{4,}"),
    # well-known key shapes: OpenAI/Anthropic sk-..., Hugging Face hf_..., GitHub, Slack, AWS, Google
    re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bxox[abpr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),
]
_SECRET_ENV_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
_registered_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Add ``value`` (e.g. an API key read from the environment) to the strings :func:`redact_secrets` removes."""
    if value and len(value) >= 6:
        _registered_secrets.add(value)


def _env_secrets() -> list[str]:
    out = []
    for name, value in os.environ.items():
        if value and len(value) >= 8 and any(w in name.upper() for w in _SECRET_ENV_WORDS):
            out.append(value)
    return out


def redact_secrets(text: str) -> str:
    """``text`` with API keys, tokens and ``Authorization`` / ``Bearer`` values replaced by ``[REDACTED]``.

    Removes, in this order: the exact values of registered secrets and of environment variables whose name
    says KEY/TOKEN/SECRET/PASSWORD (longest first), then well-known key shapes (``sk-...``, ``hf_...``, ...)
    and ``Authorization:`` / ``Bearer`` / ``api_key=`` values. Apply it to a message *before* cutting it to a
    length, so that no part of a key survives the cut.
    """
    if not text:
        return text
    text = str(text)
    for secret in sorted(_registered_secrets | set(_env_secrets()), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups and m.group(1) else "") + REDACTED, text)
    return text


# ------------------------------------------------------------------------------------------ file checks
def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete safetensors file (``None`` when it is): too short, a header length
    or header that does not parse, or a size that differs from what the header describes (truncated)."""
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes; a safetensors file starts with an 8-byte header length)"
            n = struct.unpack("<Q", head)[0]
            if n > 100 << 20:
                return f"{path.name} is not a safetensors file (its first 8 bytes are no header length)"
            if n > size - 8:
                return f"{path.name} is truncated ({size} bytes; its header alone takes {n + 8})"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"{path.name} cannot be read ({_os_reason(e)})"
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return f"{path.name} is not a safetensors file (its header is not a mapping)"
    try:
        end = max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"] or [0])
    except (KeyError, TypeError, ValueError, IndexError):
        return f"{path.name} is not a safetensors file (malformed tensor entries)"
    expected = 8 + n + end
    if size != expected:
        return f"{path.name} is truncated or damaged ({size} bytes; its header describes {expected})"
    return None


def torch_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete ``torch.save`` file (``None`` when it is): torch.save writes a zip
    archive whose directory is at the end, so a truncated file has none."""
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            size = path.stat().st_size
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"{path.name} is truncated ({size} bytes)"
    except zipfile.BadZipFile:
        return f"{path.name} is truncated or not a torch file ({path.stat().st_size} bytes, no archive directory)"
    except OSError as e:
        return f"{path.name} cannot be read ({_os_reason(e)})"
    return None


def json_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable JSON file (``None`` when it is)."""
    path = Path(path)
    try:
        json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        return f"{path.name} cannot be read ({_os_reason(e)})"
    except UnicodeDecodeError:
        return f"{path.name} is not UTF-8 text"
    except ValueError as e:
        return f"{path.name} is not valid JSON ({e})" if path.stat().st_size else f"{path.name} is empty"
    return None


_PROCESS_GROUP_EXIT_HOOK = False


def destroy_process_group_at_exit() -> None:
    """Destroy torch.distributed's default process group at interpreter exit (once per process; a no-op when it
    is not initialised or was destroyed already).

    A gloo process group left alive until interpreter teardown can abort the process ("terminate called without
    an active exception", SIGABRT) after the work is done, which torchrun reports as a failed run (pytorch issue
    190489). Registered by whatever builds an ``Accelerator`` for several processes.
    """
    global _PROCESS_GROUP_EXIT_HOOK
    if _PROCESS_GROUP_EXIT_HOOK:
        return
    import atexit

    atexit.register(_destroy_process_group)
    _PROCESS_GROUP_EXIT_HOOK = True


def _destroy_process_group() -> bool:
    """Destroy torch.distributed's default process group if one is up; whether one was."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    return True


def exit_distributed_process(code: int) -> None:
    """End a data-parallel worker now: destroy the process group, flush, ``os._exit(code)``. A no-op when no
    torch.distributed process group is up (then the caller exits normally).

    Even with the process group destroyed, a torchrun worker occasionally aborted during interpreter teardown
    after a finished run ("terminate called without an active exception", SIGABRT; seen in about 1 of 3 full test
    runs, never when run alone), and torchrun then reports the whole run as failed. Every output is written and
    closed by then, so the worker skips the teardown. For entry points only (``python -m reinlm.cli.main``
    under torchrun / accelerate launch), never inside a library call.
    """
    import logging
    import sys

    if not _destroy_process_group():
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
