"""The frozen backbone's forward to its final normalised hidden states h: the one place latent code runs it.

Every latent head reads h (DESIGN.md section 4). Pretraining (cache and stream), the hidden-state cache,
generation, fine-tuning and the seeds' API all get h here. Legend: B = batch, T = positions, H = hidden size.
"""

from __future__ import annotations

import torch

from reinlm.rollout.decode import hf_cache_kwarg, position_ids_from_mask


def backbone_forward(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
    """The backbone's final normalised hidden states and its KV cache.

    input_ids, attention_mask (B, T) (mask default: all ones), position_ids (B, T) (default: counting real
    tokens only, :func:`~reinlm.rollout.decode.position_ids_from_mask`, so left padding does not shift them),
    ``past_key_values`` the cache to extend. Returns (h (B, T, H) in the backbone's dtype, the cache or
    ``None`` without ``use_cache``). Gradients flow when the caller does not disable them.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    base = backbone.base_model
    kw = hf_cache_kwarg(base)
    out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
               **{kw: past_key_values})
    return out.last_hidden_state, (getattr(out, kw) if use_cache else None)
