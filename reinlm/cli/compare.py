"""``reinlm compare RUN_A RUN_B ...``: overlay the runs' curves and tabulate their evaluations."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="overlay the curves of several runs and tabulate their evaluations side by side",
        description="Overlay the logged curves of two or more runs on the same axes (PNG per metric) and tabulate "
                    "their evaluations side by side in OUT/compare.md. See docs/evaluation.md.",
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="two or more run directories")
    p.add_argument("--out", default=None, help="output directory (default: a 'compare' directory beside RUN_A)")
    return p


def run(args: argparse.Namespace) -> int:
    from reinlm.evaluation.report import write_comparison

    path = write_comparison(args.run_dirs, args.out)
    print(f"wrote {path} (plots in {path.parent / 'plots'})")
    return 0
