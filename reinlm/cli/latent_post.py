"""``reinlm latent finetune`` (action-guided fine-tuning, FTA-I / FTA-P) and ``reinlm latent train-q`` (the
Q-model over latent actions for ``reinlm search``). Flags are the fields of FinetuneConfig / QTrainConfig. The
commands (:func:`train_q`: rollouts, reward and model from the config; the output directory) and their text
(:func:`format_result`, :func:`format_q_result`) live here; the library code they call is
:mod:`reinlm.latent.finetune` and :mod:`reinlm.latent.qmodel`."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config, config_to_dict
from reinlm.config.flags import add_dataclass_args
from reinlm.config.yamlfile import load_yaml
from reinlm.errors import ReinlmError
from reinlm.latent.finetune import FinetuneConfig, finetune
from reinlm.latent.model import LatentActionModel
from reinlm.latent.qmodel import (QTrainConfig, rollouts_from_rows, sample_rollouts, score_rollouts,
                                  train_on_rollouts)
from reinlm.rewards import parse_reward_spec
from reinlm.utils.jsonio import read_jsonl_objects
from reinlm.utils.outdir import check_output_dir
from reinlm.utils.rng import seed_everything


def add_post_parsers(sub) -> None:
    """Register ``finetune`` and ``train-q`` under ``reinlm latent``."""
    ft = sub.add_parser("finetune", help="action-guided fine-tuning on a task corpus (FTA-I / FTA-P), then re-clone "
                                         "the policy",
                        description="Example: reinlm latent finetune --latent runs/latent --data reviews.jsonl "
                                    "--mode fta-i --out runs/latent-fta. Prints held-out NLL and BC accuracy "
                                    "before/after; OUT is a latent model directory.")
    ft.add_argument("--config", help="YAML file of these fields (flags override it)")
    ft.add_argument("--json", action="store_true", help="print finetune.json instead of the table")
    add_dataclass_args(ft, FinetuneConfig)
    tq = sub.add_parser("train-q", help="offline double-DQN Q-model over latent actions (for `reinlm search`)",
                        description="Example: reinlm latent train-q --latent runs/latent --reward sentiment "
                                    "--prompts builtin:reviews --out runs/q. Samples and scores rollouts (or reads "
                                    "--rollouts FILE.jsonl), then fits Q(s, a) to r + gamma Q_target(s', argmax_a' "
                                    "Q(s', a')).")
    tq.add_argument("--config", help="YAML file of these fields (flags override it)")
    tq.add_argument("--json", action="store_true", help="print q_result.json instead of the summary")
    add_dataclass_args(tq, QTrainConfig)


def run_post(args: argparse.Namespace) -> int:
    if args.latent_command == "finetune":
        cfg = build_config(FinetuneConfig, args, load_yaml(args.config))
        check_output_dir(cfg.out)  # before any model loads
        out = finetune(cfg)
        result = load_result(out)
        if args.json:
            print_json(result, indent=2)
        else:
            print(format_result(result))
            print(f"latent model: {out}   (try: reinlm generate --latent {out} --prompt \"...\")")
        return 0

    cfg = build_config(QTrainConfig, args, load_yaml(args.config))
    check_output_dir(cfg.out)
    result = train_q(cfg)
    if args.json:
        print_json(result, indent=2)
    else:
        print(format_q_result(result))
    return 0


# ---------------------------------------------------------------------------------------------- finetune's text

def load_result(out: str | Path) -> dict:
    """``OUT/finetune.json`` of a fine-tuned latent model directory."""
    return json.loads((Path(out) / "finetune.json").read_text())


def format_result(result: dict) -> str:
    """The before/after table of ``finetune.json``."""
    rows = [("NLL world model, IDM actions", "nll_world_model_idm"), ("NLL world model, policy actions",
            "nll_world_model_policy"), ("NLL backbone", "nll_backbone"), ("BC top-1 accuracy", "bc_top1_accuracy"),
            ("BC top-5 accuracy", "bc_top5_accuracy")]
    lines = [f"mode {result['mode']}, trained: {', '.join(result['trained']) or 'nothing'}; documents: "
             f"{result['documents']['train']} train, {result['documents']['held_out']} held out",
             f"{'held-out figure':34s} {'before':>8s} {'after':>8s}"]
    b, a = result["before"]["held_out"], result["after"]["held_out"]
    for label, key in rows:
        lines.append(f"{label:34s} {b[key]:8.3f} {a[key]:8.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- train-q

def train_q(cfg: QTrainConfig, lam=None) -> dict:
    """Sample and score rollouts (or read ``cfg.rollouts``), fit the Q-model, write ``cfg.out``; returns the
    result dict (also ``OUT/q_result.json``). ``lam``: an already loaded latent model."""
    if not cfg.rollouts and not cfg.reward:
        raise ReinlmError("reward: got none; pass --reward SPEC to score sampled rollouts, or --rollouts FILE.jsonl "
                          "of scored rollouts.")
    reward_set = None
    if not cfg.rollouts:
        reward_set = parse_reward_spec(cfg.reward)
    rows = None
    if cfg.rollouts:
        if not Path(cfg.rollouts).is_file():
            raise ReinlmError(f"rollouts: {cfg.rollouts!r} is not a file; allowed: a JSONL of scored rollouts.")
        rows = read_jsonl_objects(cfg.rollouts, "rollouts", "one JSON object per line with prompt, reward and "
                                  "response_ids or completion")
        if not rows:
            raise ReinlmError(f"rollouts: {cfg.rollouts!r} holds no rollout.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t0 = time.time()
    lam = lam or LatentActionModel.from_pretrained(cfg.latent, device=cfg.device)
    lam.eval()
    out = Path(cfg.out)
    work = out.with_name(f".{out.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        rollouts = rollouts_from_rows(lam, rows, cfg.rollouts)
        jsonl_rows = None
    else:
        from reinlm.data import load_prompts  # not at the top: `reinlm --help` would load the data layer

        prompt_set = load_prompts(cfg.prompts, column=cfg.prompt_column)
        if cfg.prompts_held_out_fraction > 0 and len(prompt_set) >= 2:
            prompt_set, _ = prompt_set.split(cfg.prompts_held_out_fraction, cfg.seed)
        n = min(cfg.num_prompts, len(prompt_set))
        prompts = list(prompt_set.prompts[:n])
        rollouts, jsonl_rows = sample_rollouts(lam, prompts, cfg.samples_per_prompt, cfg.max_new_tokens,
                                               cfg.temperature, cfg.seed, progress=cfg.progress)
        score_rollouts(reward_set, rollouts, jsonl_rows, prompts, prompt_set.rows(list(range(n))))
    metrics = work / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    qnet, result = train_on_rollouts(lam, rollouts, cfg, metrics)
    result["seconds"] = round(time.time() - t0, 1)
    extra = {"q_result.json": result, "q_train_config.json": config_to_dict(cfg)}
    qnet.save_pretrained(out, extra)
    if metrics.is_file():
        shutil.move(str(metrics), out / "metrics.jsonl")
    if jsonl_rows is not None:
        with open(out / "rollouts.jsonl", "w", encoding="utf-8") as f:
            for row in jsonl_rows:
                f.write(json.dumps(row) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    result["out"] = str(out)
    return result


def format_q_result(result: dict) -> str:
    """A few lines: rollouts, held-out TD loss and reward correlations before/after."""
    b, a = result["held_out_before"], result["held_out_after"]
    lines = [f"Q-model: {result['out']}  ({result['rollouts']['train']} training rollouts, "
             f"{result['rollouts']['held_out']} held out, gamma {result['gamma']})"]
    if a:
        def f(x):
            return "-" if x is None else f"{x:.3f}"

        lines.append(f"held-out TD loss {b['td_loss']:.4f} -> {a['td_loss']:.4f}; corr(Q(s_0,a_0), reward) "
                     f"{f(a['corr_first_step'])}; corr(Q(s_last,a_last), reward) {f(a['corr_last_step'])}; "
                     f"mean reward {a['reward_mean']:.3f}")
    return "\n".join(lines)
