"""``reinlm bench``: benchmarks. ``token-rl`` (reinlm GRPO vs TRL GRPOTrainer) and ``latent-vs-token``."""

from __future__ import annotations

import argparse
import importlib
from reinlm.bench.common import dumps
from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.errors import ReinlmError
from reinlm.utils.outdir import check_output_dir

# name -> (module, one-line help); each module defines add_arguments(parser) and run_bench(...)
BENCHES = {
    "token-rl": ("reinlm.bench.token_rl", "reinlm GRPO vs TRL GRPOTrainer at equal settings (speed, memory, reward)"),
    "latent-vs-token": ("reinlm.bench.latent_vs_token", "latent-action RL vs token-space RL"),
    "generation": ("reinlm.bench.generation", "decoding tokens/s of every backend (reinlm float32/bfloat16, latent, "
                                              "vLLM, HF generate) at several batch sizes"),
    "reward-hacking": ("reinlm.bench.reward_hacking", "CoLA's stress test: both spaces with no KL on several seeds "
                                                      "(reward, perplexity, distinct-2 per step, degeneration alarm)"),
    "multiturn": ("reinlm.bench.multiturn", "multi-turn episodes vs single-turn decoding tokens/s at the same batch "
                                            "(kept key/value cache and re-prefill)"),
}


def _bench_module(name: str):
    module, _ = BENCHES[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ReinlmError(f"bench: the {name!r} benchmark is not available in this build (module {module} "
                              "is missing).") from e
        raise


class _AnyFlags(argparse.ArgumentParser):
    """Parser of a benchmark missing from this build: swallows every flag so that the error is ours."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        return ns, []


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="benchmarks: token-rl (reinlm vs TRL), latent-vs-token, generation, reward-hacking, multiturn",
        description="Benchmarks. Example: reinlm bench token-rl --steps 5 --json. Each side runs in its own "
                    "process; timings exclude model loading and skip the first step as a warm-up when steps > 2.",
    )
    sub = p.add_subparsers(dest="bench", metavar="BENCH")
    for name, (module, help_text) in BENCHES.items():
        bp = sub.add_parser(name, help=help_text, description=help_text)
        bp.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            bp.__class__ = _AnyFlags  # its flags are unknown: accept any, run() then says it is missing
            continue
        mod.add_arguments(bp)
    p.set_defaults(_bench_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "bench", None):
        args._bench_parser.print_help()
        return 2
    mod = _bench_module(args.bench)
    if args.bench == "token-rl":
        return _run_token_rl(mod, args)
    result = mod.run_bench(args)  # latent-vs-token: run_bench(args) -> report dict or exit status
    if isinstance(result, dict):
        formatter = getattr(mod, "format_report", None)
        if args.json or formatter is None:
            print_json(None, text=dumps(result))
        else:
            print(formatter(result))
        return 0
    return int(result or 0)


def _run_token_rl(mod, args: argparse.Namespace) -> int:
    cfg = build_config(mod.TokenRLBenchConfig, args)
    if cfg.out:
        check_output_dir(cfg.out)
    report = mod.run_bench(cfg)
    if args.json:
        print_json(None, text=dumps(report))
    else:
        print(mod.format_report(report))
    return 0
