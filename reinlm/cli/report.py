"""``reinlm report RUN_DIR``: report.md with curves, samples, evaluation and config of a training run."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="write RUN_DIR/report.md with PNG curves, samples and evaluation of a training run",
        description="Write RUN_DIR/report.md: the resolved config, PNG curves in RUN_DIR/plots/ (reward and its "
                    "components, KL, beta, entropy, length, completions/s: whichever were logged), samples at the "
                    "start, middle and end, and the evaluation (eval.json, train_eval.json). See docs/evaluation.md.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `reinlm train --out RUN_DIR`")
    return p


def run(args: argparse.Namespace) -> int:
    from reinlm.evaluation.report import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path} (plots in {path.parent / 'plots'})")
    return 0
