"""File integrity: why a checkpoint file (safetensors, torch.save, JSON) is not complete, in words; ``None`` when it is."""

from __future__ import annotations

import json
import os
import struct
import time
import zipfile
from pathlib import Path

from reinlm.utils.oserrors import os_reason


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete safetensors file (``None`` when it is): too short, a header length
    or header that does not parse, or a size that differs from what the header describes (truncated)."""
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
        return f"{path.name} cannot be read ({os_reason(e)})"
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
        return f"{path.name} cannot be read ({os_reason(e)})"
    return None


#: Files found valid, by identity (device, inode, size, modification time): a model directory is checked each time
#: it is loaded, and parsing a tokenizer.json (3.5 MB for SmolLM2) each time cost about 0.1 s.
_VALID_JSON: set[tuple[int, int, int, int]] = set()
_RACY_NS = 2_000_000_000  # a file modified this recently may change again within one timestamp tick: not cached


def json_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable JSON file (``None`` when it is). A file found valid is not parsed again
    while its size and modification time stay the same (unless it was modified within the last 2 s when
    checked: timestamps are coarser than a quick rewrite)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _VALID_JSON:
            return None
        json.loads(path.read_bytes().decode("utf-8"))
        if time.time_ns() - st.st_mtime_ns > _RACY_NS:
            if len(_VALID_JSON) > 4096:
                _VALID_JSON.clear()
            _VALID_JSON.add(key)
    except OSError as e:
        return f"{path.name} cannot be read ({os_reason(e)})"
    except UnicodeDecodeError:
        return f"{path.name} is not UTF-8 text"
    except ValueError as e:
        return f"{path.name} is not valid JSON ({e})" if path.stat().st_size else f"{path.name} is empty"
    return None
