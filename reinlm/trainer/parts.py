"""The trainer's parts, built from its config (:class:`~reinlm.trainer.loop.Trainer` calls these in order): this
process's place in the run, the prompts, the rewards, the policy and its prompt strings, the optimiser.

Data and rewards come before any model, so bad input fails fast; the checks of lengths need the tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import torch

from reinlm.algorithms.controllers import AdaptiveKLController, ConstantKLController
from reinlm.data import held_out_line, load_prompts, render_prompts
from reinlm.data.prompts import PromptSet
from reinlm.errors import ConfigError, ReinlmError
from reinlm.progress import note
from reinlm.rewards import parse_reward_spec
from reinlm.rewards.combine import apply_reward_weights, parse_reward_weights
from reinlm.rewards.precheck import check_reward_inputs
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.episodes import synthetic_rows
from reinlm.trainer.latent_policy import LatentPolicy
from reinlm.trainer.optim import lr_lambda, make_adamw, optimizer_steps_per_step
from reinlm.trainer.policy import Policy
from reinlm.trainer.teacher import check_completions
from reinlm.trainer.token_policy import TokenPolicy
from reinlm.utils.distributed import destroy_process_group_at_exit
from reinlm.utils.fsdp import accelerate_fsdp
from reinlm.utils.rng import seed_everything


class Processes(NamedTuple):
    """This process's place in a data-parallel run (one process: rank 0 of 1)."""

    accelerator: Any
    device: torch.device
    rank: int
    world: int
    is_main: bool


def start_processes(cfg: TrainConfig, accelerator: Any) -> tuple[TrainConfig, Processes]:
    """This process's place in the run, and the run seed set. Returns the config (``accelerate launch`` with an
    FSDP config turns on ``--sharding fsdp``) and the processes."""
    from accelerate import Accelerator  # third-party, slow to import: only when a trainer is built

    accelerator = accelerator or Accelerator(cpu=(cfg.device == "cpu" or not torch.cuda.is_available()))
    procs = Processes(accelerator, accelerator.device, accelerator.process_index, accelerator.num_processes,
                      accelerator.is_main_process)
    if procs.world > 1:
        destroy_process_group_at_exit()
    if procs.world > 1 and cfg.sharding != "fsdp" and accelerate_fsdp(accelerator):
        # `accelerate launch` with an FSDP config: reinlm shards the model itself (FSDP2, one unit per decoder
        # layer); checked and recorded in config.yaml as --sharding fsdp
        cfg = dataclasses.replace(cfg, sharding="fsdp")
        if procs.is_main:
            note("accelerate's FSDP config: training with --sharding fsdp (FSDP2, full shard, one unit per "
                 "decoder layer); the config's other FSDP settings are not read.")
    if cfg.batch_prompts % procs.world:
        raise ConfigError(f"batch_prompts: got {cfg.batch_prompts} with {procs.world} processes; allowed: a "
                          "multiple of the number of processes (each process takes whole prompt groups).")
    seed_everything(cfg.seed)
    return cfg, procs


class Prompts(NamedTuple):
    """All prompts, the training prompts and the held-out prompts (the training prompts when none are held out:
    the same object)."""

    full: PromptSet
    train: PromptSet
    held_out: PromptSet


def split_prompts(cfg: TrainConfig, prompt_set: PromptSet | None, environment: Any, is_main: bool) -> Prompts:
    """The prompts (given, or ``--prompts``), split into training and held-out prompts (``--held-out-fraction``)."""
    if prompt_set is None and environment is not None and cfg.prompts == "builtin:reviews":
        prompt_set = synthetic_rows(cfg.env.env_rows)
    full = prompt_set if prompt_set is not None else load_prompts(cfg.prompts, column=cfg.prompt_column,
                                                                 rename=cfg.rename_columns)
    if cfg.held_out_fraction > 0 and cfg.eval_prompts > 0 and len(full) >= 2:  # --eval-prompts 0: none held out
        train, held_out = full.split(cfg.held_out_fraction, cfg.seed)
    else:
        train, held_out = full, full
    if len(train) == 0:
        raise ConfigError(f"prompts: {cfg.prompts!r} left no training prompts after holding out "
                          f"{cfg.held_out_fraction:.0%}; give more prompts or a smaller --held-out-fraction.")
    if is_main:
        n_held = 0 if held_out is train else len(held_out)
        note(held_out_line(len(full), n_held, cfg.held_out_fraction, cfg.eval_prompts))
    return Prompts(full, train, held_out)


