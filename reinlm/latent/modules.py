"""The heads of a latent-action model: inverse dynamics, action codebook, world model, policy.

Every head reads the frozen backbone's final *normalised* hidden state h (DESIGN.md section 4; the CoLA card
uses "the embeddings from the final block" of Llama-3.1-8B). Legend:

    B = batch, T = positions, H = backbone hidden size, D = head width (``d_model``), K = actions,
    V = vocabulary, F = merge-block inner width.

- :class:`CausalStack`: ``Linear(H -> D)``, causal pre-norm transformer blocks, ``Linear(D -> K)``.
  The policy is one; the IDM is one whose output is shifted by a position (:func:`idm_step_logits`).
- :class:`WorldModel`: codebook ``Linear(K -> H, no bias)`` and residual merge blocks
  ``s <- s + SwiGLU([norm(s); codebook(a)])`` starting from ``s = h``. The last projection of each block
  is zero-initialised, so an untrained world model reproduces the backbone's next-token distribution
  exactly; the frozen LM head reads ``s`` directly (``h`` is already normalised: re-applying the final
  norm would scale twice, see docs/latent.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reinlm.rollout.token import inverse_cdf_sample


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (as in Llama)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


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
    """Pre-norm transformer block: causal self-attention then a SwiGLU MLP (inner width 8D/3)."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp = SwiGLU(d, 8 * d // 3, d)

    def forward(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(D, dim=-1)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn)  # (B, nh, T, hs)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


class CausalStack(nn.Module):
    """``Linear(H -> D)``, causal blocks, norm, ``Linear(D -> K)``: per-position action logits from h."""

    def __init__(self, hidden: int, d: int, n_heads: int, layers: int, num_actions: int):
        super().__init__()
        self.inp = nn.Linear(hidden, d)
        self.blocks = nn.ModuleList(CausalBlock(d, n_heads) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.out = nn.Linear(d, num_actions)

    def features(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) -> (B, T, D): the last block's normalised output (a value head can read it)."""
        B, T, _ = h.shape
        attn = attention_mask_4d(mask, B, T, h.device)
        x = self.inp(h)  # (B, T, D)
        for block in self.blocks:
            x = block(x, attn)
        return self.norm(x)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.features(h, mask))  # (B, T, K)


def idm_step_logits(idm: CausalStack, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """IDM action logits for steps 0..T-2: the action of step t is read at position t+1.

    h_t has seen tokens <= t; the action of step t "explains" token t+1, so it is computed from the causal
    stack's output at position t+1 (which has seen h_0..h_{t+1}, hence token t+1, and nothing later).
    (B, T, H) -> (B, T-1, K).
    """
    return idm(h, mask)[:, 1:]  # (B, T-1, K)


class MergeBlock(nn.Module):
    """``s <- s + SwiGLU([norm(s); c])`` with c = codebook(a) (B, T, H); zero-initialised output."""

    def __init__(self, hidden: int, d_ff: int):
        super().__init__()
        self.norm = RMSNorm(hidden)
        self.ff = SwiGLU(2 * hidden, d_ff, hidden, zero_out=True)

    def forward(self, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return s + self.ff(torch.cat([self.norm(s), c], dim=-1))  # (B, T, H)


class WorldModel(nn.Module):
    """Action codebook plus merge blocks: (h, action) -> the state the frozen LM head reads."""

    def __init__(self, hidden: int, num_actions: int, layers: int, d_ff: int):
        super().__init__()
        self.num_actions = num_actions
        self.codebook = nn.Linear(num_actions, hidden, bias=False)  # weight (H, K)
        self.blocks = nn.ModuleList(MergeBlock(hidden, d_ff) for _ in range(layers))

    def embed(self, action: torch.Tensor) -> torch.Tensor:
        """Integer actions (...,) -> codes (..., H); float one-hots (..., K) go through the Linear (keeps
        the straight-through gradient)."""
        if action.is_floating_point():
            return self.codebook(action)
        return F.embedding(action, self.codebook.weight.t())

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """h (B, T, H), action (B, T) long or (B, T, K) one-hot -> state (B, T, H)."""
        c = self.embed(action)
        s = h
        for block in self.blocks:
            s = block(s, c)
        return s


def straight_through_gumbel(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Gumbel-softmax sample with a straight-through one-hot (Jang et al. 2017): the forward pass is a
    hard one-hot, the backward pass the soft sample's gradient. (..., K) -> (..., K)."""
    return F.gumbel_softmax(logits.float(), tau=tau, hard=True)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf. (..., K) -> (..., K)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the first token that crosses top_p
        drop = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(logits: torch.Tensor, greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, generator: torch.Generator | None = None, u: torch.Tensor | None = None):
    """Draw one index per row from ``logits`` (N, C) -> (index (N,), log-prob (N,), probs (N, C)).

    The log-prob and probabilities are those of the temperature-scaled, filtered distribution that was
    sampled (greedy: the temperature-scaled distribution, index = argmax). ``u`` (N,): the uniform draws to
    use (drawn from ``generator`` when None).
    """
    scaled = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = scaled.softmax(-1)  # (N, C)
    if greedy:
        idx = scaled.argmax(-1)
    else:
        # inverse-CDF draw from one uniform per row: torch.multinomial costs ~20x more on a 49k vocabulary on CPU
        if u is None:
            u = torch.rand(probs.shape[0], generator=generator, device=probs.device)
        idx = inverse_cdf_sample(probs, u.to(probs.device))
    logp = scaled.log_softmax(-1).gather(-1, idx[:, None]).squeeze(-1)
    return idx, logp, probs


def categorical_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi || pi_ref) over the K actions (no sampling estimator): (..., K), (..., K) -> (...).

    Latent RL (issue 6) penalises the policy's drift from the frozen behaviour-cloned policy with this at every
    step; with K = 64 the sum is cheap.
    """
    logp, logq = logits.float().log_softmax(-1), ref_logits.float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)
