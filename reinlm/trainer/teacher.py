"""On-policy distillation in the trainer: the frozen teacher and GKD's mix of on-policy and dataset steps.

- :class:`Teacher`: the teacher model (``--teacher``), frozen, in ``--frozen-dtype``; it scores the tokens of the
  step's batch (the student's samples) as whole next-token log-distributions at the sampling temperature. A
  teacher whose tokenizer differs from the student's is refused (the divergence compares distributions over one
  vocabulary, token by token).
- :func:`on_policy_step`: GKD's coin (Agarwal et al. 2024, algorithm 1; TRL's ``GKDTrainer.training_step``):
  with probability ``--lmbda`` a step trains on the student's samples, otherwise on the dataset's completions;
  seeded per step, so every process and a resumed run draw the same.
- :func:`dataset_batch`: a step's batch from the dataset's completions (the prompt file's ``completion``
  column), shaped like a rollout batch so the rest of the step is unchanged.

The loss is :mod:`reinlm.algorithms.distill`'s; ``--algo distill`` is :mod:`reinlm.algorithms.onpolicy_distill`.

Dimension legend: B = sequences, P = prompt tokens, R = response tokens, V = vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reinlm.errors import ConfigError
from reinlm.hub import load_causal_lm
from reinlm.rollout.token import RolloutBatch, encode_prompts, make_batch, pad_token_id, token_logprobs
from reinlm.trainer.config import TrainConfig
from reinlm.utils.devices import cast_parameters
from reinlm.utils.rng import step_seed

COMPLETION_COLUMN = "completion"  # TRL's prompt-completion datasets


def _vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def check_same_vocabulary(name: str, teacher_model: Any, teacher_tok: Any, student_model: Any,
                          student_tok: Any) -> None:
    """ConfigError unless teacher and student share the tokenizer (same token -> id map) and output size."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        differ = sum(1 for t, i in tv.items() if sv.get(t) != i) + sum(1 for t in sv if t not in tv)
        raise ConfigError(f"teacher: {name!r} has another tokenizer than the student ({len(tv)} vs {len(sv)} "
                          f"tokens, {differ} differ); allowed: a teacher with the student's tokenizer (the "
                          "distillation loss compares the two next-token distributions id by id).", field="teacher")
    if _vocab_size(teacher_model) != _vocab_size(student_model):
        raise ConfigError(f"teacher: {name!r} predicts over {_vocab_size(teacher_model)} token ids, the student "
                          f"over {_vocab_size(student_model)}; allowed: a teacher with the student's vocabulary.",
                          field="teacher")


class Teacher:
    """The frozen teacher of on-policy distillation (module docstring).

    ``model``/``tokenizer`` may be given (tests, notebooks); otherwise ``cfg.distill.teacher`` is loaded.
    """

    def __init__(self, cfg: TrainConfig, policy: Any, device: torch.device, model: Any = None, tokenizer: Any = None):
        """``policy``: the student (a token-space policy: its ``model`` and ``tokenizer`` are compared)."""
        student_model, student_tokenizer = policy.model, policy.tokenizer
        name = cfg.distill.teacher or "the given teacher"
        if model is None:
            model, tokenizer = load_causal_lm(str(cfg.distill.teacher), device=str(device), dtype=cfg.dtype)
        check_same_vocabulary(name, model, tokenizer or student_tokenizer, student_model, student_tokenizer)
        self.model = cast_parameters(model.to(device), cfg.frozen_dtype_name).eval().requires_grad_(False)
        self.temperature = cfg.sampling.temperature

    @torch.no_grad()
    def log_dist(self, batch: RolloutBatch) -> torch.Tensor:
        """The teacher's next-token log-distributions at each response position, (B, R, V) float32."""
        R = batch.response_ids.shape[1]
        dist = token_logprobs(self.model, batch.input_ids, batch.attention_mask, R, self.temperature,
                              return_dist=True).dist
        assert dist is not None
        return dist


def on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """Whether ``step`` trains on the student's samples: True with probability ``lmbda`` (seeded by the step)."""
    if lmbda >= 1.0:
        return True
    if lmbda <= 0.0:
        return False
    return bool(np.random.default_rng(step_seed(seed, step, 11)).random() < lmbda)


def check_completions(prompts: Any, lmbda: float) -> None:
    """ConfigError when ``--lmbda`` < 1 asks for dataset completions the prompt set (a PromptSet) does not have."""
    if lmbda < 1.0 and prompts.completions is None:
        source, have = prompts.source, ", ".join(["prompt", *prompts.columns])
        raise ConfigError(f"lmbda: got {lmbda} with prompts {source!r}, which has no {COMPLETION_COLUMN!r} column "
                          f"(columns: {have}); allowed: 1.0 (always the student's samples), or a prompt file with "
                          f"a {COMPLETION_COLUMN!r} column (the off-policy steps train on it).", field="lmbda")


def completion_text(value: Any) -> str:
    """A dataset completion as text: a string, or the contents of a list of ``{role, content}`` messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    raise ConfigError(f"{COMPLETION_COLUMN}: got {type(value).__name__}; allowed: a string or a list of messages.")


def dataset_batch(model: Any, tokenizer: Any, prompts: list[str], completions: list[Any], max_new_tokens: int,
                  eos_id: int, pad_id: int, temperature: float) -> RolloutBatch:
    """A batch of one dataset completion per prompt (B = len(prompts)), each ended by EOS and cut to
    ``max_new_tokens``; its ``logprobs`` are the model's own at ``temperature`` (one no-grad forward), as a
    sampler's would be. ``prompts`` are rendered prompt strings, ``completions`` the column's values."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, pad_id)
    rows = [(tokenizer(completion_text(c), add_special_tokens=False)["input_ids"] + [eos_id])[:max_new_tokens]
            for c in completions]
    R = max(len(r) for r in rows)
    response = torch.full((len(rows), R), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), R), dtype=torch.long)
    for i, r in enumerate(rows):
        response[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    prompt_ids, prompt_mask, response, mask = (t.to(device) for t in (prompt_ids, prompt_mask, response, mask))
    with torch.no_grad():
        logp = token_logprobs(model, torch.cat([prompt_ids, response], 1), torch.cat([prompt_mask, mask], 1), R,
                              temperature).logp
    return make_batch(tokenizer, prompts, 1, prompt_ids, prompt_mask, response, mask, logp, temperature, pad_id)


class DatasetSteps:
    """GKD's off-policy steps (``--lmbda`` < 1): :meth:`__call__` gives the dataset's batch for a step that the
    coin sends off-policy, None for an on-policy step (the student samples as usual)."""

    def __init__(self, cfg: TrainConfig, policy: Any, prompts: Any):
        """``prompts`` carry a ``completion`` column (``check_completions``, run by the trainer before any model
        loads)."""
        self.cfg = cfg
        self.policy = policy
        self.completions = prompts.completions

    def __call__(self, step: int, prompt_idx: list[int], texts: list[str]) -> RolloutBatch | None:
        """The batch of step ``step`` for the prompts ``prompt_idx`` (rendered as ``texts``), or None."""
        cfg = self.cfg
        if on_policy_step(cfg.seed, step, cfg.distill.lmbda):
            return None
        tok = self.policy.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else self.policy.eos_token_ids[0]
        pad = pad_token_id(tok, self.policy.eos_token_ids)
        model = getattr(self.policy.model, "module", self.policy.model)
        return dataset_batch(model, tok, texts, [self.completions[i] for i in prompt_idx],
                             cfg.sampling.max_new_tokens, eos, pad, cfg.sampling.temperature)
