"""The trainer's side of environments: episodes instead of completions, their scores, their credit.

The loop holds one :class:`EpisodeRunner` when ``--environment`` is set and asks it for three things: a
step's (or the evaluation's) rollouts (:meth:`EpisodeRunner.rollout`, an
:class:`~reinlm.rollout.multiturn.EpisodeBatch`), their scores (:meth:`EpisodeRunner.score`: the episode
returns, plus reward functions when given, which receive the instances as ``environments=``), and the
update's targets under ``--turn-credit`` (:meth:`EpisodeRunner.targets`). Everything else (losses, KL,
entropy, checkpoints, resume) is the loop's ordinary path: the batch's response mask is the model mask.

Seeds: the G episodes of a row share the environment seed the loop derived for that row from the run seed
and the step (``step_seed``), so a group plays one game and a resumed run replays the same games; each
episode samples from its own generator.
"""

from __future__ import annotations

import copy
import random
from typing import TYPE_CHECKING, Any

import torch

from reinlm.algorithms.base import AdvantageInputs, Algorithm, Targets
from reinlm.algorithms.turn_credit import credit_targets
from reinlm.data.prompts import PromptSet
from reinlm.envs.protocol import call_reset
from reinlm.envs.spec import EnvSpec, resolve_environment
from reinlm.envs.trl import ToolEnv
from reinlm.errors import ReinlmError, required
from reinlm.latent.turns import frozen_latent_opponent, latent_turn_stepper
from reinlm.rollout.multiturn import (Episode, EpisodeBatch, EpisodeLimits, TurnFormat, episode_metrics,
                                      episodes_to_batch, run_episodes)
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import generate_rollouts, pad_token_id
from reinlm.trainer.latent_episodes import latent_episode_batch

if TYPE_CHECKING:
    from reinlm.rewards.combine import RewardSet
    from reinlm.trainer.config import TrainConfig

__all__ = ["EpisodeRunner", "synthetic_rows"]  # the settings check: TrainConfig._check_environment


def synthetic_rows(n: int) -> PromptSet:
    """The rows of a run without a dataset: ``n`` empty prompts (each episode is reset from its seed)."""
    return PromptSet([""] * n, {}, source=f"environment seeds ({n})")


def _user_env(env: Any) -> Any:
    """The instance a reward function should see: the user's environment inside a TRL tool wrapper."""
    inner = getattr(env, "env", None) if isinstance(env, ToolEnv) else None
    return inner if inner is not None else env


