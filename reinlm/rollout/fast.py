"""What makes one decode step fast on a CPU, measured (docs/benchmarks.md, "Where a decode step goes").

Two changes to how a Hugging Face model computes a single-token step, applied only while the decode engine runs
on **bfloat16** weights (the rollout copy, a bfloat16 latent backbone). Float32 decoding keeps PyTorch's SDPA
and ``F.linear``: its log-probs equal a teacher-forced forward within 1e-4 and a row's result does not depend
on which other rows share the batch, bit for bit. The decode attention is exact to float32 rounding too, but
its reductions over padded key positions round differently with the padding (3.8e-6 nats over 4 tokens
between batch sizes, measured), so it stays off there.

1. **Decode attention** (:func:`decode_attention`). PyTorch's CPU ``scaled_dot_product_attention`` is slow
   for one query per row: measured 0.2 ms at batch 8 and 7.8 ms at batch 64 per layer call (bfloat16,
   9 heads, 3 key/value heads, 30 keys), against 0.09 ms / 1.1 ms for two batched matrix products and a
   softmax over the grouped heads (grouped-query attention without repeating the keys). Scores and the
   softmax are computed in float32 whatever the weights' dtype. Prefill (more than one query) still uses
   SDPA. Registered with transformers' ``AttentionInterface`` as ``reinlm_decode``.
2. **Pre-packed bfloat16 linears** (:func:`pack_linears`). oneDNN's ``_linear_pointwise`` on weights reordered
   once into its blocked layout is 1.3-1.6x faster than ``F.linear`` for decode-sized inputs (576 -> 1536 at
   8 rows: 0.061 vs 0.092 ms; the 49k-row LM head: 9.8 vs 16.0 ms) and gives bit-identical results. Used for
   the bfloat16 rollout copy and the latent backbone on CPUs with native bfloat16; a layer re-packs itself
   when its weight changed (a sync after an optimiser step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_REGISTERED = False
NAME = "reinlm_decode"


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: one query per row -> two matmuls + softmax in float32, else SDPA.

    query (B, H, 1, D), key / value (B, KVH, T, D) with H = g * KVH (grouped-query attention), attention_mask
    None, bool (B, 1, 1, T) (True = attend) or additive float. Returns (B, 1, H, D), None.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None \
            or (dropout and module.training):
        prefill: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
        return prefill
    B, H, _, D = query.shape
    KVH, T = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else D ** -0.5
    q = query.reshape(B, KVH, H // KVH, D).float()  # (B, KVH, g, D)
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scale  # (B, KVH, g, T)
    if attention_mask is not None:
        m = attention_mask[..., -T:].reshape(attention_mask.shape[0], 1, 1, T)  # (B|1, 1, 1, T)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    out = torch.matmul(scores.softmax(-1), value.float())  # (B, KVH, g, D)
    return out.reshape(B, H, 1, D).transpose(1, 2).to(query.dtype), None


def register() -> None:
    """Register :func:`decode_attention` (and SDPA's mask format for it) with transformers, once."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    assert NAME in ALL_MASK_ATTENTION_FUNCTIONS
    _REGISTERED = True


def _configs(model: torch.nn.Module) -> list[Any]:
    seen: set[int] = set()
    out: list[Any] = []
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and id(c) not in seen and hasattr(c, "_attn_implementation"):
            seen.add(id(c))
            out.append(c)
    return out


@contextlib.contextmanager
def decode_attention_on(model: torch.nn.Module) -> Iterator[None]:
    """While inside, a bfloat16 ``model`` (any transformers model using the attention interface) decodes with
    :func:`decode_attention`; models using ``sdpa`` or ``eager`` only are switched, others (and float32 / float16
    models) are left alone."""
    p = next(model.parameters(), None)
    if p is None or p.dtype != torch.bfloat16:
        yield
        return
    try:
        register()
    except Exception:  # an older transformers without the interfaces: keep the model as it is
        yield
        return
    changed = []
    for c in _configs(model):
        if c._attn_implementation in ("sdpa", "eager"):
            changed.append((c, c._attn_implementation))
            c._attn_implementation = NAME
    try:
        yield
    finally:
        for c, impl in changed:
            c._attn_implementation = impl


# ----------------------------------------------------------------------------------------------- packed linears
def packing_supported() -> bool:
    """Whether oneDNN can pre-pack bfloat16 linear weights here (a CPU with native bfloat16)."""
    try:
        from reinlm.utils.devices import native_bfloat16

        return (bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]  # torch's own stub
                and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and native_bfloat16("cpu"))
    except Exception:
        return False


def _weight_key(w: torch.Tensor) -> tuple[int, int, torch.dtype, tuple[int, ...]]:
    return (w.data_ptr(), w._version, w.dtype, tuple(w.shape))


def _repack(m: torch.nn.Linear) -> None:
    with torch.no_grad():
        m._reinlm_packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), 16)
    setattr(m, "_reinlm_packed_key", _weight_key(m.weight))  # a plain attribute, not a buffer


def _packed_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    w = self.weight
    if w.dtype != torch.bfloat16 or w.requires_grad and torch.is_grad_enabled():
        return torch.nn.functional.linear(x, w, self.bias)  # a trained layer: plain linear, gradients flow
    if self._reinlm_packed_key != _weight_key(w):  # the weights changed in place (a sync) or were replaced
        _repack(self)
    y: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self._reinlm_packed, self.bias, "none", [], "")
    return y


def pack_linears(model: torch.nn.Module) -> int:
    """Pre-pack every bfloat16 ``nn.Linear`` of ``model`` (on the CPU) for oneDNN; returns how many.

    Idempotent. A packed layer re-packs itself when its weight changed since (an in-place copy bumps the
    tensor's version; a replaced tensor has a new address), so a synced rollout copy or a fine-tuned backbone
    never computes with stale weights; a layer whose weight requires gradients runs ``F.linear`` while autograd
    is on. The original weights stay in place (checkpoints, syncs, ``state_dict``).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu":
            if not hasattr(m, "_reinlm_packed_key"):
                _repack(m)
                setattr(m, "forward", _packed_forward.__get__(m))  # this layer's forward, not the class's
            n += 1
    return n
