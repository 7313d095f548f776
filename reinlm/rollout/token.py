"""Token-space rollouts: sampled completions of a causal LM as a :class:`RolloutBatch`.

Dimension legend: N = distinct prompts, G = samples per prompt, B = N * G sequences,
P = prompt length (left-padded), R = response length (right-padded), T = P + R, V = vocabulary,
H = hidden size.

Generation runs the decode engine (:mod:`reinlm.rollout.decode`: one prefill of the N distinct prompts,
caches repeated G times, finished rows dropped) with the sampling conventions of
:mod:`reinlm.rollout.sampling`. In particular ``RolloutBatch.logprobs`` holds
``log softmax(logits / temperature)[token]`` of the full-vocabulary distribution, taken **before** top-k /
top-p filtering, in the rollout model's dtype. That is exactly what :func:`sequence_logprobs` recomputes in
one teacher-forced forward, so with the same weights and dtype the PPO/GRPO ratio starts at 1 (tested to
1e-4) and the KL estimators see the same distribution for policy and reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Sequence, TypeVar, overload

import torch

from reinlm.errors import ConfigError, ReinlmError
from reinlm.rollout.decode import LMStepper, decode, position_ids_from_mask
from reinlm.rollout.sampling import Chooser, SamplingConfig, draw_uniforms, inverse_cdf_sample  # noqa: F401 (re-exported)

__all__ = [
    "SamplingConfig",
    "RolloutBatch",
    "ResponseScores",
    "generate_rollouts",
    "sequence_logprobs",
    "token_logprobs",
    "token_char_spans",
    "decode_completions",
    "position_ids_from_mask",
]


_B = TypeVar("_B", bound="RolloutBatch")


# ----------------------------------------------------------------------------------------------- batch
@dataclass
class RolloutBatch:
    """One batch of sampled completions (docs/architecture.md, "rollout")."""

    prompt_ids: torch.Tensor  # (B, P) left-padded prompt tokens
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, R) sampled tokens, pad after the stop
    response_mask: torch.Tensor  # (B, R) 1 on real response tokens, the real EOS included
    logprobs: torch.Tensor  # (B, R) sampling log-probs at the sampling temperature (0 on padding)
    group_ids: torch.Tensor  # (B,) index of the prompt each sequence answers
    prompts: list[str]  # len B
    completions: list[str]  # len B, decoded response (special tokens skipped)
    temperature: float = 1.0  # the temperature the log-probs were taken at
    pad_token_id: int = 0

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt followed by response: (B, P + R)."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """Mask of :attr:`input_ids`: (B, P + R)."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def prompt_lengths(self) -> torch.Tensor:
        """Real prompt tokens per sequence: (B,)."""
        return self.prompt_mask.sum(-1)

    @property
    def response_lengths(self) -> torch.Tensor:
        """Real response tokens per sequence (EOS included): (B,)."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def to(self: _B, device: torch.device | str) -> _B:
        """A copy with every tensor on ``device``."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device)
        return type(self)(**kw)

    def select(self: _B, indices: Sequence[int] | torch.Tensor) -> _B:
        """The sub-batch of the rows ``indices`` (list of ints or a 1-D index tensor), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        rows = idx.tolist()
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v[idx.to(v.device)]
            elif isinstance(v, list):
                kw[k] = [v[i] for i in rows]
        return type(self)(**kw)


# ----------------------------------------------------------------------------------------------- helpers
def _model_device(model: Any) -> torch.device:
    try:
        device: torch.device = next(model.parameters()).device
        return device
    except StopIteration:
        return torch.device("cpu")


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    for src in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return sorted(ids)


def pad_token_id(tokenizer: Any, eos: list[int]) -> int:
    """The id that pads prompts and responses (the one rule): the tokenizer's pad token, else the first id that
    ends a completion (``eos``: :func:`eos_ids`), else 0. Padded positions are masked; the id only has to exist."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)