class EpisodeRunner:
    """Plays a step's episodes with the policy's rollout model and turns them into the loop's inputs.

    Args:
        cfg: the TrainConfig (its ``env`` settings, sampling, ``max_new_tokens`` = the episode's model tokens).
        policy: the token policy (its rollout engine's model samples).
        spec: an :class:`~reinlm.envs.spec.EnvSpec` (None: resolved from ``cfg.env.environment``).
        reward_set: reward functions added to the return (called with ``environments=``), or None.
    """

    def __init__(self, cfg: TrainConfig, policy: Any, spec: EnvSpec | None = None,
                 reward_set: RewardSet | None = None) -> None:
        self.cfg = cfg
        self.policy = policy
        if spec is None and not cfg.env.environment:
            raise ReinlmError("environment: no --environment SPEC given and no environment spec passed.")
        self.spec = spec or resolve_environment(str(cfg.env.environment), tools=cfg.env.tools,
                                                opponent=cfg.env.opponent,
                                                max_tool_calling_iterations=cfg.env.max_tool_calling_iterations)
        self.reward_set = reward_set
        self.fmt = TurnFormat(policy.tokenizer)
        env, max_new_tokens = cfg.env, cfg.sampling.max_new_tokens
        self.limits = EpisodeLimits(max_turns=env.max_turns, turn_tokens=min(env.turn_tokens, max_new_tokens),
                                    max_completion_length=max_new_tokens, env_timeout=env.env_timeout or None,
                                    context=policy.context_length)
        self.opponent = None
        if self.spec.needs_opponent:
            self.opponent = FrozenOpponent(policy, self.fmt, cfg, self.spec.extras.get("opponent") or "frozen")

    def probe(self, rows: PromptSet) -> None:
        """Reset one environment on the first row before anything is written: a reset that raises or returns
        something other than text is bad input (``ReinlmError``, exit 2)."""
        row = self.row(rows, 0)
        env = self._make(row)
        try:
            first = call_reset(env, row, 0)
        except Exception as e:  # noqa: BLE001
            raise ReinlmError(f"environment: {self.spec.spec}: reset raised {type(e).__name__}: {e}") from e
        if first is not None and not isinstance(first, str):
            raise ReinlmError(f"environment: {self.spec.spec}: reset returned {type(first).__name__} "
                              f"({first!r:.60}); an observation must be text (str) or None.")

    @staticmethod
    def row(rows: PromptSet, i: int) -> dict[str, Any]:
        """Row ``i`` as ``reset`` gets it: its prompt (when there is one) and every column."""
        out = {k: v[i] for k, v in rows.columns.items()}
        if rows.prompts[i] != "":
            out["prompt"] = rows.prompts[i]
        return out

    def _make(self, row: dict[str, Any]) -> Any:
        env = self.spec.make(row)
        if isinstance(env, ToolEnv):  # the policy's tokenizer parses tool calls in its own format when it has one
            env.tokenizer = self.policy.tokenizer
        if self.opponent is not None and hasattr(env, "opponent"):
            env.opponent = self.opponent
        return env

    def rollout(self, rows: PromptSet, idx: list[int], G: int, seeds: list[int],
                step: int | None = None) -> EpisodeBatch:
        """Play G episodes of each row ``idx[j]`` with environment seed ``seeds[j]`` -> EpisodeBatch (``step``:
        the training step, named in errors; None in evaluations)."""
        cfg = self.cfg
        self.step = step
        row_dicts = [self.row(rows, i) for i in idx]
        envs = [self._make(r) for r in row_dicts for _ in range(G)]
        gens = [torch.Generator(device="cpu").manual_seed((s * 1_000_003 + g) % (2**63 - 1))
                for s in seeds for g in range(G)]
        s = cfg.sampling
        sampling = SamplingConfig(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                                  repetition_penalty=s.repetition_penalty,
                                  max_new_tokens=self.limits.turn_tokens)
        episodes = self._play(envs, row_dicts, seeds, G, sampling, gens)
        tok = self.policy.tokenizer
        pad = pad_token_id(tok, self.policy.eos_token_ids)
        batch = episodes_to_batch(episodes, tok, G, cfg.sampling.temperature, pad, device=self.policy.device)
        return batch if cfg.space == "token" else latent_episode_batch(self.policy, batch)

    def _play(self, envs: list[Any], rows: list[dict[str, Any]], seeds: list[int], G: int, sampling: SamplingConfig,
              gens: list[torch.Generator]) -> list[Episode]:
        """The episodes, played by the token policy's rollout model, or in latent space by the latent model's
        policy and world model (:mod:`reinlm.trainer.latent_episodes`); the sampling model in eval mode."""
        if self.cfg.space == "token":
            sampler = trained = self.policy.rollout_engine.rollout_model
            extra: dict[str, Any] = {}
        else:  # the latent model samples; its policy is the one part that is ever in train mode
            sampler, trained = self.policy.lam, self.policy.policy
            extra = dict(make_stepper=latent_turn_stepper(sampler, sampling.temperature),
                         eos=self.policy.eos_token_ids)
        was_training = trained.training
        trained.eval()
        try:
            return run_episodes(sampler, self.policy.tokenizer, envs, rows, seeds, G, sampling, self.limits, gens,
                                self.fmt, **extra)
        finally:
            trained.train(was_training)

    def score(self, batch: EpisodeBatch, raw_prompts: list[Any], columns: dict[str, list[Any]],
              **reward_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, float],
                                             dict[str, list[Any]]]:
        """-> scores (B,) (returns + reward functions), valid (B,), components, metrics, per-sample columns
        (``transcript``: each episode's turns, rewards and trained tokens, written to samples.jsonl)."""
        eps = batch.episodes
        device = batch.response_ids.device
        valid = torch.tensor([ep.valid for ep in eps], dtype=torch.bool, device=device)
        if not bool(valid.any()):
            step = getattr(self, "step", None)
            where = f" at step {step + 1}" if step is not None else " in the held-out evaluation"
            raise ReinlmError(f"environment: every episode{where} was invalid ({len(eps)} of {len(eps)}); the "
                              f"first fault: {eps[0].fault}. Check the environment, or raise --env-timeout.")
        returns = torch.tensor([ep.ret for ep in eps], dtype=torch.float32, device=device)
        components = {"env_return": returns.clone()}
        scores = returns
        if self.reward_set is not None:
            result = self.reward_set.score(raw_prompts, batch.completions,
                                           {**columns, "environments": [_user_env(ep.env) for ep in eps]},
                                           **reward_kwargs)
            valid = valid & result.valid.to(device).bool()
            scores = scores + result.total.to(device, torch.float32).nan_to_num(0.0)
            components.update({k: v.to(device).float() for k, v in result.components.items()})
        metrics = episode_metrics(eps)
        return scores * valid, valid, components, metrics, {"transcript": [ep.transcript() for ep in eps]}

    def targets(self, algorithm: Algorithm, inputs: AdvantageInputs, batch: EpisodeBatch) -> Targets:
        """The update's targets under ``--turn-credit`` (:mod:`reinlm.algorithms.turn_credit`)."""
        cfg = self.cfg
        turn_rewards = required(batch.turn_rewards, "EpisodeBatch.turn_rewards")
        return credit_targets(algorithm, inputs, required(batch.turn_ids, "EpisodeBatch.turn_ids"),
                              turn_rewards.to(inputs.mask.device),
                              cfg.env.turn_credit, cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.whiten_advantages)


