"""``reinlm train``: RL training in token or latent space (flags = the fields of TrainConfig)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from reinlm.config.build import build_config
from reinlm.config.yamlfile import load_yaml
from reinlm.errors import ConfigError, ReinlmError
from reinlm.progress import note
from reinlm.trainer.config import TrainConfig, add_train_args
from reinlm.trainer.runlock import RunLock, is_main_process


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a policy with REINFORCE / GRPO / RLOO / PPO (token or latent space)",
        description="Train a policy with RL. Example: reinlm train --algo grpo --model smollm2-135m "
                    "--reward sentiment --prompts builtin:reviews --steps 30 --out runs/grpo. "
                    "Flags override --config YAML; --resume RUN_DIR continues a run from its newest checkpoint.",
    )
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest checkpoint "
                   "(its config.yaml is the base; flags such as --steps override it)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything (keys, types, files, rewards importable, model resolvable, --out), print "
                        "the resolved config and what each TRL key became, write nothing, exit 0")
    add_train_args(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve defaults < run's saved config (resume) < --config YAML < flags (YAML strict: unknown keys,
    wrong types and TRL keys without a reinlm meaning are errors naming the file)."""
    layers = []
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ReinlmError(f"resume: {args.resume!r} is not a run directory (no config.yaml); pass the --out "
                              "directory of an earlier `reinlm train`.")
        try:
            values = load_yaml(saved, what="resume")
        except ConfigError as e:
            raise ReinlmError(f"{e} The run's settings are unknown, so it cannot resume with them (a crash or a "
                              f"full disk while config.yaml was written leaves it so); copy the config.yaml of "
                              f"its newest checkpoint ({run_dir / 'checkpoints'}/step-N/config.yaml) over it.") from None
        values["out"] = args.resume
        layers.append(values)
    layers.append(load_yaml(args.config))
    return build_config(TrainConfig, args, layers)


def run(args: argparse.Namespace) -> int:
    import contextlib

    from reinlm.trainer.loop import Trainer

    cfg = config_from_args(args)
    if getattr(args, "dry_run", False):
        from reinlm.cli.dry_run import dry_run

        return dry_run(cfg, args.config, bool(args.resume))
    out = cfg.out or cfg.default_out
    if args.config and not args.resume:
        _say_what_trl_keys_became(args.config)
    # one writer per run directory, taken (and --out checked for writability) before any model loads
    with RunLock(out) if is_main_process() else contextlib.nullcontext():
        if not args.resume:  # refuse a used --out before loading any model
            from reinlm.trainer.loop import previous_run_outputs

            previous_run_outputs(out, cfg.overwrite)
        trainer = Trainer(cfg)
        run_dir = trainer.train(resume=bool(args.resume))
    summary_path = run_dir / "train_eval.json"
    if summary_path.is_file() and trainer.is_main:
        ev = json.loads(summary_path.read_text())
        before, after = ev.get("before", {}), ev.get("after", {})
        if before and after:
            print(f"held-out reward: {before.get('reward_mean', float('nan')):.4f} -> {after.get('reward_mean', float('nan')):.4f}"
                  f"   distinct-2: {before.get('distinct_2', float('nan')):.3f} -> {after.get('distinct_2', float('nan')):.3f}"
                  f"   KL to reference: {after.get('kl_to_reference', float('nan')):.3f}")
        print(f"run directory: {run_dir}   final model: {run_dir / 'final'}")
    return 0


def _say_what_trl_keys_became(config_file: str) -> None:
    """Once at the start of a fresh run: each TRL key of the config file, the reinlm setting it became and the
    table's note (where reinlm's own default differs, this is where the user sees it)."""
    lines = TrainConfig.describe_trl_keys(dict(yaml.safe_load(Path(config_file).read_text()) or {}))
    if lines and is_main_process():
        note(f"TRL keys in {config_file} (docs/trl-migration.md):\n" + "\n".join(f"  {x}" for x in lines))
