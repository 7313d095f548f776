"""``reinlm compare RUN_A RUN_B ...``: overlay the runs' curves and tabulate their evaluations."""

from __future__ import annotations

import argparse

from reinlm.errors import bad_value
from reinlm.utils.outdir import check_output_dir


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="overlay the curves of several runs and tabulate their evaluations side by side",
        description="Overlay the logged curves of two or more runs on the same axes (PNG per metric) and tabulate "
                    "their evaluations side by side in OUT/compare.md. See docs/evaluation.md.",
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="two or more run directories")
    p.add_argument("--out", default=None, help="output directory (default: a 'compare' directory beside RUN_A)")
    p.add_argument("--group-seeds", action="store_true",
                   help="average runs whose config differs only in seed; report mean curves with min-max bands and "
                        "the first step each group reaches the first group's final reward (compare.json too)")
    p.add_argument("--smooth", type=int, default=5,
                   help="trailing moving-average window in steps for --group-seeds curves (default 5; 1 = raw)")
    p.add_argument("--target", default="reward/mean",
                   help="metric for the steps-to-reach table of --group-seeds (default reward/mean)")
    return p


def run(args: argparse.Namespace) -> int:
    from reinlm.evaluation.report import write_comparison

    if args.smooth < 1:
        raise bad_value("--smooth", args.smooth, "a whole number of steps >= 1")
    if args.out:
        check_output_dir(args.out)
    path = write_comparison(args.run_dirs, args.out, group_seeds=args.group_seeds, smooth=args.smooth,
                            target_key=args.target)
    print(f"wrote {path} (plots in {path.parent / 'plots'})")
    return 0
