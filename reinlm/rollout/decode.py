"""The decode engine: the one KV-cached generation loop of reinlm.

Token rollouts, latent-action generation, the self-sampling cache of latent pretraining, the QD protocol,
evaluation sampling and the local critic all run :func:`decode`. What differs between them is a
*stepper* (what one forward is) and its *choosers* (how the next token or action is picked and its
log-prob recorded, :mod:`reinlm.rollout.sampling`):

- :class:`LMStepper`: a Hugging Face causal LM (token rollouts, evaluation, critic). With
  ``record_hidden=True`` it runs the backbone and the LM head separately and keeps the final normalised
  hidden state of every fed position (the "backbone only" stepper of the self-sampling cache).
- ``reinlm.latent.stepper.LatentStepper``: backbone + policy (action) + world model (token).
- ``reinlm.rollout.turn_cache.TurnStepper``: an ``LMStepper`` whose prefill continues each episode's key/value
  cache kept from its earlier turns (multi-turn episodes prefill only the new observation).

Legend: N = distinct prompts, G = samples per prompt, B = N * G rows, P = prompt length (left-padded),
S = max new tokens, b = rows still going, H = hidden size, C = categories (vocabulary or actions).

The loop (:func:`decode`): the steppers prefill the N distinct prompts once and repeat their caches G
times; all uniforms are drawn up front (sampling convention 4); each step the stepper picks one token
per live row, the engine records it, checks the stop rules and feeds the token back. Rows that stop
leave every cache, so later steps run only on the rows still going.

**Stopping convention.** A row stops after the token that is one of the stop ids (EOS by default) or that
completes a stop string; that token is part of the response (mask 1), everything after it is padding
(``pad_id``, mask 0, log-prob 0). A stopped row is dropped from the caches before the next forward, except
that a stepper recording hidden states (``records_states``) first feeds the stop token once more, so
its state is kept (the inverse dynamics model needs the state that has seen EOS). The last step's token
(step S - 1) is never fed: nothing reads its state.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from reinlm.rollout.sampling import Chooser, draw_uniforms

__all__ = ["DecodeResult", "LMStepper", "Stepper", "decode", "position_ids_from_mask", "hf_cache_kwarg"]


# ----------------------------------------------------------------------------------------------- HF helpers
def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: p_t = (sum_{s<=t} m_s) - 1, clamped at 0. (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def hf_cache_kwarg(model: Any) -> str:
    """Name of the KV-cache keyword of ``model.forward``: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    for m in (model, getattr(model, "get_base_model", lambda: None)()):
        if m is not None and "cache" in inspect.signature(m.forward).parameters:
            return "cache"
    return "past_key_values"


def _returned_cache(out: Any, kwarg: str) -> Any:
    cache = getattr(out, kwarg, None)
    return cache if cache is not None else out.past_key_values


# ----------------------------------------------------------------------------------------------- result
@dataclass
class DecodeResult:
    """What :func:`decode` produced for the B = N * G rows (rows ``i*G .. i*G+G-1`` continue prompt i)."""

    tokens: torch.Tensor  # (B, R) chosen tokens, ``pad_id`` after a row stopped; R = longest response
    logprobs: torch.Tensor  # (B, R) recorded log-probs (sampling convention 5), 0 after a row stopped
    lengths: torch.Tensor  # (B,) response length, the stop token included
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-step records of the stepper, (B, R)
    states: dict[str, torch.Tensor] = field(default_factory=dict)  # what the stepper kept, e.g. hidden (B, P+R, H)

    @property
    def mask(self) -> torch.Tensor:
        """(B, R) 1 on real response tokens (the stop token included)."""
        R = self.tokens.shape[1]
        return (torch.arange(R, device=self.lengths.device)[None, :] < self.lengths[:, None]).long()


