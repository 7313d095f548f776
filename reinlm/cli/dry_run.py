"""``reinlm train --dry-run``: check everything a run would check before training, print what would run, write
nothing.

Checked: every key, type and range (the config), the prompt source (loaded, columns listed), the reward SPEC
(imported, and each reward's required arguments against the dataset columns), the model and the ``--teacher``
(an embedded alias, a local directory or a Hugging Face id in the local cache), the latent model directory, and
that ``--out`` could be written (and does not hold a run a fresh start would refuse). Printed: the resolved config as ``config.yaml``
would record it, and what each TRL key of the ``--config`` file became.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from reinlm.config.build import config_to_dict
from reinlm.data import load_prompts
from reinlm.envs import resolve_environment
from reinlm.errors import ReinlmError
from reinlm.hub import resolve_model_dir
from reinlm.rewards import parse_reward_spec
from reinlm.rewards.combine import apply_reward_weights, parse_reward_weights
from reinlm.rewards.precheck import check_reward_inputs
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.loop import previous_run_outputs
from reinlm.trainer.teacher import check_completions
from reinlm.utils.outdir import check_output_dir


def _check_model(name: str, field: str = "model") -> str:
    """Where the model would load from (no weights read); ReinlmError naming ``field`` when it cannot resolve."""
    try:
        resolved = resolve_model_dir(name)
    except ReinlmError as e:  # its message names --model; say which setting it was
        if field == "model":
            raise
        raise ReinlmError(f"{field}: {str(e).split(': ', 1)[-1]}") from None
    if Path(resolved).is_dir():
        return resolved
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(resolved, "config.json")
    if isinstance(cached, str):
        return f"{resolved} (Hugging Face cache: {Path(cached).parent})"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ReinlmError(f"{field}: {name!r} is no embedded alias, no local directory and not in the Hugging Face "
                          "cache, and HF_HUB_OFFLINE is set; download it first or give a local directory.")
    return f"{resolved} (not in the Hugging Face cache: it would be downloaded)"


def dry_run(cfg: TrainConfig, config_file: str | None, resume: bool) -> int:
    """Run every check of ``reinlm train`` that needs no model weights and print the plan; returns 0."""
    out = cfg.out or cfg.default_out
    check_output_dir(out)
    if not resume:
        previous_run_outputs(out, cfg.overwrite)
    prompts = load_prompts(cfg.prompts, column=cfg.prompt_column, rename=cfg.rename_columns)
    rewards = parse_reward_spec(cfg.reward, on_error=cfg.reward_on_error)
    check_reward_inputs(rewards, prompts.columns)
    model = _check_model(cfg.model)
    weights = parse_reward_weights("reward_weights", cfg.reward_weights)
    if weights is not None:
        rewards = apply_reward_weights(rewards, weights)  # one weight per term, or the error a run would give
    if cfg.distill.teacher:  # on-policy distillation: the teacher resolves too, and --lmbda's completions exist
        model += f"; teacher: {_check_model(cfg.distill.teacher, 'teacher')}"
    check_completions(prompts, cfg.distill.lmbda)
    if cfg.env.environment:  # the SPEC, its class and tools (docs/environments.md)

        resolve_environment(cfg.env.environment, tools=cfg.env.tools, opponent=cfg.env.opponent,
                            max_tool_calling_iterations=cfg.env.max_tool_calling_iterations)
    if cfg.space == "latent" and not Path(cfg.latent).is_dir():
        raise ReinlmError(f"latent: {cfg.latent!r} is not a directory; give the --out of `reinlm latent pretrain`.")
    print("# resolved config (what config.yaml would record)")
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
    if config_file:
        lines = TrainConfig.describe_trl_keys(dict(yaml.safe_load(Path(config_file).read_text()) or {}))
        if lines:
            print(f"# TRL keys of {config_file}")
            print("\n".join(lines))
    columns = ", ".join(sorted(prompts.columns)) or "none"
    print(f"# checks passed: {len(prompts)} prompts (columns: {columns}); rewards: "
          f"{', '.join(c.name for c in rewards.components)}; model: {model}; out: {out}"
          f"{' (resumed)' if resume else ''}. Nothing was written (--dry-run).")
    return 0
