"""Corpus specs for latent pretraining: where the text comes from.

``SPEC`` is one of

- ``self:N``: N tokens sampled from the backbone itself on the built-in prompts (``builtin:neutral``), the
  offline default. It fits the latent model to the backbone's own distribution, and the sampling pass yields
  the hidden states for free (see :mod:`reinlm.latent.hidden_cache`);
- a ``.txt`` / ``.md`` file (one document) or a folder of them (recursive);
- a ``.jsonl`` file with a text column (``--text-column``, default ``text``);
- a directory written by ``datasets.save_to_disk``, or ``hf:NAME[:SPLIT]`` / a bare hub dataset name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reinlm.errors import ReinlmError

SPEC_HELP = ("self:N (N tokens sampled from the backbone on builtin prompts), a .txt file or folder, a .jsonl "
             "file with a text column, a datasets.save_to_disk directory, or hf:NAME[:SPLIT]")


@dataclass(frozen=True)
class CorpusSpec:
    kind: str  # "self" | "texts"
    spec: str  # the string the user gave
    n_tokens: int = 0  # for kind "self"


def parse_corpus_spec(spec: str) -> CorpusSpec:
    """Classify ``spec`` (see the module docstring); raises :class:`ReinlmError` on a malformed one."""
    if spec.startswith("self:"):
        try:
            n = int(float(spec.split(":", 1)[1]))
        except ValueError:
            n = 0
        if n <= 0:
            raise ReinlmError(f"corpus: got {spec!r}; allowed: self:N with N a positive number of tokens, e.g. "
                              f"self:200000.")
        return CorpusSpec("self", spec, n)
    return CorpusSpec("texts", spec)


def load_texts(spec: str, text_column: str = "text", limit: int | None = None) -> list[str]:
    """The documents of a text corpus spec (not ``self:N``), in a stable order."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "dataset_info.json").exists() and not (path / "state.json").exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise ReinlmError(f"corpus: the folder {spec!r} holds no .txt or .md files; allowed: {SPEC_HELP}.")
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    elif path.is_dir():
        from datasets import load_from_disk

        texts = _column(load_from_disk(str(path)), text_column, spec)
    elif path.is_file() and path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows and text_column not in rows[0]:
            raise ReinlmError(f"corpus: {spec!r} has no column {text_column!r} (columns: {', '.join(rows[0])}); "
                              f"pass --text-column.")
        texts = [str(r[text_column]) for r in rows]
    elif path.is_file():
        texts = [path.read_text(encoding="utf-8", errors="replace")]
    elif spec.startswith(("/", ".", "~")) or spec.endswith((".txt", ".jsonl", ".md")):
        raise ReinlmError(f"corpus: {spec!r}: no such file or directory; allowed: {SPEC_HELP}.")
    else:
        name = spec[3:] if spec.startswith("hf:") else spec
        name, _, split = name.partition(":")
        try:
            from datasets import load_dataset

            ds = load_dataset(name, split=split or "train")
        except Exception as e:  # offline, unknown name, ...
            raise ReinlmError(f"corpus: could not load the dataset {name!r} ({type(e).__name__}: {e}); allowed: "
                              f"{SPEC_HELP}.") from e
        texts = _column(ds, text_column, spec)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ReinlmError(f"corpus: {spec!r} holds no text.")
    return texts[:limit] if limit else texts


def _column(ds, column: str, spec: str) -> list[str]:
    if column not in ds.column_names:
        raise ReinlmError(f"corpus: {spec!r} has no column {column!r} (columns: {', '.join(ds.column_names)}); "
                          f"pass --text-column.")
    return [str(t) for t in ds[column]]


def builtin_prompts(spec: str = "builtin:neutral") -> list[str]:
    """Prompts for ``self:N`` sampling (the built-in neutral sentence openings)."""
    from reinlm.data import load_prompts

    return list(load_prompts(spec).prompts)
