"""The policy interface between the training loop and an action space, written down.

Dimension legend: B = sequences, R = response steps (tokens, or latent actions; one token per step either
way), K = actions when the action space is small enough to hold whole distributions (latent space).

The loop is the same for every space: it only calls the methods below. Two implementations:
:class:`reinlm.trainer.token_policy.TokenPolicy` (the LM itself, its frozen reference, an optional value head)
and :class:`reinlm.trainer.latent_policy.LatentPolicy` (a small policy over K latent actions on a frozen
backbone, its frozen behaviour-cloned copy, the exact categorical KL). Nothing in the loop tests which one it
holds; what differs (sample-based vs exact KL, which frozen model measures perplexity) lives behind these
methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from reinlm.rollout.token import RolloutBatch


@dataclass
class PolicyScores:
    """What one scoring pass of a policy (or of its frozen reference) gives for the response steps of a batch."""

    logp: torch.Tensor  # (B, R) log-prob of each taken token / action at the sampling temperature
    entropy: torch.Tensor | None = None  # (B, R) entropy of the distribution each step was drawn from
    values: torch.Tensor | None = None  # (B, R) value estimates (when asked for and the policy has a value head)
    dist: torch.Tensor | None = None  # (B, R, K) whole log-distributions, when the space is small (latent), else None

    def select(self, idx: torch.Tensor | list[int]) -> PolicyScores:
        """The rows ``idx`` of every tensor."""
        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return PolicyScores(self.logp[idx], rows(self.entropy), rows(self.values), rows(self.dist))


@runtime_checkable
class Policy(Protocol):
    """What the training loop needs from a policy, in any action space."""

    tokenizer: Any  # a Hugging Face tokenizer: decodes completions and gives token spans

    @property
    def value_head(self) -> torch.nn.Module | None:
        """The value head, checkpointed alongside the policy (None without one)."""
        ...

    @property
    def context_length(self) -> int:
        """The longest prompt + completion the policy can take, in tokens."""
        ...

    @property
    def eos_token_ids(self) -> list[int]:
        """Every token id that ends a completion (a completion of full length without one was truncated)."""
        ...

    @property
    def rollout_logprobs_exact(self) -> bool:
        """Whether ``batch.logprobs`` come from the training forward's own numerics (same weights, dtype and
        kernels, equal within 1e-4). When False (a bfloat16 rollout copy, vLLM) the loop recomputes them with
        :meth:`score` before the update, for the ratio's denominator and the mismatch correction."""
        ...

    # --- sampling ---
    def rollout(self, prompts: list[str], samples_per_prompt: int, seeds: list[int],
                greedy: bool = False) -> RolloutBatch:
        """G samples per prompt (one seed per prompt: a prompt's samples do not depend on the rest of the
        batch), with ``logprobs`` the sampler's log-probs; ``greedy`` takes the most likely step instead."""
        ...

    # --- scoring ---
    def score(self, batch: RolloutBatch, need_values: bool = False, need_dist: bool = False) -> PolicyScores:
        """The training forward over ``batch`` (with gradients): logp, entropy, values if asked, and the whole
        log-distributions (B, R, V) if ``need_dist`` (token space: distillation)."""
        ...

    def reference(self, batch: RolloutBatch) -> PolicyScores | None:
        """The frozen reference's scores of ``batch`` (no gradients); None when there is no KL anchor."""
        ...

    def rollout_kl(self, batch: RolloutBatch, ref: PolicyScores | None, estimator: str,
                   old: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-step KL (B, R) of the policy that sampled to the reference (None when ``ref`` is None).
        ``old``: the trainer's log-probs of the batch at the sampling parameters (default ``batch.logprobs``)."""
        ...

    def kl_loss(self, batch: RolloutBatch, scores: PolicyScores, ref: PolicyScores) -> torch.Tensor:
        """Per-step KL (B, R) of the current policy to the reference, differentiable (the KL as a loss term)."""
        ...

    def reference_perplexity(self, batch: RolloutBatch, ref: PolicyScores | None,
                             mask: torch.Tensor) -> float | None:
        """Perplexity of the sampled tokens (``mask`` (B, R): the tokens counted) under the frozen reference LM,
        when it comes for free (else None)."""
        ...

    def action_stats(self, batch: RolloutBatch) -> dict[str, float]:
        """Per-step metrics of the actions themselves (latent space: how many of the K actions the batch used;
        empty in token space)."""
        ...

    @torch.no_grad()
    def frozen_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probs (B, R) of the response tokens under the frozen starting language model."""
        ...

    @torch.no_grad()
    def eval_kl(self, batch: RolloutBatch) -> torch.Tensor:
        """Summed KL of each sample to the starting policy, (B,) (held-out evaluation)."""
        ...

    def token_spans(self, batch: RolloutBatch) -> list[list[tuple[int, int]]]:
        """Character (start, end) of each response token in its completion string."""
        ...

    # --- optimisation ---
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        ...

    def backward(self, accelerator: Any, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (through ``accelerator`` when the modules are wrapped for DDP)."""
        ...

    def wrap_for_ddp(self, accelerator: Any) -> None:
        """Wrap the trainable modules for data-parallel gradient averaging."""
        ...

    def shard(self) -> torch.nn.Module:
        """``--sharding fsdp``: shard the trainable module across the processes (before the optimiser is built);
        returns it (the optimiser state's gathers are keyed by its parameter names)."""
        ...

    def gather_state(self) -> None:
        """Collective under FSDP (every process calls it): gather the whole trainable state that the main process's
        next :meth:`save` / :meth:`save_final` writes; a no-op when nothing is sharded."""
        ...

    def step_metrics(self) -> dict[str, float]:
        """Metrics the policy measured during this step (each returned once), merged into the step's metrics:
        e.g. ``mismatch/ref_logp_abs``, the error a bfloat16 reference adds, at the first step."""
        ...

    def after_optimizer_step(self) -> None:
        """Called by the loop after every optimiser step: the weights just changed (a rollout copy in another
        dtype, or a vLLM engine, must be refreshed before the next rollout)."""
        ...

    # --- persistence ---
    def save(self, out_dir: str | Path) -> None:
        """A checkpoint of the trainable state."""
        ...

    def save_final(self, out_dir: str | Path) -> None:
        """A model directory that ``reinlm generate --model`` loads."""
        ...

    def load(self, ckpt_dir: str | Path) -> None:
        """Load what :meth:`save` wrote."""
        ...