class FrozenOpponent:
    """The opponent of a two-player game (``--opponent``), frozen: it answers the observations of its seat.

    ``frozen``: a copy of the starting policy (token space: the rollout model; latent space: the latent model
    with the behaviour-cloned policy, :func:`~reinlm.latent.turns.frozen_latent_opponent`); a model
    name or path: that causal LM, with its own tokenizer and chat format, in ``--frozen-dtype``.
    """

    def __init__(self, policy: Any, fmt: TurnFormat, cfg: TrainConfig, spec: str = "frozen") -> None:
        self.latent = None
        self.tok, self.fmt = policy.tokenizer, fmt
        if spec != "frozen":
            from reinlm.hub import load_causal_lm

            model, self.tok = load_causal_lm(spec, device=str(policy.device), dtype=cfg.frozen_dtype_name)
            self.model, self.fmt = model.requires_grad_(False), TurnFormat(self.tok)
        elif cfg.space == "token":
            self.model = copy.deepcopy(policy.rollout_engine.rollout_model).eval().requires_grad_(False)
        else:
            self.latent = frozen_latent_opponent(policy.lam, policy.ref_policy, cfg.sampling.temperature)
        self.sampling = SamplingConfig(temperature=cfg.sampling.temperature,
                                       max_new_tokens=min(cfg.env.turn_tokens, 32))
        self.rng = random.Random(cfg.seed)

    def __call__(self, observation: str) -> str:
        gen = torch.Generator().manual_seed(self.rng.randrange(2**31))
        ids = self.fmt.first(observation[-2000:])
        if self.latent is not None:
            return self.latent(ids, self.sampling.max_new_tokens, gen)
        prompt = self.tok.decode(ids)
        return generate_rollouts(self.model, self.tok, [prompt], 1, self.sampling, generator=gen).completions[0]
