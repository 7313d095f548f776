"""Building a step's batch: joining rollouts, truncated completions, DAPO's dynamic sampling.

Dimension legend: B = sequences, G = samples per prompt, P = prompt length (left-padded), R = response length
(right-padded), T = positions with backbone states (latent batches), H = hidden size, K = actions.

Dynamic sampling (Yu et al. 2025, "DAPO", section 3.2): a group whose valid rewards all agree has zero
advantage under any group baseline, so it only dilutes the batch. :func:`select_groups` keeps the groups with
a spread; the loop samples more prompts until the step has ``batch_prompts`` such groups or a bounded number of
extra rollouts is spent, then tops the batch up with zero-spread groups (which contribute no policy gradient)
so every step, and every process, trains on the same number of sequences.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import torch

from reinlm.algorithms.groups import zero_spread
from reinlm.rollout.token import RolloutBatch

B = TypeVar("B", bound=RolloutBatch)  # a rollout batch type (token, latent, episodes)

# how each tensor field of a rollout batch is padded when batches of different lengths are joined
_LEFT = ("prompt_ids", "prompt_mask")  # aligned at the end of the prompt
_RIGHT = ("response_ids", "response_mask", "logprobs", "actions", "old_logp_all")  # aligned at the first step
_BOTH = ("hidden", "hidden_mask")  # prompt then response positions: pad left by dP and right by dR


def _pad(t: torch.Tensor, left: int, right: int, value: float) -> torch.Tensor:
    """Pad dimension 1 of ``t`` with ``left`` and ``right`` entries of ``value``."""
    if left == 0 and right == 0:
        return t
    shape = list(t.shape)
    parts = []
    if left:
        shape[1] = left
        parts.append(torch.full(shape, value, dtype=t.dtype, device=t.device))
    parts.append(t)
    if right:
        shape[1] = right
        parts.append(torch.full(shape, value, dtype=t.dtype, device=t.device))
    return torch.cat(parts, dim=1)


def concat_rollouts(batches: list[B]) -> B:
    """Join rollout batches of the same type into one, padding prompts on the left and responses on the right.

    Group ids are renumbered so that groups from different batches stay distinct. Works for
    :class:`~reinlm.rollout.token.RolloutBatch` and its subclasses (the latent batch's backbone states and
    action distributions included); a 1-D tensor field (one value per sequence) is concatenated as is.
    """
    if len(batches) == 1:
        return batches[0]
    P = max(b.prompt_ids.shape[1] for b in batches)
    R = max(b.response_ids.shape[1] for b in batches)
    out: dict[str, Any] = {}
    offset = 0
    pieces: dict[str, list[Any]] = {f.name: [] for f in dataclasses.fields(batches[0])}
    for b in batches:
        dP, dR = P - b.prompt_ids.shape[1], R - b.response_ids.shape[1]
        for f in dataclasses.fields(b):
            v = getattr(b, f.name)
            if f.name == "group_ids":
                _, idx = torch.unique(v, return_inverse=True)
                v = idx + offset
                offset = int(v.max()) + 1 if v.numel() else offset
            elif isinstance(v, torch.Tensor) and v.dim() >= 2:
                if f.name in _LEFT:
                    v = _pad(v, dP, 0, b.pad_token_id if f.name == "prompt_ids" else 0)
                elif f.name == "old_logp_all":
                    v = _pad(v, 0, dR, -math.log(v.shape[-1]))  # uniform over the K actions
                elif f.name in _RIGHT:
                    v = _pad(v, 0, dR, b.pad_token_id if f.name == "response_ids" else 0)
                elif f.name in _BOTH:
                    v = _pad(v, dP, dR, 0)
                else:
                    raise ValueError(f"concat_rollouts: no padding rule for the field {f.name!r} of shape "
                                     f"{tuple(v.shape)}")
            pieces[f.name].append(v)
    for name, vals in pieces.items():
        first = vals[0]
        if isinstance(first, torch.Tensor):
            out[name] = torch.cat(vals, dim=0)
        elif isinstance(first, list):
            out[name] = [x for v in vals for x in v]
        else:
            out[name] = first  # scalars (temperature, pad id): the same in every batch
    return type(batches[0])(**out)


def truncated_rows(batch: RolloutBatch, max_new_tokens: int, eos_ids: list[int]) -> torch.Tensor:
    """(B,) bool: completions cut at ``max_new_tokens`` without ending on an EOS token."""
    lengths = batch.response_mask.long().sum(-1)  # (B,)
    last = batch.response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)  # (B,)
    ended = torch.isin(last, torch.tensor(eos_ids, device=last.device)) if eos_ids else torch.zeros_like(lengths, dtype=torch.bool)
    cut: torch.Tensor = (lengths >= max_new_tokens) & ~ended
    return cut


def select_groups(scores: torch.Tensor, group_ids: torch.Tensor, valid: torch.Tensor) -> tuple[list[int], list[int]]:
    """Group ids (in batch order) with a spread of valid scores, and those without (module docstring)."""
    flat = zero_spread(scores, group_ids, valid)  # (B,)
    keep: list[int] = []
    drop: list[int] = []
    for g in dict.fromkeys(group_ids.tolist()):  # unique, in order
        (drop if bool(flat[group_ids == g][0]) else keep).append(g)
    return keep, drop


def rows_of_groups(group_ids: torch.Tensor, groups: list[int]) -> list[int]:
    """Row indices of the given groups, group after group in the order given."""
    ids = group_ids.tolist()
    return [i for g in groups for i, x in enumerate(ids) if x == g]
