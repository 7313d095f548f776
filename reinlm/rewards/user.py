"""Rewards written by the user: ``path/to/file.py:function`` loads ``function`` from a Python file."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from reinlm.errors import ReinlmError


def load_user_function(path: str, function: str) -> Callable:
    """Import the Python file ``path`` and return its callable ``function``.

    Raises :class:`ReinlmError` when the file is missing or not a ``.py`` file, fails to import, has no
    ``function``, or ``function`` is not callable (the message lists the file's callables).
    """
    file = Path(path).expanduser()
    where = f"{path}:{function}"
    if file.suffix != ".py":
        raise ReinlmError(f"reward {where!r}: {path!r} is not a .py file; allowed: path/to/file.py:function.")
    if not file.is_file():
        raise ReinlmError(f"reward {where!r}: the file {str(file.resolve())!r} does not exist; allowed: an existing "
                          f"Python file, relative to the current directory or absolute.")
    key = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]
    mod_name = f"reinlm_user_reward_{file.stem}_{key}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # lets dataclasses / pickling inside the user file find the module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ReinlmError(f"reward {where!r}: importing {str(file)!r} failed with {type(e).__name__}: {e}; fix the "
                          f"file so that `python {file}` runs.") from e
    callables = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == mod_name)
    if not hasattr(module, function):
        raise ReinlmError(f"reward {where!r}: {str(file)!r} defines no {function!r}; allowed: one of its functions "
                          f"{', '.join(callables) or '(none defined)'}.")
    fn = getattr(module, function)
    if not callable(fn):
        raise ReinlmError(f"reward {where!r}: {function!r} in {str(file)!r} is a {type(fn).__name__}, not a "
                          f"function; allowed: one of its functions {', '.join(callables) or '(none defined)'}.")
    return fn
