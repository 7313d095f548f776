"""``reinlm compare RUN_A RUN_B ...``: overlay the runs' curves and tabulate their evaluations. Flags are the
fields of :class:`CompareConfig`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.utils.outdir import check_output_dir


@dataclass
class CompareConfig(Config):
    out: str | None = opt(None, "output directory (default: a 'compare' directory beside RUN_A)")
    group_seeds: bool = opt(False, "average runs whose config differs only in seed; report mean curves with min-max "
                                   "bands and the first step each group reaches the first group's final reward "
                                   "(compare.json too)")
    smooth: int = opt(5, "trailing moving-average window in steps for --group-seeds curves (1 = raw)", lo=1)
    target: str = opt("reward/mean", "metric for the steps-to-reach table of --group-seeds")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="overlay the curves of several runs and tabulate their evaluations side by side",
        description="Overlay the logged curves of two or more runs on the same axes (PNG per metric) and tabulate "
                    "their evaluations side by side in OUT/compare.md. See docs/evaluation.md.",
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="two or more run directories")
    add_dataclass_args(p, CompareConfig, switches=True)
    return p


def run(args: argparse.Namespace) -> int:
    from reinlm.evaluation.report import write_comparison

    cfg = build_config(CompareConfig, args)
    if cfg.out:
        check_output_dir(cfg.out)
    path = write_comparison(args.run_dirs, cfg.out, group_seeds=cfg.group_seeds, smooth=cfg.smooth,
                            target_key=cfg.target)
    print(f"wrote {path} (plots in {path.parent / 'plots'})")
    return 0
