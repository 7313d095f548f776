"""``reinlm latent finetune`` (action-guided fine-tuning, FTA-I / FTA-P) and ``reinlm latent train-q`` (the
Q-model over latent actions for ``reinlm search``). Flags are the fields of FinetuneConfig / QTrainConfig."""

from __future__ import annotations

import argparse
from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.yamlfile import load_yaml
from reinlm.latent.finetune import FinetuneConfig, finetune, format_result, load_result
from reinlm.latent.qmodel import QTrainConfig, format_q_result, train_q
from reinlm.utils.outdir import check_output_dir


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
