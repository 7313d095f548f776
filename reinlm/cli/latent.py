"""``reinlm latent``: ``pretrain`` (IDM + world model, behaviour cloning), ``import-cola`` / ``import-bwarea``
(a CoLA / BWArea checkpoint as a latent model directory) and ``qd`` (the CoLA quality-diversity table). Flags are the fields of
PretrainConfig / LatentConfig / ImportColaConfig / QDConfig."""

from __future__ import annotations

import argparse
import json

from reinlm.cli import latent_qd
from reinlm.cli.latent_post import add_post_parsers, run_post
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.yamlfile import load_yaml
from reinlm.latent.config import LatentConfig
from reinlm.latent.import_bwarea import ImportBWAreaConfig, import_bwarea
from reinlm.latent.import_cola import ImportColaConfig, import_cola
from reinlm.latent.pretrain import Interrupted, PretrainConfig, pretrain
from reinlm.utils.outdir import check_output_dir


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("latent", help="latent-action model: pretrain, import-cola, import-bwarea, quality-diversity",
                              description="Latent-action model (CoLA / BWArea) on a frozen backbone.")
    sub = p.add_subparsers(dest="latent_command", metavar="ACTION")
    pre = sub.add_parser("pretrain", help="build the hidden-state cache, train IDM + world model, then the BC policy",
                         description="Example: reinlm latent pretrain --backbone smollm2-135m --corpus self:200000 "
                                     "--out runs/latent. Re-running the same command resumes: finished stages are "
                                     "skipped, a stage with a checkpoint continues from it. Data parallel: "
                                     "torchrun --nproc_per_node N -m reinlm.cli.main latent pretrain ... (CPU) or "
                                     "accelerate launch (GPUs). Exit status 3: stopped by --stop-after-steps.")
    pre.add_argument("--config", help="YAML file of these fields (flags override it)")
    add_dataclass_args(pre, PretrainConfig, group="pretraining")
    add_dataclass_args(pre, LatentConfig, group="head sizes")

    imp = sub.add_parser("import-cola", help="convert a CoLA checkpoint (e.g. Llama-3.1-CoLA-10B) into a latent "
                                             "model directory",
                         description="Example: reinlm latent import-cola ./Llama-3.1-CoLA-10B runs/cola10b "
                                     "--backbone meta-llama/Llama-3.1-8B. Without --backbone the checkpoint's "
                                     "own backbone is exported to OUT/backbone.")
    imp.add_argument("src", metavar="SRC", help="CoLA checkpoint directory (Hugging Face format)")
    imp.add_argument("out", metavar="OUT", help="latent model directory to write")
    add_dataclass_args(imp, ImportColaConfig)

    imb = sub.add_parser("import-bwarea", help="convert a BWArea checkpoint (e.g. Pretrained_BWArea_2.7B_30G) into a "
                                               "latent model directory",
                         description="Example: reinlm latent import-bwarea ./Pretrained_BWArea_2.7B_30G runs/bwarea. "
                                     "SRC: a directory in BWArea's layout (config.json with num_code, num_dim, "
                                     "action_dim; safetensors or .bin, sharded or not) or a hub id in the local "
                                     "Hugging Face cache. The world model, inverse dynamics model and policy keep "
                                     "their own embeddings; RL trains only the policy.")
    imb.add_argument("src", metavar="SRC", help="BWArea checkpoint directory (Hugging Face format) or cached hub id")
    imb.add_argument("out", metavar="OUT", help="latent model directory to write")
    add_dataclass_args(imb, ImportBWAreaConfig)
    latent_qd.add_qd_parser(sub)

    add_post_parsers(sub)
    p.set_defaults(_latent_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    if args.latent_command == "pretrain":
        values = load_yaml(args.config)
        cfg = build_config(PretrainConfig, args, values, also=(LatentConfig,))
        latent = build_config(LatentConfig, args, values, also=(PretrainConfig,))
        check_output_dir(cfg.out)  # before the backbone loads
        try:
            out = pretrain(cfg, latent)
        except Interrupted as e:  # --stop-after-steps: not an error, but not finished either
            print(str(e))
            return 3
        summary = json.loads((out / "summary.json").read_text())
        print(json.dumps(summary, indent=2))
        print(f"latent model: {out}   (try: reinlm explore --latent {out} \"I like eating\")")
        return 0
    if args.latent_command in ("import-cola", "import-bwarea"):
        cls, convert = ((ImportColaConfig, import_cola) if args.latent_command == "import-cola"
                        else (ImportBWAreaConfig, import_bwarea))
        imp_cfg = build_config(cls, args)
        check_output_dir(imp_cfg.out)
        summary = convert(imp_cfg)
        print(json.dumps(summary, indent=2))
        print(f"latent model: {summary['out']}   (try: reinlm explore --latent {summary['out']} \"I like eating\")")
        return 0
    if args.latent_command == "qd":
        return latent_qd.run(args)

    if args.latent_command in ("finetune", "train-q"):
        return run_post(args)
    args._latent_parser.print_help()
    return 2
