"""The heads of a latent-action model: inverse dynamics, action codebook, world model, policy.

Every head reads the frozen backbone's final *normalised* hidden state h (DESIGN.md section 4; the CoLA card
uses "the embeddings from the final block" of Llama-3.1-8B). Legend:

    B = batch, T = positions, H = backbone hidden size, D = head width (``d_model``), K = actions,
    V = vocabulary, F = merge-block inner width, nh / nkv = query / key-value heads, hs = head size,
    C = capacity of an incremental cache (positions).

- :class:`CausalStack`: an optional ``Linear(H -> D)``, causal pre-norm transformer blocks, a norm,
  ``Linear(D -> K)``. The policy is one; the IDM is one whose output is shifted by a position
  (:func:`idm_step_logits`). Blocks may use rotary positions (the backbone's RoPE) and grouped-query
  attention, as CoLA's Llama decoder layers do. :meth:`CausalStack.prefill` / :meth:`CausalStack.step` run it
  incrementally with a key/value cache (generation).
- :class:`WorldModel`: codebook ``Linear(K -> H, no bias)`` and residual merge blocks
  ``s <- s + SwiGLU([norm(s); codebook(a)])`` starting from ``s = h`` (``norm`` is the identity in CoLA).
  Read-out ``"state"`` (reinlm's ``cpu``/``large``): the frozen LM head reads ``s``; each block's last
  projection is zero-initialised, so an untrained world model reproduces the backbone exactly (``h`` is
  already normalised: re-applying the final norm would scale twice, see docs/latent.md). Read-out ``"cola"``
  (CoLA's ``IntentionModel_v1``): the LM head reads ``ln_f(s) - h`` with the backbone's own final norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reinlm.rollout.sampling import choose, filter_logits
from reinlm.rollout.decode import position_ids_from_mask


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (as in Llama: normalised in float32, cast back, then scaled)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` (Shazeer 2020); ``zero_out`` zero-initialises ``down``."""

    def __init__(self, d_in: int, d_ff: int, d_out: int, zero_out: bool = False):
        super().__init__()
        self.gate = nn.Linear(d_in, d_ff, bias=False)
        self.up = nn.Linear(d_in, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_out, bias=False)
        if zero_out:
            nn.init.zeros_(self.down.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) from given inverse frequencies (hs/2,), e.g. the backbone's.

    ``inv_freq`` is a non-persistent float32 buffer: it is never saved with the heads (it comes from the
    backbone's config) and never cast to bfloat16 (imprecise at long positions).
    """

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.attention_scaling = float(attention_scaling)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) long -> cos, sin (B, T, hs) float32."""
        freqs = positions[..., None].float() * self.inv_freq.float()  # (B, T, hs/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hs)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, n, T, hs) by cos/sin (B, T, hs): ``x cos + rotate_half(x) sin`` (in x's dtype, as Llama)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, hs)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def positions_from_mask(mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """Positions (B, T) counting real tokens only (left padding gets 0), as the backbone's ``position_ids``."""
    if mask is None:
        return torch.arange(T, device=device).expand(B, T)
    return position_ids_from_mask(mask)


def attention_mask_4d(mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True = may attend: causal, padding keys hidden, the diagonal always kept.

    Keeping the diagonal gives left-padding queries one key, so no row is all masked (no NaN); their
    outputs are ignored downstream.
    """
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)
    if mask is None:
        return causal.expand(B, 1, T, T)
    keys = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return (causal & keys) | eye  # (B, 1, T, T)


class CausalBlock(nn.Module):
    """Pre-norm transformer block: causal self-attention (optionally rotary, grouped-query) then a SwiGLU MLP.

    Defaults (reinlm's ``cpu``/``large`` blocks): nkv = nh, hs = D / nh, MLP width 8D/3, eps 1e-6. A Llama
    decoder layer (CoLA's blocks) is the same block with the backbone's widths, RoPE and eps. The query, key
    and value projections are one fused ``qkv`` Linear (rows: nh*hs queries, nkv*hs keys, nkv*hs values).
    """

    def __init__(self, d: int, n_heads: int, n_kv_heads: int = 0, head_dim: int = 0, ffn: int = 0,
                 eps: float = 1e-6):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads or n_heads
        self.head_dim = head_dim or d // n_heads
        self.norm1, self.norm2 = RMSNorm(d, eps), RMSNorm(d, eps)
        self.qkv = nn.Linear(d, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.mlp = SwiGLU(d, ffn or 8 * d // 3, d)

    def qkv_heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, T, D) -> q (B, nh, T, hs), k, v (B, nkv, T, hs); q and k rotated when ``rope`` = (cos, sin)."""
        B, T, _ = x.shape
        hs, nh, nkv = self.head_dim, self.n_heads, self.n_kv_heads
        q, k, v = self.qkv(self.norm1(x)).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (z.view(B, T, nkv, hs).transpose(1, 2) for z in (k, v))  # (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def finish(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn: torch.Tensor) -> torch.Tensor:
        """Attention of q over keys/values k, v (B, nkv, S, hs) under ``attn`` (B, 1, T, S), then the MLP."""
        B, T, _ = x.shape
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn,
                                           enable_gqa=self.n_kv_heads != self.n_heads)  # (B, nh, T, hs)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, -1))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, attn: torch.Tensor, rope=None) -> torch.Tensor:
        q, k, v = self.qkv_heads(x, rope)
        return self.finish(x, q, k, v, attn)


@dataclass
class StackCache:
    """Keys/values of every block of a :class:`CausalStack` in buffers of C positions: k[i], v[i] (B, nkv, C, hs).

    Rows are in the caller's batch order; :meth:`select` drops rows (finished sequences), :meth:`repeat` makes
    G copies of each row (one prompt prefilled once, sampled G times).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    def select(self, keep: torch.Tensor) -> "StackCache":
        """Keep rows ``keep`` (b,) long, in that order."""
        return StackCache([t[keep] for t in self.k], [t[keep] for t in self.v])

    def repeat(self, G: int) -> "StackCache":
        """Row i -> rows i*G .. i*G+G-1."""
        return StackCache([t.repeat_interleave(G, 0) for t in self.k], [t.repeat_interleave(G, 0) for t in self.v])

    repeat_interleave = repeat  # the name transformers' caches use (``batch_repeat_interleave``)

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0] if self.k else 0


def prefill_blocks(blocks, x: torch.Tensor, mask: torch.Tensor, capacity: int,
                   rotary: RotaryEmbedding | None = None) -> tuple[torch.Tensor, StackCache]:
    """Causal ``blocks`` over x (N, P, D) under ``mask`` (N, P) (left padding), keeping every block's keys/values
    (rotated when ``rotary``) in buffers of ``capacity`` >= P positions. -> (output (N, P, D), cache)."""
    N, P = x.shape[:2]
    attn = attention_mask_4d(mask, N, P, x.device)  # (N, 1, P, P)
    rope = rotary(positions_from_mask(mask, N, P, x.device)) if rotary is not None else None
    ks, vs = [], []
    for blk in blocks:
        q, k, v = blk.qkv_heads(x, rope)  # k, v (N, nkv, P, hs)
        kb = k.new_zeros(N, blk.n_kv_heads, capacity, blk.head_dim)
        vb = torch.zeros_like(kb)
        kb[:, :, :P], vb[:, :, :P] = k, v
        ks.append(kb)
        vs.append(vb)
        x = blk.finish(x, q, k, v, attn)
    return x, StackCache(ks, vs)


def step_blocks(blocks, x: torch.Tensor, key_mask: torch.Tensor, cache: StackCache, t: int,
                rotary: RotaryEmbedding | None = None) -> torch.Tensor:
    """One new position t per row through causal ``blocks``: x (b, 1, D), ``key_mask`` (b, t+1) over positions
    0..t (1 = real) -> (b, 1, D); writes position t of ``cache``. The query sees the unmasked keys <= t and
    itself (as :func:`attention_mask_4d`); its rotary position is the number of real tokens before t."""
    attn = key_mask.bool().clone()
    attn[:, t] = True
    attn = attn[:, None, None, :]  # (b, 1, 1, t+1)
    rope = rotary(key_mask[:, :t].long().sum(-1, keepdim=True)) if rotary is not None else None  # (b, 1) positions
    for blk, kb, vb in zip(blocks, cache.k, cache.v):
        q, k, v = blk.qkv_heads(x, rope)  # (b, nh|nkv, 1, hs)
        kb[:, :, t: t + 1], vb[:, :, t: t + 1] = k, v
        x = blk.finish(x, q, kb[:, :, : t + 1], vb[:, :, : t + 1], attn)
    return x


class CausalStack(nn.Module):
    """[``Linear(H -> D)``], causal blocks, norm, ``Linear(D -> K)``: per-position action logits from h.

    ``input_proj=False`` (CoLA) needs D = H. ``rotary``: the backbone's RoPE (positions count real tokens, as the
    backbone's). Inputs are cast to the heads' dtype (float32 or bfloat16); logits come back float32.
    """

    def __init__(self, hidden: int, d: int, n_heads: int, layers: int, num_actions: int, *, n_kv_heads: int = 0,
                 head_dim: int = 0, ffn: int = 0, eps: float = 1e-6, input_proj: bool = True, bias: bool = True,
                 rotary: RotaryEmbedding | None = None):
        super().__init__()
        if not input_proj and d != hidden:
            raise ValueError(f"a stack without input projection needs d_model = hidden size, got {d} != {hidden}")
        self.inp = nn.Linear(hidden, d, bias=bias) if input_proj else nn.Identity()
        self.blocks = nn.ModuleList(CausalBlock(d, n_heads, n_kv_heads, head_dim, ffn, eps) for _ in range(layers))
        self.norm = RMSNorm(d, eps)
        self.out = nn.Linear(d, num_actions, bias=bias)
        self.rotary = rotary

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def embed_input(self, h: torch.Tensor) -> torch.Tensor:
        """What the blocks read: ``inp(h)`` in the heads' dtype, (B, T, H) -> (B, T, D). A stack that owns its
        token embeddings (BWArea's, :mod:`reinlm.latent.bwarea`) overrides this to embed token ids (B, T)."""
        return self.inp(h.to(self.dtype))

    def _rope(self, positions: torch.Tensor):
        return self.rotary(positions) if self.rotary is not None else None

    def features(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) -> (B, T, D) float32: the last block's normalised output (a value head can read it)."""
        return self._features(h, mask).float()

    def _features(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = h.shape[:2]
        attn = attention_mask_4d(mask, B, T, h.device)
        rope = self._rope(positions_from_mask(mask, B, T, h.device))
        x = self.embed_input(h)  # (B, T, D)
        for block in self.blocks:
            x = block(x, attn, rope)
        return self.norm(x)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self._features(h, mask)).float()  # (B, T, K)

    # ---------------------------------------------------------------- incremental (generation)

    @torch.no_grad()
    def prefill(self, h: torch.Tensor, mask: torch.Tensor | None, capacity: int) -> tuple[StackCache, torch.Tensor]:
        """Run over the prompt states h (N, P, H) with ``mask`` (N, P) (left padding), keeping every block's
        keys/values (rotated when RoPE is on) in buffers of ``capacity`` >= P positions.

        Returns (cache, logits of the last position (N, K) float32). Same arithmetic as :meth:`forward`, which
        the RL update uses to recompute log-probs.
        """
        N, P = h.shape[:2]
        if mask is None:
            mask = torch.ones(N, P, dtype=torch.long, device=h.device)
        x, cache = prefill_blocks(self.blocks, self.embed_input(h), mask, capacity, self.rotary)  # (N, P, D)
        return cache, self.out(self.norm(x[:, -1])).float()  # (N, K)

    @torch.no_grad()
    def step(self, h: torch.Tensor, key_mask: torch.Tensor, cache: StackCache, t: int) -> torch.Tensor:
        """One new position t per row: h (b, 1, H), ``key_mask`` (b, t+1) over positions 0..t (1 = real)
        -> logits (b, K) float32; writes position t of ``cache`` (whose rows match h's).

        The query sees the unmasked keys <= t and itself (as :func:`attention_mask_4d`); its rotary position is
        the number of real tokens before t (as the backbone's ``position_ids``).
        """
        x = step_blocks(self.blocks, self.embed_input(h), key_mask, cache, t, self.rotary)  # (b, 1, D)
        return self.out(self.norm(x[:, 0])).float()  # (b, K)


def idm_step_logits(idm: CausalStack, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """IDM action logits for steps 0..T-2: the action of step t is read at position t+1.

    h_t has seen tokens <= t; the action of step t "explains" token t+1, so it is computed from the causal
    stack's output at position t+1 (which has seen h_0..h_{t+1}, hence token t+1, and nothing later).
    CoLA does the same (``x_action[:, :-1] = x_action[:, 1:]``). (B, T, H) -> (B, T-1, K).
    """
    return idm(h, mask)[:, 1:]  # (B, T-1, K)


class MergeBlock(nn.Module):
    """``s <- s + SwiGLU([norm(s); c])`` with c = codebook(a) (B, T, H); ``norm=False``: CoLA's block (no norm)."""

    def __init__(self, hidden: int, d_ff: int, norm: bool = True, eps: float = 1e-6, zero_out: bool = True):
        super().__init__()
        self.norm = RMSNorm(hidden, eps) if norm else nn.Identity()
        self.ff = SwiGLU(2 * hidden, d_ff, hidden, zero_out=zero_out)

    def forward(self, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return s + self.ff(torch.cat([self.norm(s), c], dim=-1))  # (B, T, H)


READOUTS = ("state", "cola")


class WorldModel(nn.Module):
    """Action codebook plus merge blocks: (h, action) -> the state the frozen LM head reads.

    ``readout="cola"`` needs ``final_norm``, the backbone's own final norm ``ln_f`` (kept as a plain attribute,
    so it is neither trained nor saved with the heads).
    """

    def __init__(self, hidden: int, num_actions: int, layers: int, d_ff: int, *, norm: bool = True,
                 eps: float = 1e-6, readout: str = "state", final_norm: nn.Module | None = None):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout: got {readout!r}; allowed: {', '.join(READOUTS)}")
        if readout == "cola" and final_norm is None:
            raise ValueError("readout 'cola' needs the backbone's final norm")
        self.num_actions = num_actions
        self.readout = readout
        self.codebook = nn.Linear(num_actions, hidden, bias=False)  # weight (H, K)
        self.blocks = nn.ModuleList(MergeBlock(hidden, d_ff, norm, eps) for _ in range(layers))
        self.__dict__["final_norm"] = final_norm  # not a submodule: frozen, part of the backbone

    @property
    def dtype(self) -> torch.dtype:
        return self.codebook.weight.dtype

    def embed(self, action: torch.Tensor) -> torch.Tensor:
        """Integer actions (...,) -> codes (..., H); float one-hots (..., K) go through the Linear (keeps
        the straight-through gradient)."""
        if action.is_floating_point():
            return self.codebook(action.to(self.dtype))
        return F.embedding(action, self.codebook.weight.t())

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """h (B, T, H), action (B, T) long or (B, T, K) one-hot -> state (B, T, H) for the LM head:
        ``s`` (readout "state") or ``ln_f(s) - h`` (readout "cola"); float32 when the heads are."""
        c = self.embed(action)
        h = h.to(self.dtype)
        s = h
        for block in self.blocks:
            s = block(s, c)
        if self.readout == "cola":
            return self.final_norm(s).to(s.dtype) - h
        return s


def straight_through_gumbel(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Gumbel-softmax sample with a straight-through one-hot (Jang et al. 2017): the forward pass is a
    hard one-hot, the backward pass the soft sample's gradient. (..., K) -> (..., K)."""
    return F.gumbel_softmax(logits.float(), tau=tau, hard=True)


def sample_actions(logits: torch.Tensor, u: torch.Tensor | None = None, *, greedy: bool = False, tau: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The one action sampler of latent code: one action per step from the policy's logits (..., K) -> (...) long.

    Temperature ``tau``, then top-k / top-p (:func:`reinlm.rollout.sampling.choose`, the token sampler's
    conventions: an inverse-CDF draw from one uniform per step); ``greedy`` takes the argmax. ``u`` (...,): the
    uniforms to use (drawn from ``generator`` when None). Generation draws its actions through the same
    ``choose`` (a :class:`~reinlm.rollout.sampling.Chooser` in :mod:`reinlm.latent.stepper`).
    """
    shape, K = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, K)
    if not greedy and u is None:
        u = torch.rand(flat.shape[0], generator=generator, device=flat.device)
    idx, _ = choose(flat, None if greedy else u.reshape(-1).to(flat.device), temperature=tau, top_k=top_k,
                    top_p=top_p, greedy=greedy)
    return idx.view(shape)
