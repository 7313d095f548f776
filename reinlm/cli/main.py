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
from reinlm.cli.jsonout import json_only_stdout
from reinlm.errors import ReinlmError
from reinlm.utils.oserrors import describe_os_error
from reinlm.utils.redact import redact_secrets

# Order here is the order in `reinlm --help`.
SUBCOMMANDS = [
    "demo", "generate", "reward", "train", "latent", "search", "explore", "eval", "report", "compare", "critique", "bench",
    "env",
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
    # redact before any cut; never split a word at a hyphen or mid-word: commands, flags and paths stay whole
    # (a user copies them), e.g. `reinlm latent import-bwarea` or `--latent-train`
    para = textwrap.fill(" ".join(redact_secrets(str(message)).split()), width=100,
                         break_on_hyphens=False, break_long_words=False)
    print(f"reinlm: error: {para}", file=sys.stderr)


class RedactSecrets(logging.Filter):
    """Logging filter: every record's message (arguments merged in) goes through ``redact_secrets``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_secrets(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def install_redaction() -> None:
    """Redact API keys from every log line and warning this process prints (handlers of the root logger and
    ``warnings.showwarning``)."""
    import warnings

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    show = warnings.showwarning
    if not getattr(show, "_redacts", False):
        def showwarning(message, category, filename, lineno, file=None, line=None):
            show(redact_secrets(str(message)), category, filename, lineno, file, line)

        showwarning._redacts = True
        warnings.showwarning = showwarning


def _user_error(e: BaseException) -> tuple[str, int] | None:
    """(message, exit status) for an exception that is a problem of the input or the environment, not a bug."""
    if isinstance(e, ReinlmError):
        return str(e), e.exit_code
    if isinstance(e, OSError):
        return describe_os_error(e), 2
    if isinstance(e, UnicodeDecodeError):
        return (f"a file is not UTF-8 text: byte 0x{e.object[e.start:e.start + 1].hex()} at offset {e.start} cannot "
                f"be decoded ({e.reason}); save the file as UTF-8."), 2
    if type(e).__name__ == "SafetensorError":
        return (f"a weights file cannot be read ({e}); it is truncated or not a safetensors file: copy or export "
                "it again."), 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the process exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    install_redaction()
    if not args.debug:
        _quiet_third_party()

    try:
        with json_only_stdout(bool(getattr(args, "json", False))):  # --json: nothing else on stdout
            return int(args._run(args) or 0)
    except Exception as e:  # noqa: BLE001 - a user's problem is explained, a bug re-raised
        explained = _user_error(e)
        if args.debug or explained is None:
            raise
        _print_error(explained[0])
        return explained[1]
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
    _code = main()
    from reinlm.utils.distributed import exit_distributed_process

    exit_distributed_process(_code)  # a torchrun / accelerate worker ends here (no-op in one process)
    sys.exit(_code)