def encode_prompts(tokenizer: Any, prompts: list[str], pad_id: int,
                   add_special_tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize and left-pad (independent of ``tokenizer.padding_side``): -> ids (N, P), mask (N, P)."""
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            if tokenizer.bos_token_id is None:
                raise ReinlmError(f"prompts: prompt {i} ({prompts[i]!r}) is empty and the tokenizer has no BOS "
                                  "token to start from; give every prompt at least one token of text.")
            encoded[i] = [tokenizer.bos_token_id]
    return left_pad(encoded, pad_id)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> left-padded ids (N, P) and attention mask (N, P), P = the longest."""
    P = max(len(ids) for ids in seqs)
    ids_t = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask_t = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, ids in enumerate(seqs):
        if len(ids):
            ids_t[i, P - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
            mask_t[i, P - len(ids):] = 1
    return ids_t, mask_t


def context_length(model: Any) -> int | None:
    """The model's maximum sequence length (``max_position_embeddings`` or the like), None if unknown."""
    conf = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(conf, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def stop_string_checker(tokenizer: Any, stop_strings: list[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(ids (b, t)) -> (b,) bool``: whether each row's decoded response contains a stop string.

    The engine calls it every step on the live rows, which stop at the first hit, so a hit was completed by
    the last token.
    """
    def check(ids: torch.Tensor) -> torch.Tensor:
        texts = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in text for s in stop_strings) for text in texts], dtype=torch.bool,
                            device=ids.device)

    return check

# ----------------------------------------------------------------------------------------------- engine
def generate_rollouts(model: Any, tokenizer: Any, prompts: Sequence[str], samples_per_prompt: int = 1,
                      sampling: SamplingConfig | None = None,
                      generator: torch.Generator | Sequence[torch.Generator] | None = None) -> RolloutBatch:
    """Sample ``samples_per_prompt`` completions for every prompt with the decode engine.

    Args:
        model: a Hugging Face causal LM (any ``*ForCausalLM`` taking ``position_ids`` and a ``Cache``).
            Put it in eval mode first; it is not changed. Its dtype is the rollout dtype (the log-probs
            are recorded in it, computed in float32 from its logits).
        tokenizer: its tokenizer (a pad token is optional; EOS is used when it has none).
        prompts: N prompt strings.
        samples_per_prompt: G; rows ``i * G .. i * G + G - 1`` answer prompt ``i`` (``group_ids == i``).
        sampling: :class:`SamplingConfig` (defaults when ``None``).
        generator: ``None`` (global torch RNG), a ``torch.Generator``, or a list of N generators (one per
            prompt: a prompt's samples then do not depend on the rest of the batch).

    Returns a :class:`RolloutBatch` of B = N * G rows, tensors on the model's device.
    """
    sampling = sampling or SamplingConfig()
    prompts = check_prompts(prompts, samples_per_prompt)
    device = _model_device(model)
    eos = eos_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, pad_id)  # (N, P)
    check_context(context_length(model), prompt_ids.shape[1], sampling.max_new_tokens)
    G = samples_per_prompt
    stepper = LMStepper(model, Chooser.from_sampling(sampling))
    out = decode(stepper, prompt_ids.to(device), prompt_mask.to(device), samples_per_prompt=G,
                 max_new_tokens=sampling.max_new_tokens, stop_ids=None if sampling.ignore_eos else eos,
                 pad_id=pad_id, generator=generator,
                 stop_check=stop_string_checker(tokenizer, sampling.stop_strings) if sampling.stop_strings else None)
    return make_batch(tokenizer, prompts, G, prompt_ids.to(device), prompt_mask.to(device), out.tokens,
                      out.mask, out.logprobs, sampling.temperature, pad_id)


def check_prompts(prompts: Sequence[str], samples_per_prompt: int) -> list[str]:
    """Validate the engine's inputs: a non-empty list of strings and G >= 1 (``ReinlmError`` / ``ConfigError``)."""
    if isinstance(prompts, str) or len(prompts) == 0 or not all(isinstance(p, str) for p in prompts):
        raise ReinlmError("prompts: expected a non-empty list of strings.")
    if isinstance(samples_per_prompt, bool) or not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise ConfigError(f"samples_per_prompt: got {samples_per_prompt!r}; allowed: an integer >= 1.")
    return list(prompts)


def check_context(ctx: int | None, prompt_len: int, max_new_tokens: int) -> None:
    """``ConfigError`` when the longest prompt plus ``max_new_tokens`` exceeds the model's context."""
    if ctx is not None and prompt_len + max_new_tokens > ctx:
        raise ConfigError(f"max_new_tokens: got {max_new_tokens}; the longest prompt has {prompt_len} tokens and "
                          f"the model's context is {ctx}, so allowed: <= {ctx - prompt_len}.")


def make_batch(tokenizer: Any, prompts: list[str], G: int, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
               response: torch.Tensor, response_mask: torch.Tensor, logprobs: torch.Tensor, temperature: float,
               pad_id: int) -> RolloutBatch:
    """A :class:`RolloutBatch` from the N distinct prompts (N, P) and the B = N * G responses (B, R)."""
    device = response.device
    batch = RolloutBatch(
        prompt_ids=prompt_ids.repeat_interleave(G, 0),
        prompt_mask=prompt_mask.repeat_interleave(G, 0),
        response_ids=response,
        response_mask=response_mask.long(),
        logprobs=logprobs * response_mask,
        group_ids=torch.arange(len(prompts), device=device).repeat_interleave(G),
        prompts=[p for p in prompts for _ in range(G)],
        completions=[],
        temperature=float(temperature),
        pad_token_id=int(pad_id),
    )
    batch.completions = decode_completions(tokenizer, response, response_mask)
    return batch

# ----------------------------------------------------------------------------------------------- decoding
def decode_completions(tokenizer: Any, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Completion strings: the real response tokens decoded with special tokens skipped. (B, R) -> len B."""
    rows = [ids[m.bool()].tolist() for ids, m in zip(response_ids.cpu(), response_mask.cpu())]
    texts: list[str] = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return texts


def token_char_spans(tokenizer: Any, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Character span (start, end) of every real response token inside its completion string.

    The completion is ``decode_completions(...)[i]``; the spans partition it in order, so
    ``"".join(text[s:e] for s, e in spans) == text``. Decoding is incremental: token k ends where the
    decoded prefix ``ids[:k+1]`` stops agreeing with the full text (a token that ends inside a multi-byte
    character, decoded as U+FFFD, ends where the previous one did; special tokens such as EOS get an
    empty span). One list per row, one span per token with mask 1. (B, R) -> B lists.
    """
    out: list[list[tuple[int, int]]] = []
    for ids, m in zip(response_ids.cpu(), response_mask.cpu()):
        real = ids[m.bool()].tolist()
        if not real:
            out.append([])
            continue
        prefixes = tokenizer.batch_decode([real[: k + 1] for k in range(len(real))], skip_special_tokens=True)
        full = prefixes[-1]
        spans, prev = [], 0
        for text in prefixes:
            end = max(prev, len(os.path.commonprefix([text, full])))
            spans.append((prev, end))
            prev = end
        spans[-1] = (spans[-1][0], len(full))
        out.append(spans)
    return out


# ----------------------------------------------------------------------------------------------- scoring
class ResponseScores(NamedTuple):
    """What one teacher-forced forward gives for the response tokens."""

    logp: torch.Tensor  # (B, R) log-prob of each response token at the temperature
    entropy: torch.Tensor | None  # (B, R) entropy of the temperature-scaled next-token distribution
    hidden: torch.Tensor | None  # (B, R, H) final hidden state at the position that predicts each token
    dist: torch.Tensor | None = None  # (B, R, V) log-softmax of the temperature-scaled next-token logits


def token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                   temperature: float = 1.0, *, return_entropy: bool = False,
                   return_hidden: bool = False, return_dist: bool = False) -> ResponseScores:
    """Log-probs of the last ``response_len`` tokens of ``input_ids`` in one forward pass (gradients flow).

    log p_t = log softmax(z_{t-1} / temperature)[x_t], where z_{t-1} are the logits at the position before
    token t; positions come from the mask, so left padding does not shift them. Only the last R + 1
    positions' logits are computed (``logits_to_keep``).

    Args:
        input_ids, attention_mask: (B, P + R), prompt left-padded, response right-padded.
        response_len: R.
        temperature: the sampling temperature.
        return_entropy: also the entropy H_t = logsumexp(z/T) - sum_v p_v z_v / T of each step.
        return_hidden: also the final hidden states (B, R, H) (for a value head on the policy trunk).
        return_dist: also the whole next-token log-distributions log softmax(z/T) (B, R, V) (distillation).
    """
    R = int(response_len)
    T = input_ids.shape[1]
    # positions as an index tensor, not the int R + 1: the gathered states are contiguous, while a slice is
    # not, and a non-contiguous 3-D input sends a frozen LM head (weights without requires_grad) down a
    # batched-matmul path that copies its weight once per row (bfloat16, 16 x 27 tokens on CPU: 1.38 s vs 0.51 s)
    keep = torch.arange(T - R - 1, T, device=input_ids.device)
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False, logits_to_keep=keep,
                output_hidden_states=return_hidden)
    scaled = out.logits[:, -R - 1:-1].float() / temperature  # (B, R, V): position t-1 predicts token t
    lse = scaled.logsumexp(-1)  # (B, R)
    targets = input_ids[:, -R:]  # (B, R)
    logp = scaled.gather(-1, targets[..., None]).squeeze(-1) - lse  # (B, R)
    entropy = None
    if return_entropy:
        entropy = lse - (torch.softmax(scaled, dim=-1) * scaled).sum(-1)  # (B, R)
    hidden = out.hidden_states[-1][:, -R - 1:-1] if return_hidden else None  # (B, R, H)
    dist = scaled - lse[..., None] if return_dist else None  # (B, R, V)
    return ResponseScores(logp, entropy, hidden, dist)


@overload
def sequence_logprobs(model: Any, batch: RolloutBatch, temperature: float | None = None, *,
                      return_entropy: Literal[False] = False) -> torch.Tensor: ...
@overload
def sequence_logprobs(model: Any, batch: RolloutBatch, temperature: float | None = None, *,
                      return_entropy: Literal[True]) -> tuple[torch.Tensor, torch.Tensor | None]: ...
def sequence_logprobs(model: Any, batch: RolloutBatch, temperature: float | None = None, *,
                      return_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Recompute ``batch.logprobs`` with ``model`` (one forward; the batch's temperature by default).

    Returns logp (B, R), or ``(logp, entropy)`` with ``return_entropy=True``. Padding positions hold
    the log-prob of the pad token: multiply by ``batch.response_mask``.
    """
    temperature = batch.temperature if temperature is None else temperature
    scores = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_ids.shape[1],
                            temperature, return_entropy=return_entropy)
    return (scores.logp, scores.entropy) if return_entropy else scores.logp