# ----------------------------------------------------------------------------------------------- steppers
class Stepper(Protocol):
    """What :func:`decode` calls (:class:`LMStepper` is one; ``reinlm.latent.stepper.LatentStepper`` and
    ``reinlm.rollout.turn_cache.TurnStepper`` too). ``context()``, entered around the loop, is optional."""

    n_streams: int  # uniform columns per step
    records_states: bool  # the stop token is fed once more, so its state is kept

    def start(self, ids: torch.Tensor, mask: torch.Tensor, G: int, capacity: int) -> None: ...
    def choose(self, t: int, rows: torch.Tensor, u: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]: ...
    def feed(self, tok: torch.Tensor, rows: torch.Tensor, t: int) -> None: ...
    def keep(self, idx: torch.Tensor) -> None: ...
    def finish(self, R: int) -> dict[str, torch.Tensor]: ...


class LMStepper:
    """One forward of a Hugging Face causal LM per step, with its KV cache; the chooser picks the token.

    Args:
        model: a ``*ForCausalLM`` (eval mode) taking ``position_ids`` and a transformers ``Cache``.
        chooser: :class:`~reinlm.rollout.sampling.Chooser` for the next token.
        record_hidden: keep the final normalised hidden state of every fed position, as ``states["hidden"]``
            (B, P + R, H) (the backbone runs without its LM head, which is applied to the last position).
        fused: single-token steps of a bfloat16 Llama-family model on a CPU run :class:`reinlm.rollout.fused.
            FusedDecoder` (fused packed projections, a float32 key/value buffer); False, or a model it does not
            support, keeps the Hugging Face step.

    A stepper's protocol (what :func:`decode` calls): ``n_streams`` (uniform columns per step),
    ``records_states``, ``start(ids, mask, G, capacity)``, ``choose(t, rows, u) -> (token, logp, extras)``,
    ``feed(token, rows, t)``, ``keep(idx)``, ``finish(R) -> states``, optionally ``context()`` (a context
    manager entered around the loop; here: :func:`reinlm.rollout.fast.decode_attention_on`).
    """

    def __init__(self, model: Any, chooser: Chooser, record_hidden: bool = False, fused: bool = True) -> None:
        from reinlm.rollout.fused import fused_decoder

        self.model = model
        self.chooser = chooser
        self.records_states = bool(record_hidden)
        self.n_streams = 1 if chooser.uses_uniforms else 0
        self._kw = hf_cache_kwarg(model.base_model if record_hidden else model)
        self._head: torch.nn.Module | None = model.get_output_embeddings() if record_hidden else None
        self.fused = fused_decoder(model) if fused else None
        self.cache: Any = None  # the transformers Cache (None while the fused decoder holds the keys and values)
        self.seen: torch.Tensor | None = None  # (b, V) bool: the tokens of each row so far (repetition penalty)

    def context(self) -> contextlib.AbstractContextManager[None]:
        """Entered by :func:`decode` around the whole loop: single-token steps use the decode attention."""
        from reinlm.rollout.fast import decode_attention_on

        return decode_attention_on(self.model)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any = None,
                 last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """-> (logits of the last position (b, V), hidden (b, T, H) or None, cache)."""
        if self._head is not None:  # records_states: the backbone, then the LM head on the last position
            out = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                        **{self._kw: cache})
            h: torch.Tensor = out.last_hidden_state  # (b, T, H)
            return self._head(h[:, -1]), h, _returned_cache(out, self._kw)
        # the last position as an index tensor, not the int 1: a slice hands the LM head a non-contiguous input,
        # which a frozen bfloat16 head on the CPU runs as a batched matmul copying its weight once per row
        # (SmolLM2-135M, 8 rows: 7.8 s against 0.018 s; token_logprobs does the same)
        kw = {"logits_to_keep": torch.tensor([ids.shape[1] - 1], device=ids.device)} if last_only else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{self._kw: cache}, **kw)
        logits: torch.Tensor = out.logits[:, -1]
        return logits, None, _returned_cache(out, self._kw)

    def past(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """What the prefill of ``ids`` (N, P) continues: -> (cache or None, key mask (N, L + P), positions (N, P)).

        Here nothing (L = 0, positions skip the left padding); ``reinlm.rollout.turn_cache.TurnStepper``
        returns the keys and values an episode kept from its earlier turns."""
        return None, mask, position_ids_from_mask(mask)

    def start(self, ids: torch.Tensor, mask: torch.Tensor, G: int, capacity: int) -> None:
        """Prefill the N distinct prompts (N, P) once (after :meth:`past`'s L cached positions), then repeat
        the caches G times; ``capacity`` counts P + new tokens (the L cached positions come on top)."""
        N = ids.shape[0]
        B = N * G
        past, mask, pos = self.past(ids, mask)  # mask (N, L + P), pos (N, P)
        P = mask.shape[1]
        capacity += P - ids.shape[1]
        logits, h, cache = self._forward(ids, mask, pos, past, last_only=True)
        if G > 1:
            cache.batch_repeat_interleave(G)  # (N, ...) -> (B, ...)
            logits = logits.repeat_interleave(G, 0)
        self.cache, self.logits, self.P = cache, logits, P  # logits (b, V)
        if self.fused is not None:  # single-token steps from here on: the fused decoder's own buffers
            self.fused.begin(cache, capacity)
            self.cache = None
        self.attn = torch.cat([mask.repeat_interleave(G, 0), mask.new_ones(B, capacity - P)], dim=1)  # (b, cap)
        self.next_pos = pos[:, -1:].repeat_interleave(G, 0) + 1  # (b, 1)
        if self.records_states and h is not None:
            self.hidden = h.new_zeros(B, capacity, h.shape[-1])  # (B, cap, H)
            self.hidden[:, :P] = h.repeat_interleave(G, 0)
        self.seen = None
        if self.chooser.repetition_penalty != 1.0:
            seen = torch.zeros(N, logits.shape[-1], dtype=torch.bool, device=ids.device)
            real = mask[:, mask.shape[1] - ids.shape[1]:].bool()  # (N, P): the fed ids that are not padding
            seen[real.nonzero()[:, 0], ids[real]] = True
            self.seen = seen.repeat_interleave(G, 0)

    def choose(self, t: int, rows: torch.Tensor, u: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        tok, logp = self.chooser(self.logits, None if u is None else u[:, 0], rows, seen=self.seen)
        return tok, logp, {}

    def feed(self, tok: torch.Tensor, rows: torch.Tensor, t: int) -> None:
        P = self.P
        if self.seen is not None:
            self.seen[torch.arange(tok.shape[0], device=tok.device), tok] = True
        h: torch.Tensor | None
        if self.fused is not None:
            h = self.fused.step(tok, self.next_pos[:, 0], self.attn[:, : P + t + 1])  # (b, H)
            self.logits = self.fused.logits(h)
            h = h[:, None]
        else:
            self.logits, h, self.cache = self._forward(tok[:, None], self.attn[:, : P + t + 1], self.next_pos,
                                                       self.cache)
        if self.records_states and h is not None:
            self.hidden[rows, P + t] = h[:, 0]
        self.next_pos = self.next_pos + 1

    def keep(self, idx: torch.Tensor) -> None:
        if self.fused is not None:
            self.fused.select(idx)
        else:
            self.cache.batch_select_indices(idx)
        self.logits, self.attn, self.next_pos = self.logits[idx], self.attn[idx], self.next_pos[idx]
        if self.seen is not None:
            self.seen = self.seen[idx]

    def finish(self, R: int) -> dict[str, torch.Tensor]:
        return {"hidden": self.hidden[:, : self.P + R]} if self.records_states else {}


# ----------------------------------------------------------------------------------------------- the loop
def decode(stepper: Stepper, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, samples_per_prompt: int = 1,
           max_new_tokens: int, stop_ids: Sequence[int] | torch.Tensor | None = None, pad_id: int = 0,
           generator: torch.Generator | Sequence[torch.Generator] | None = None,
           stop_check: Callable[[torch.Tensor], torch.Tensor] | None = None,
           on_step: Callable[[int, int], None] | None = None) -> DecodeResult:
    """Generate up to ``max_new_tokens`` tokens for each of the N * G rows with ``stepper``.

    Args:
        stepper: an :class:`LMStepper` or any object with the stepper protocol (see :class:`LMStepper`).
        prompt_ids, prompt_mask: (N, P) distinct prompts, left-padded, on the stepper's device.
        samples_per_prompt: G (each prompt is prefilled once; its caches are repeated G times).
        max_new_tokens: S.
        stop_ids: ids that end a row (a list, a 1-D tensor, or ``None``/empty: no stop token).
        pad_id: the token written after a row stopped.
        generator: ``None``, one ``torch.Generator``, or one per prompt (sampling convention 4).
        stop_check: optional ``fn(tokens (b, t+1)) -> (b,) bool``: whether each live row's response so far
            ends with a stop string (called every step on the live rows).
        on_step: optional ``fn(t, live_rows)`` called after every step (progress bars).

    Returns a :class:`DecodeResult`; tensors are ordinary (not inference-mode) tensors, R <= S columns.
    """
    N, P = prompt_ids.shape
    G, S = int(samples_per_prompt), int(max_new_tokens)
    B, device = N * G, prompt_ids.device
    streams = int(stepper.n_streams)
    u = None
    if streams:  # (B, streams * S): stream j of step t is column j * S + t
        u = draw_uniforms(generator, N, G, streams * S).to(device)
    stops = torch.as_tensor(list(stop_ids) if stop_ids is not None and not torch.is_tensor(stop_ids) else
                            (stop_ids if stop_ids is not None else []), dtype=torch.long, device=device)
    context = getattr(stepper, "context", contextlib.nullcontext)
    with torch.inference_mode(), context():
        stepper.start(prompt_ids, prompt_mask, G, P + S)
        tokens = torch.full((B, S), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(B, S, device=device)
        lengths = torch.full((B,), S, dtype=torch.long, device=device)
        extras: dict[str, torch.Tensor] = {}
        active = torch.arange(B, device=device)  # rows still going, in cache order
        cols = torch.arange(streams, device=device) * S
        R = 0
        for t in range(S):
            tok, lp, ext = stepper.choose(t, active, None if u is None else u[active[:, None], cols + t])
            tokens[active, t], logprobs[active, t] = tok, lp
            for name, v in ext.items():
                if name not in extras:
                    extras[name] = torch.full((B, S), -1, dtype=v.dtype, device=device)
                extras[name][active, t] = v
            R = t + 1
            if on_step is not None:
                on_step(t, int(active.numel()))
            stop = torch.isin(tok, stops) if stops.numel() else torch.zeros_like(tok, dtype=torch.bool)
            if stop_check is not None:
                stop |= stop_check(tokens[active, : t + 1])
            if t == S - 1:
                break
            n_stop = int(stop.sum())
            if n_stop:
                lengths[active[stop]] = t + 1
            if stepper.records_states:  # the stop token's state is kept: feed first, then drop
                stepper.feed(tok, active, t)
            if n_stop == active.numel():
                break
            if n_stop:
                keep = (~stop).nonzero().squeeze(1)
                stepper.keep(keep)
                active, tok = active[keep], tok[keep]
            if not stepper.records_states:
                stepper.feed(tok, active, t)
        states = stepper.finish(R)
    # outside inference mode: clone into ordinary tensors (usable in autograd later)
    lengths = lengths.clamp(max=R).clone()
    mask = torch.arange(R, device=device)[None, :] < lengths[:, None]
    tokens = tokens[:, :R].clone()
    logprobs = (logprobs[:, :R] * mask).clone()
    return DecodeResult(tokens=tokens, logprobs=logprobs, lengths=lengths,
                        extras={k: v[:, :R].clone() for k, v in extras.items()},
                        states={k: v.clone() for k, v in states.items()})
