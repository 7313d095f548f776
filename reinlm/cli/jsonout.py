"""``--json`` means JSON on stdout and nothing else: one place that makes it so for every command.

:func:`json_only_stdout` (entered by ``reinlm.cli.main`` around any command run with ``--json``) sends everything
written to stdout to stderr instead: Python ``print`` calls, C libraries and child processes writing to file
descriptor 1 (benchmark children, vLLM's logs). :func:`print_json` is the only way through to the real stdout;
a command prints its JSON with it, and only that reaches ``| jq``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import Any, Iterator, TextIO

_REAL_STDOUT: TextIO | None = None  # while json_only_stdout is active: where print_json writes


@contextlib.contextmanager
def json_only_stdout(enabled: bool = True) -> Iterator[None]:
    """While active, whatever is written to stdout (``sys.stdout``, and descriptor 1, which C libraries and child
    processes write to) goes to stderr; :func:`print_json` writes to the stdout of before. Nothing changes when
    not ``enabled``."""
    global _REAL_STDOUT
    if not enabled or _REAL_STDOUT is not None:
        yield
        return
    py_stdout = sys.stdout
    py_stdout.flush()
    try:
        on_fd1 = py_stdout.fileno() == 1
    except (AttributeError, OSError, io.UnsupportedOperation):
        on_fd1 = False  # an in-memory or captured stdout (pytest): JSON goes to that object
    saved = os.dup(1)
    os.dup2(2, 1)  # descriptor 1 (C libraries, child processes) -> stderr
    _REAL_STDOUT = os.fdopen(os.dup(saved), "w", encoding="utf-8") if on_fd1 else py_stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stdout = py_stdout
        if on_fd1:
            _REAL_STDOUT.close()
        os.dup2(saved, 1)
        os.close(saved)
        _REAL_STDOUT = None


def print_json(obj: Any, *, text: str | None = None, **dumps_kwargs: Any) -> None:
    """Print ``obj`` as JSON (``json.dumps(obj, **dumps_kwargs)``, or the already-encoded ``text``) on the real
    stdout, also inside :func:`json_only_stdout`."""
    out = _REAL_STDOUT if _REAL_STDOUT is not None else sys.stdout
    out.write((text if text is not None else json.dumps(obj, **dumps_kwargs)) + "\n")
    out.flush()