def build_rewards(cfg: TrainConfig, reward_set: Any, prompts: PromptSet, environment: Any) -> tuple[Any, Any]:
    """The reward set (given, or ``--reward`` with ``--reward-weights``), checked against the prompts' columns
    before any model loads, and the LLM critic (None without one)."""
    reward_set = reward_set if reward_set is not None else parse_reward_spec(cfg.reward, on_error=cfg.reward_on_error)
    weights = parse_reward_weights("reward_weights", cfg.reward_weights)
    if weights is not None:  # TRL's reward_weights: one per term of the SPEC (or of the given reward set)
        reward_set = apply_reward_weights(reward_set, weights)
    env_cols = ["environments"] if environment is not None else []  # reward functions get the instances
    check_reward_inputs(reward_set, [*prompts.columns, *env_cols])
    check_completions(prompts, cfg.distill.lmbda)  # --lmbda < 1 needs dataset completions
    critic = cfg.llm_critic.build() if (cfg.llm_critic.critic or cfg.llm_critic.critic_url) else None
    return reward_set, critic


def make_policy(cfg: TrainConfig, device: torch.device, *, model: Any = None, tokenizer: Any = None,
                with_value_head: bool = False) -> Policy:
    """The policy of ``cfg.space`` (:class:`~reinlm.trainer.policy.Policy`)."""
    if cfg.space == "token":
        return TokenPolicy(cfg, device, model=model, tokenizer=tokenizer, with_value_head=with_value_head)

    return LatentPolicy(cfg, device, with_value_head=with_value_head)


def prompt_texts(cfg: TrainConfig, prompts: Prompts, tokenizer: Any) -> tuple[list[str], list[str]]:
    """The training and held-out prompts as the policy's strings (conversational prompts and
    ``--chat-template`` rendered), before any rollout."""
    kw = cfg.chat_template_kwargs
    train = render_prompts(prompts.train.prompts, tokenizer, cfg.chat_template, template_kwargs=kw)
    held = (train if prompts.held_out is prompts.train
            else render_prompts(prompts.held_out.prompts, tokenizer, cfg.chat_template, template_kwargs=kw))
    return train, held


def tis_level(cfg: TrainConfig, policy: Policy) -> Literal["none", "token", "sequence"]:
    """``--tis``; auto: correct the mismatch exactly when the rollouts come from another numeric path."""
    if cfg.algorithm.tis != "auto":
        return cfg.algorithm.tis
    return "none" if policy.rollout_logprobs_exact else "token"


def check_lengths(cfg: TrainConfig, policy: Policy, texts: list[str]) -> None:
    """``--max-new-tokens`` and the longest prompt fit the model's context (ConfigError otherwise)."""
    tok = policy.tokenizer
    context = policy.context_length
    max_new_tokens = cfg.sampling.max_new_tokens
    if max_new_tokens >= context:
        raise ConfigError(f"max_new_tokens: got {max_new_tokens}; allowed: fewer than the model's "
                          f"context of {context} tokens.")
    longest = max(len(tok(p)["input_ids"]) for p in texts)
    if longest + max_new_tokens > context:
        raise ConfigError(f"prompts: the longest prompt has {longest} tokens, which with max_new_tokens "
                          f"{max_new_tokens} exceeds the model's context of {context}; shorten "
                          "the prompts or lower --max-new-tokens.")


class Optimisation(NamedTuple):
    """What updates the policy: sharding (FSDP), AdamW, the learning-rate schedule, the KL controller."""

    sharded: bool
    sharded_module: Any  # the FSDP-wrapped module (None: not sharded)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    kl_ctl: AdaptiveKLController | ConstantKLController


def build_optimisation(cfg: TrainConfig, policy: Policy, world: int, accelerator: Any) -> Optimisation:
    """AdamW over the policy's trainable parameters, the learning-rate schedule (stepped per optimiser step:
    trainer/optim.py), DDP or FSDP (which shards the model first: the optimiser then
    holds only this process's shards), the KL controller."""
    sharded = cfg.sharding == "fsdp" and world > 1
    sharded_module = policy.shard() if sharded else None
    params = policy.trainable_parameters()
    if not params:
        raise ReinlmError("the policy has no trainable parameters.")
    optimizer = make_adamw(params, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, optimizer_steps_per_step(cfg, world)))
    if world > 1 and not sharded:
        policy.wrap_for_ddp(accelerator)
    kl = cfg.kl
    kl_ctl = (AdaptiveKLController(kl.kl_coef, kl.kl_target, kl.kl_horizon) if kl.kl_target is not None
              else ConstantKLController(kl.kl_coef))
    return Optimisation(sharded, sharded_module, optimizer, scheduler, kl_ctl)
