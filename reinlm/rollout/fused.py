"""A fused single-token decode step for Llama-family models on bfloat16 weights (CPU with native bfloat16).

Why: at rollout sizes (8-64 rows, one new token each) a Hugging Face decode step is ~50 small operations per
layer (three projections, rotary embedding on q and k separately, a growing ``DynamicCache`` concatenated every
step, the key/value cache converted to float32 for the attention every step, two MLP projections), and on a
2-core CPU their fixed cost is a large share of the step. :class:`FusedDecoder` computes the same layer with

- one packed ``q|k|v`` projection and one packed ``gate|up`` projection per layer (oneDNN's pre-reordered
  bfloat16 weights, :mod:`reinlm.rollout.fast`), the rotary embedding applied to q and k together, cos/sin once
  per step for every layer;
- a pre-allocated key/value cache kept in **float32** (each new key/value is converted once, when written), so
  the attention (two batched products and a float32 softmax, grouped-query heads without repeating the keys,
  as :func:`reinlm.rollout.fast.decode_attention`) reads it without converting the whole history each step.

Arithmetic follows transformers' Llama layer operation by operation in bfloat16 (RMSNorm in float32 then cast,
``q cos + rotate_half(q) sin``, ``down(silu(gate) * up)``, residual adds in bfloat16), and the attention is the
decode attention's float32 arithmetic; only the matrix products' internal blocking may differ from unfused ones,
so results agree with the unfused bfloat16 step to bfloat16 rounding (tested). Prefill (many positions) still
runs the Hugging Face forward; :meth:`FusedDecoder.begin` copies its cache into the buffers.

Used by the decode engine's steppers (``LMStepper``: the bfloat16 rollout copy; ``LatentStepper``: a bfloat16
latent backbone) when :func:`fused_decoder` supports the model: ``model_type`` llama, mistral (no sliding window)
or qwen2 (q/k/v biases), SiLU MLP, a static rotary embedding, bfloat16 weights on a CPU where oneDNN packs
them. Anything else keeps the Hugging Face step. Legend: b = rows, D = hidden size, nh / nkv = query / key-value
heads, hs = head size, C = cache capacity (positions), V = vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

from reinlm.rollout.fast import packing_supported

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE = ("default", "linear", "llama3")


def _pack(w: torch.Tensor) -> torch.Tensor:
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), 16)
    return packed


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return y


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in float32, cast back, scale."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _base_and_head(model: Any) -> tuple[Any, Any]:
    base = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return base, head


def unsupported_reason(model: Any) -> str | None:
    """Why :class:`FusedDecoder` cannot run ``model`` (a ``*ForCausalLM``), or None when it can."""
    conf = getattr(model, "config", None)
    base, head = _base_and_head(model)
    if conf is None or getattr(conf, "model_type", None) not in SUPPORTED_TYPES:
        return f"model_type {getattr(conf, 'model_type', None)!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if base is None or head is None or not hasattr(base, "layers") or not hasattr(base, "rotary_emb"):
        return "not a *ForCausalLM with model.layers / model.rotary_emb / an LM head"
    if getattr(conf, "hidden_act", "silu") != "silu":
        return f"hidden_act {conf.hidden_act!r} (only silu)"
    if getattr(conf, "sliding_window", None) and getattr(conf, "use_sliding_window", True) and \
            conf.model_type != "llama":
        return "a sliding attention window"
    if getattr(base.rotary_emb, "rope_type", "default") not in STATIC_ROPE:
        return f"rope_type {base.rotary_emb.rope_type!r} (only {', '.join(STATIC_ROPE)})"
    if getattr(conf, "mlp_bias", False) or getattr(conf, "attention_bias", False) and conf.model_type == "llama":
        return "biases in the MLP or attention of a llama model"
    p = next(model.parameters())
    if p.dtype != torch.bfloat16 or p.device.type != "cpu":
        return f"weights in {p.dtype} on {p.device.type} (only bfloat16 on the CPU)"
    if not packing_supported():
        return "oneDNN cannot pack bfloat16 weights on this CPU (no native bfloat16)"
    return None


def fused_decoder(model: Any) -> FusedDecoder | None:
    """The fused decoder of ``model`` (made once and kept on the model; its packed weights are rebuilt when a
    source weight changed, e.g. after a rollout copy's sync), or None when :func:`unsupported_reason` says so."""
    fd: FusedDecoder | None = getattr(model, "_reinlm_fused", None)
    if fd is None:
        if unsupported_reason(model) is not None:
            return None
        fd = FusedDecoder(model)
        model.__dict__["_reinlm_fused"] = fd  # not a submodule: never saved, never moved
    fd.refresh()
    return fd


def _key(ts: list[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in ts)


class FusedDecoder:
    """Single-token decode steps of a Llama-family ``*ForCausalLM`` with fused, packed weights and a float32
    key/value cache (see the module docstring). Call :meth:`begin` after a Hugging Face prefill, then
    :meth:`step` once per new token, :meth:`select` when rows finish, :meth:`logits` for the LM head."""

    def __init__(self, model: Any) -> None:
        base, head = _base_and_head(model)
        conf = model.config
        self.model, self.base, self.head = model, base, head
        self.nh = conf.num_attention_heads
        self.nkv = getattr(conf, "num_key_value_heads", None) or self.nh
        self.hs = getattr(conf, "head_dim", None) or conf.hidden_size // self.nh
        self.scale = self.hs ** -0.5
        self.rope = base.rotary_emb
        self._key: tuple[tuple[int, int], ...] | None = None

    def _sources(self) -> list[torch.Tensor]:
        out = []
        for layer in self.base.layers:
            a, m = layer.self_attn, layer.mlp
            out += [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, m.gate_proj.weight,
                    m.up_proj.weight, m.down_proj.weight]
            out += [b for b in (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias) if b is not None]
        return out + [self.head.weight]

    def refresh(self) -> None:
        """(Re)build the fused, packed weights when a source weight changed since the last build (cheap check)."""
        if _key(self._sources()) != self._key:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, even when called in a decode loop
                self._build()

    def _build(self) -> None:
        self.layers = []
        for layer in self.base.layers:
            a, m = layer.self_attn, layer.mlp
            biases = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            self.layers.append(dict(
                n1=layer.input_layernorm.weight, e1=layer.input_layernorm.variance_epsilon,
                n2=layer.post_attention_layernorm.weight, e2=layer.post_attention_layernorm.variance_epsilon,
                qkv=_pack(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
                qkv_b=torch.cat(biases) if biases[0] is not None else None,
                o=_pack(a.o_proj.weight), gu=_pack(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                down=_pack(m.down_proj.weight), ffn=m.gate_proj.weight.shape[0]))
        self.norm_w, self.norm_eps = self.base.norm.weight, self.base.norm.variance_epsilon
        self.head_packed = _pack(self.head.weight)
        self.head_bias = getattr(self.head, "bias", None)
        self._key = _key(self._sources())

    # ------------------------------------------------------------------ cache
    def begin(self, cache: Any, capacity: int) -> None:
        """Take over a prefilled transformers cache (rows b, P positions): keys/values copied into float32
        buffers of ``capacity`` positions, (b, nkv, C, hs) per layer."""
        self.k, self.v = [], []
        for i in range(len(self.layers)):
            layer = cache.layers[i]
            keys, values = layer.keys, layer.values  # (b, nkv, P, hs)
            b, _, P, _ = keys.shape
            kb = keys.new_zeros(b, self.nkv, capacity, self.hs, dtype=torch.float32)
            vb = torch.zeros_like(kb)
            kb[:, :, :P], vb[:, :, :P] = keys, values
            self.k.append(kb)
            self.v.append(vb)

    def select(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (b',) of every buffer, in that order."""
        self.k = [t[idx] for t in self.k]
        self.v = [t[idx] for t in self.v]

    # ------------------------------------------------------------------ one step
    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Feed one token per row at cache slot L = ``key_mask.shape[1] - 1``.

        tokens (b,) long, positions (b,) long (rotary positions: real tokens before, as ``position_ids``),
        key_mask (b, L + 1) 1 on real keys. Returns the final normalised hidden state (b, D), bfloat16.
        """
        b, L = tokens.shape[0], key_mask.shape[1] - 1
        nh, nkv, hs = self.nh, self.nkv, self.hs
        x = self.base.embed_tokens(tokens)  # (b, D)
        cos, sin = self.rope(x, positions[:, None])  # (b, 1, hs) in x's dtype
        cos, sin = cos.view(b, 1, hs), sin.view(b, 1, hs)
        half = hs // 2
        hidden = ~key_mask.bool()[:, None, None, :]  # (b, 1, 1, L+1): True = padding key
        for lyr, kb, vb in zip(self.layers, self.k, self.v):
            h = _rms_norm(x, lyr["n1"], lyr["e1"])
            qkv = _linear(h, lyr["qkv"], lyr["qkv_b"])  # (b, (nh + 2 nkv) hs)
            qk = qkv[:, : (nh + nkv) * hs].view(b, nh + nkv, hs)
            rot = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
            qk = qk * cos + rot * sin  # q and k rotated together, as apply_rotary_pos_emb (bfloat16)
            kb[:, :, L] = qk[:, nh:]
            vb[:, :, L] = qkv[:, (nh + nkv) * hs:].view(b, nkv, hs)
            q = qk[:, :nh].reshape(b, nkv, nh // nkv, hs).float()  # (b, nkv, g, hs)
            scores = torch.matmul(q, kb[:, :, : L + 1].transpose(-1, -2)) * self.scale  # (b, nkv, g, L+1)
            scores = scores.masked_fill(hidden, float("-inf"))
            att = torch.matmul(scores.softmax(-1), vb[:, :, : L + 1])  # (b, nkv, g, hs)
            x = x + _linear(att.reshape(b, nh * hs).to(x.dtype), lyr["o"])
            h = _rms_norm(x, lyr["n2"], lyr["e2"])
            gu = _linear(h, lyr["gu"])  # (b, 2 F)
            F = lyr["ffn"]
            x = x + _linear(torch.nn.functional.silu(gu[:, :F]) * gu[:, F:], lyr["down"])
        return _rms_norm(x, self.norm_w, self.norm_eps)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on final hidden states (..., D) bfloat16 -> (..., V) bfloat16 (packed weights)."""
        return _linear(h.to(torch.bfloat16), self.head_packed, self.head_bias)
