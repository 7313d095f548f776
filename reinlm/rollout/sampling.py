"""Sampling: how one next token (or latent action) is picked from logits, and which log-prob is recorded.

This module is the one place for the sampling conventions of reinlm; every decode loop goes through
:mod:`reinlm.rollout.decode`, whose choosers call the functions here. Legend: B = rows being sampled,
S = steps, C = categories (V vocabulary tokens, or K latent actions).

Conventions (docs/benchmarks.md, "Sampling conventions", gives the same list):

1. **Temperature first.** Every distribution is ``softmax(logits / temperature)`` computed in float32,
   whatever the model's dtype.
2. **Filtering order: top-k, then top-p, then min-p** (Hugging Face's logits-processor order). Top-k keeps the
   k largest logits. Top-p (nucleus, Holtzman et al. 2020) keeps the
   smallest set of most likely tokens whose mass reaches p: a token is kept when the mass of the strictly
   more likely tokens is **below** p, so the token that crosses p stays. Min-p (Nguyen et al. 2024; HF's
   ``MinPLogitsWarper``) then drops the tokens whose probability is below min_p times the largest one.
3. **Draws are inverse-CDF draws** from one uniform u in [0, 1) per row and step: the token i with
   cdf_{i-1} <= u * total < cdf_i over the kept, unnormalised probabilities (``torch.multinomial`` costs
   ~20x more on a 49k vocabulary on CPU, and a uniform per step makes the stream easy to reason about).
4. **Randomness is drawn up front**, before the first forward: a (B, S) matrix of uniforms
   (:func:`draw_uniforms`). With one generator per prompt, prompt i's G rows come from generator i alone,
   so a prompt's samples do not depend on which other prompts share the batch (or the process); with one
   generator, the whole matrix comes from it row-major; with none, from the global RNG. A row that stops
   early simply leaves its remaining uniforms unused: stopping never shifts another row's stream.
5. **Recorded log-prob: before filtering.** ``log softmax(logits / temperature)[token]`` of the full
   distribution, also under top-k/top-p and greedy decoding. It is what a teacher-forced forward at the
   same temperature recomputes (:func:`reinlm.rollout.token.token_logprobs`), so the PPO/GRPO ratio starts
   at 1 (up to the rollout dtype). With filtering on, tokens are drawn from the truncated, renormalised
   distribution; the filtered log-prob is available as ``choose(..., filtered_logprobs=True)``.
6. **Greedy** takes the argmax of the logits (ties: the lowest index), records the log-prob at the
   temperature as above, and consumes no uniforms.
7. **Repetition penalty** (Keskar et al. 2019, CTRL, section 4.1; Hugging Face's
   ``RepetitionPenaltyLogitsProcessor``): before the temperature, each logit of a token already in the row (its
   prompt and what it generated so far) is divided by the penalty when positive and multiplied by it when
   negative. Like a filter, it changes what is drawn, not what is recorded (convention 5: the log-prob of the
   model's own distribution, which the training forward recomputes; ``filtered_logprobs`` records the
   penalised, filtered one).

The stopping convention (what happens to a row that emits EOS) lives in :mod:`reinlm.rollout.decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch

from reinlm.config.schema import Config, opt
from reinlm.errors import ConfigError, ReinlmError, required

__all__ = ["SamplingConfig", "draw_uniforms", "inverse_cdf_sample", "filter_logits", "apply_repetition_penalty",
           "choose", "Chooser"]


# ----------------------------------------------------------------------------------------------- config
@dataclass
class SamplingConfig(Config):
    """How completions are drawn (one per sample; ``samples_per_prompt`` is an argument of the engine)."""

    temperature: float = opt(1.0, "sampling temperature; log-probs are of softmax(logits / temperature)", lo=0, lo_open=True)
    top_k: int = opt(0, "keep only the k most likely tokens when sampling (0: off)", lo=0)
    top_p: float = opt(1.0, "nucleus sampling: keep the smallest set of tokens whose mass reaches p (1.0: off)", lo=0, lo_open=True, hi=1)
    min_p: float = opt(0.0, "min-p sampling: drop tokens less likely than min_p x the most likely one (0: off)",
                       lo=0, hi=1)
    repetition_penalty: float = opt(1.0, "divide the positive logits (multiply the negative ones) of tokens already in "
                                          "the prompt or the completion by this, before the temperature (1.0: off; "
                                          "HF's and TRL's repetition_penalty)", lo=0, lo_open=True)
    max_new_tokens: int = opt(64, "maximum number of generated tokens per completion", lo=1)
    stop_strings: list[str] = opt(default_factory=list,
                                  help="stop a completion after the token that completes any of these strings")
    greedy: bool = opt(False, "take the most likely token instead of sampling (log-probs still at temperature)")
    ignore_eos: bool = opt(False, "do not stop at EOS (fixed-length generation, for benchmarks)")

    def __post_init__(self) -> None:
        super().__post_init__()  # every field checked and coerced first
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        self.stop_strings = list(self.stop_strings or [])
        for s in self.stop_strings:
            if not isinstance(s, str) or s == "":
                raise ConfigError(f"stop_strings: got {s!r}; allowed: non-empty strings.")


# ----------------------------------------------------------------------------------------------- randomness
def draw_uniforms(generator: torch.Generator | Sequence[torch.Generator] | None, n_prompts: int, G: int,
                  steps: int) -> torch.Tensor:
    """Uniform draws in [0, 1) for the whole generation, taken up front (convention 4): -> (N * G, steps).

    ``generator``: ``None`` (global RNG), one ``torch.Generator`` for the batch, or a list with one generator
    per prompt (then rows ``i * G .. i * G + G - 1`` come from generator ``i`` only). The result is on the
    CPU (or the single generator's device).
    """
    if generator is None:
        return torch.rand(n_prompts * G, steps)
    if isinstance(generator, torch.Generator):
        return torch.rand(n_prompts * G, steps, generator=generator, device=generator.device)
    gens = list(generator)
    if len(gens) != n_prompts:
        raise ReinlmError(f"generator: got a list of {len(gens)} generators for {n_prompts} prompts; pass one "
                          "torch.Generator, or one per prompt.")
    return torch.cat([torch.rand(G, steps, generator=g, device=g.device).cpu() for g in gens], dim=0)


# ----------------------------------------------------------------------------------------------- draws
@overload
def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor, block: int = 512, *,
                       return_total: Literal[False] = False) -> torch.Tensor: ...
@overload
def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor, block: int = 512, *,
                       return_total: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor, block: int = 512, *,
                       return_total: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Index i with cdf_{i-1} <= u * total < cdf_i: a draw from (unnormalised) ``probs``. (B, C), (B,) -> (B,).

    For a large C the scan is two-level (the same index up to float rounding at a boundary): the mass of each
    block of ``block`` categories, a cumulative sum over the blocks, then one within the chosen block, instead
    of a (B, C) cumulative sum (15 ms for 64 x 49152 on a CPU, most of a sampling step).

    ``return_total``: also return each row's total mass (B,), summed block by block in a fixed order, so a row's
    total does not depend on how many rows share the batch.
    """
    B, C = probs.shape
    if C <= 4 * block:
        cdf = probs.cumsum(-1)  # (B, C)
        total = cdf[:, -1:]
        target = torch.minimum(u[:, None].to(cdf) * total, total * (1 - 1e-6))  # never past the last positive entry
        idx = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=C - 1)
        return (idx, total[:, 0]) if return_total else idx
    nb = -(-C // block)
    padded = (probs if nb * block == C else torch.nn.functional.pad(probs, (0, nb * block - C))).view(B, nb, block)
    block_cdf = padded.sum(-1).cumsum(-1)  # (B, nb)
    total = block_cdf[:, -1:]
    target = torch.minimum(u[:, None].to(block_cdf) * total, total * (1 - 1e-6))  # (B, 1)
    j = torch.searchsorted(block_cdf, target, right=True).clamp(max=nb - 1)  # (B, 1) the block holding the target
    before = torch.where(j > 0, block_cdf.gather(-1, (j - 1).clamp(min=0)), torch.zeros_like(target))  # (B, 1)
    inner = padded.gather(1, j[:, :, None].expand(B, 1, block))[:, 0].cumsum(-1)  # (B, block)
    k = torch.searchsorted(inner, target - before, right=True).clamp(max=block - 1)  # (B, 1)
    idx = (j * block + k).squeeze(-1)
    # never a zero-probability category (a filtered token or the padding): step back to the last positive one
    bad = probs.gather(-1, idx.clamp(max=C - 1)[:, None]).squeeze(-1) <= 0
    if bool(bad.any()):
        cdf = probs[bad].cumsum(-1)
        tot = cdf[:, -1:]
        tgt = torch.minimum(u[bad][:, None].to(cdf) * tot, tot * (1 - 1e-6))
        idx[bad] = torch.searchsorted(cdf, tgt, right=True).squeeze(-1).clamp(max=C - 1)
    idx = idx.clamp(max=C - 1)
    return (idx, total[:, 0]) if return_total else idx


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set logits outside the top-k, then the nucleus (top-p), then below min-p, to -inf (convention 2).
    (..., C) -> (..., C)."""
    C = logits.shape[-1]
    if 0 < top_k < C:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # mass of the strictly more likely tokens reaches p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Convention 7: z_i / penalty where token i was seen and z_i > 0, z_i * penalty where seen and z_i <= 0.
    logits (B, C) (computed on in float32), seen (B, C) bool -> (B, C) float32."""
    z = logits.float()
    return torch.where(seen, torch.where(z > 0, z / penalty, z * penalty), z)


def _draw_filtered(scaled: torch.Tensor, top_k: int, top_p: float, u: torch.Tensor, min_p: float = 0.0) -> torch.Tensor:
    """One draw per row from softmax(scaled) after top-k, top-p, min-p. (B, C), (B,) -> (B,).

    Same result as ``inverse_cdf_sample(softmax(filter_logits(scaled)), u)`` (up to the order of tied
    logits), computed on the sorted or top-k values only, which is cheaper on a large vocabulary.
    """
    C = scaled.shape[-1]
    if min_p > 0.0:
        return inverse_cdf_sample(torch.softmax(filter_logits(scaled, top_k, top_p, min_p), dim=-1), u)
    if top_p < 1.0:
        vals, idx = (scaled.topk(top_k, dim=-1) if 0 < top_k < C else scaled.sort(dim=-1, descending=True))
        probs = torch.softmax(vals, dim=-1)  # (B, k or C), descending
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
        return idx.gather(-1, inverse_cdf_sample(probs, u)[:, None]).squeeze(-1)
    if 0 < top_k < C:
        vals, idx = scaled.topk(top_k, dim=-1)  # (B, k)
        return idx.gather(-1, inverse_cdf_sample(torch.softmax(vals, dim=-1), u)[:, None]).squeeze(-1)
    return inverse_cdf_sample(torch.softmax(scaled, dim=-1), u)


def choose(logits: torch.Tensor, u: torch.Tensor | None, *, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, greedy: bool = False, filtered_logprobs: bool = False, min_p: float = 0.0,
           draw_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one index per row and record its log-prob (conventions 1-7). (B, C), (B,) -> (B,), (B,).

    Args:
        logits: raw logits (any float dtype; computed on in float32).
        u: (B,) uniforms in [0, 1) (ignored, may be ``None``, when ``greedy``).
        filtered_logprobs: record the log-prob of the filtered, renormalised distribution that was actually
            sampled instead of the full one (convention 5's alternative; equal when no filter is on).
        draw_logits: (B, C) the logits to draw from when they differ from the recorded ones (convention 7: the
            repetition-penalised logits); ``None``: ``logits``.

    Returns ``(index (B,) long, logp (B,) float32)``.
    """
    scaled = logits.float()  # (B, C)
    if temperature != 1.0:
        scaled = scaled / temperature
    if not greedy and u is None:
        raise ReinlmError("choose: sampling needs one uniform per row (u); got None.")
    if draw_logits is not None:
        drawn = draw_logits.float() / temperature  # (B, C)
        idx = drawn.argmax(-1) if greedy or u is None else _draw_filtered(drawn, top_k, top_p, u, min_p)
        recorded = filter_logits(drawn, top_k, top_p, min_p) if filtered_logprobs else scaled
        return idx, recorded.gather(-1, idx[:, None]).squeeze(-1) - recorded.logsumexp(-1)
    if u is not None and not greedy and not top_k and top_p >= 1.0 and min_p <= 0.0:
        # the common case: no sort, no normalisation pass
        if scaled.data_ptr() == logits.data_ptr():
            scaled = scaled.clone()  # float32 logits at temperature 1: never overwrite the caller's tensor
        m = scaled.amax(-1, keepdim=True)  # (B, 1)
        e = scaled.sub_(m).exp_()  # (B, C) unnormalised probabilities, in place: the one pass over the vocabulary
        idx, total = inverse_cdf_sample(e, u, return_total=True)
        # log softmax = log exp(z - m) - log sum exp(z - m), the sum taken block by block by the draw (not e.sum():
        # with few rows torch splits one row's sum over threads, and the rounding would then depend on how many
        # rows share the batch; a prompt's log-probs must not). A drawn token has exp(z - m) > 0.
        return idx, e.gather(-1, idx[:, None]).squeeze(-1).log() - total.log()
    idx = scaled.argmax(-1) if greedy or u is None else _draw_filtered(scaled, top_k, top_p, u, min_p)
    if filtered_logprobs and (top_k or top_p < 1.0 or min_p > 0.0):
        scaled = filter_logits(scaled, top_k, top_p, min_p)
    logp = scaled.gather(-1, idx[:, None]).squeeze(-1) - scaled.logsumexp(-1)  # (B,)
    return idx, logp


@dataclass(frozen=True)
class Chooser:
    """A sampling rule bound to its settings: ``chooser(logits (B, C), u (B,)) -> (index (B,), logp (B,))``.

    ``mode``: ``"sample"`` (temperature / top-k / top-p, convention 3), ``"greedy"`` (convention 6),
    ``"uniform"`` (every category equally likely: index = floor(u * C), logp = -log C; the CoLA card's
    random-action row) or ``"fixed"`` (the index is given per row by ``fixed``; logp 0).
    """

    mode: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    filtered_logprobs: bool = False
    fixed: torch.Tensor | None = None  # (B,) for mode "fixed", indexed by the engine's row ids
    record_logprob: bool = True  # False: greedy skips the log-softmax over C (logp returned as zeros)
    min_p: float = 0.0  # min-p filtering after top-k and top-p (0: off)
    repetition_penalty: float = 1.0  # convention 7 (1.0: off); the stepper hands over which tokens each row has seen

    @classmethod
    def from_sampling(cls, sampling: SamplingConfig) -> "Chooser":
        return cls("greedy" if sampling.greedy else "sample", float(sampling.temperature), int(sampling.top_k),
                   float(sampling.top_p), min_p=float(sampling.min_p),
                   repetition_penalty=float(sampling.repetition_penalty))

    @property
    def uses_uniforms(self) -> bool:
        """Whether the chooser reads one uniform per row and step (so the engine must draw them)."""
        return self.mode in ("sample", "uniform")

    def __call__(self, logits: torch.Tensor | None, u: torch.Tensor | None, rows: torch.Tensor | None = None,
                 num_categories: int | None = None, seen: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``seen`` (B, C) bool: the tokens each row has seen, for the repetition penalty (``None``: none).
        ``logits`` may be ``None`` for ``uniform`` (with ``num_categories``) and ``fixed``."""
        draw = (apply_repetition_penalty(logits, seen, self.repetition_penalty)
                if seen is not None and logits is not None and self.repetition_penalty != 1.0 else None)
        if self.mode == "greedy" and not self.record_logprob:
            # no softmax over the vocabulary (~9% of a latent step)
            idx = (required(logits, "chooser: logits") if draw is None else draw).argmax(-1)
            return idx, torch.zeros(idx.shape, device=idx.device)
        if self.mode in ("sample", "greedy"):
            return choose(required(logits, "chooser: logits"), u, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                          greedy=self.mode == "greedy", filtered_logprobs=self.filtered_logprobs, min_p=self.min_p,
                          draw_logits=draw)
        if self.mode == "uniform":
            C = int(num_categories if num_categories is not None else required(logits, "chooser: logits").shape[-1])
            idx = (required(u, "chooser: u") * C).long().clamp(max=C - 1)
            return idx, torch.full(idx.shape, -float(torch.log(torch.tensor(float(C)))), device=idx.device)
        if self.mode == "fixed":
            fixed = required(self.fixed, "chooser: fixed")
            idx = fixed[rows] if rows is not None else fixed
            return idx, torch.zeros(idx.shape, device=idx.device)
        raise ReinlmError(f"chooser: got mode {self.mode!r}; allowed: sample, greedy, uniform, fixed.")

