"""``reinlm latent qd``: the CoLA card's quality-diversity table (latent sampling vs token sampling vs random
tokens). Flags are the fields of :class:`reinlm.latent.qd.QDConfig`. The command (:func:`run_qd`: the model,
prefixes and sentence encoder from the config) and its table (:func:`format_table`) live here; the protocol
itself is :func:`reinlm.latent.qd.qd_rows`."""

from __future__ import annotations

import argparse
from pathlib import Path

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.latent.model import LatentActionModel
from reinlm.latent.qd import QDConfig, check_held_out, held_out_prefixes, qd_rows
from reinlm.utils.rng import seed_everything


def add_qd_parser(sub) -> None:
    """Register ``qd`` under ``reinlm latent``."""
    qd = sub.add_parser("qd", help="quality-diversity: latent sampling vs token sampling vs random tokens",
                        description="Example: reinlm latent qd --latent runs/latent --num-prefixes 16 --samples 8")
    add_dataclass_args(qd, QDConfig)
    qd.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run_qd(cfg: QDConfig, model: LatentActionModel | None = None, encoder=None) -> dict:
    """Run the protocol of ``cfg``; returns ``{"rows": {row: {similarity, qd, perplexity, distinct_2}}, "config":
    ...}``. ``model`` / ``encoder``: already loaded ones to use."""
    from reinlm.hub import load_sentence_encoder  # not at the top: `reinlm --help` would load the hub

    latent_dir = Path(cfg.latent)
    seed_everything(cfg.seed)
    model = model or LatentActionModel.from_pretrained(latent_dir, device=cfg.device)  # a damaged directory: named
    if not cfg.prefixes:
        check_held_out(latent_dir)
    model.set_action_sampling(greedy=False, tau=cfg.action_tau, top_k=0, top_p=1.0)
    tok = model.tokenizer
    if cfg.prefixes:
        from reinlm.data import load_prompts  # not at the top: `reinlm --help` would load the data layer

        texts = load_prompts(cfg.prefixes, limit=cfg.num_prefixes).prompts
        prefixes = [tok(t, add_special_tokens=False)["input_ids"][: cfg.prefix_tokens] for t in texts]
    else:
        prefixes = held_out_prefixes(latent_dir, cfg.num_prefixes, cfg.prefix_tokens)
    encoder = encoder or load_sentence_encoder(cfg.encoder, device="cpu")
    return qd_rows(model, prefixes, encoder, cfg)


def format_table(result: dict) -> str:
    """One line per row: QD, similarity, perplexity, distinct-2 and the first sample."""
    lines = [f"{'row':<16}{'QD':>8}{'similarity':>12}{'perplexity':>12}{'distinct-2':>12}  example"]
    for row, r in result["rows"].items():
        ex = " ".join(r["example"].split())[:60]
        lines.append(f"{row:<16}{r['qd']:>8.3f}{r['similarity']:>12.3f}{r['perplexity']:>12.1f}"
                     f"{r['distinct_2']:>12.3f}  {ex}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``reinlm latent qd``: the table, or the result as JSON with ``--json``."""
    result = run_qd(build_config(QDConfig, args))
    if args.json:
        print_json(result, indent=2)
    else:
        print(format_table(result))
    return 0
