"""``reinlm``: the command-line entry point.

Each sub-command lives in ``reinlm/cli/<name>.py`` and defines ``add_parser(subparsers)`` (which
returns its parser) and ``run(args) -> int``. This module only wires them together and turns
:class:`~reinlm.errors.ReinlmError` into a one-paragraph message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap

from reinlm import __version__
from reinlm.errors import ReinlmError

# Order here is the order in `reinlm --help`.
SUBCOMMANDS = [
    "demo", "generate", "reward", "train", "latent", "search", "explore", "eval", "report", "compare", "critique", "bench",
]


def _load(name: str):
    try:
        return importlib.import_module(f"reinlm.cli.{name}")
    except ModuleNotFoundError as e:  # a sub-command not built yet stays out of the parser
        if e.name == f"reinlm.cli.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The full ``reinlm`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="reinlm",
        description="Steer language models with reinforcement learning, in token space and in a latent "
                    "action space. Run `reinlm COMMAND --help` for each command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"reinlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        mod = _load(name)
        if mod is None:
            continue
        p = mod.add_parser(sub)
        p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
        p.set_defaults(_run=mod.run)
    return parser


def _print_error(message: str) -> None:
    para = textwrap.fill(" ".join(str(message).split()), width=100)
    print(f"reinlm: error: {para}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the process exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    if not args.debug:
        _quiet_third_party()
    try:
        return int(args._run(args) or 0)
    except ReinlmError as e:
        if args.debug:
            raise
        _print_error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        print("reinlm: interrupted", file=sys.stderr)
        return 130


def _quiet_third_party() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "sentence_transformers", "datasets", "accelerate", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing or changed: nothing to quiet
        pass


if __name__ == "__main__":
    sys.exit(main())
