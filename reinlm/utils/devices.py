"""Devices and dtypes: names a user types (``auto``, ``cuda:1``, ``bfloat16``) to torch objects, and casts."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from reinlm.errors import bad_value


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


def cast_autocast_weights(model: torch.nn.Module, dtype: str | torch.dtype) -> torch.nn.Module:
    """Cast (in place) to ``dtype`` exactly the parameters ``torch.autocast(dtype=dtype)`` casts in a forward
    anyway: the weights and biases of the ``torch.nn.Linear`` layers, except one shared with another module
    (a tied input embedding: autocast leaves embeddings alone). Embeddings and norms keep their dtype.

    Run under the same autocast, the model then computes bit for bit what it computed before the cast (autocast
    rounds a float32 weight to bfloat16 the same way ``Tensor.to`` does), with those weights in half the memory
    and no per-forward cast. Used for frozen copies of a model trained under ``torch.autocast``.
    """
    dt = resolve_dtype(dtype)
    linear = {id(p) for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)}
    shared = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear) for p in m.parameters(recurse=False)}
    for p in model.parameters():
        if id(p) in linear and id(p) not in shared:
            p.data = p.data.to(dt)
    return model


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
