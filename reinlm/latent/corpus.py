"""Corpus specs for latent pretraining: where the text comes from, read as a stream.

``SPEC`` is one of

- ``self:N``: N tokens sampled from the backbone itself on the built-in prompts (``builtin:neutral``), the
  offline default. It fits the latent model to the backbone's own distribution, and the sampling pass yields
  the hidden states for free (see :mod:`reinlm.latent.hidden_cache`); the sampled tokens are kept on disk
  (4 bytes a token) so that every stage reads the same text;
- a ``.txt`` / ``.md`` file or a folder of them (recursive, sorted); a file is read in blocks of about
  64 KB cut at a line end, each block a document, so a file larger than memory streams too;
- a ``.jsonl`` file with a text column (``--text-column``, default ``text``), one document a line;
- a directory written by ``datasets.save_to_disk``, or ``hf:NAME[:SPLIT[:CONFIG]]`` / a bare hub dataset
  name, loaded with ``streaming=True`` (nothing is downloaded ahead of use).

Every source is a sequence of *documents* with a stable index, so a reader can start at document ``d``
without tokenising the ones before it (exact resume), and a document is held out for evaluation by a hash
of its index (:func:`is_held_out`), never by position in a shuffled list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from reinlm.errors import ReinlmError

SPEC_HELP = ("self:N (N tokens sampled from the backbone on builtin prompts), a .txt file or folder, a .jsonl "
             "file with a text column, a datasets.save_to_disk directory, or hf:NAME[:SPLIT[:CONFIG]]")
BLOCK_CHARS = 1 << 16  # a plain-text file is cut into documents of about this many characters


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


def _text_blocks(path: Path) -> Iterator[str]:
    """A text file in blocks of about BLOCK_CHARS characters, each cut after a line end (bad bytes replaced)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        rest, first = "", True
        while True:
            chunk = f.read(BLOCK_CHARS)
            if not chunk:
                break
            if first and ("\x00" in chunk or chunk.count("\ufffd") > len(chunk) // 10):
                raise ReinlmError(f"corpus: {str(path)!r} looks binary, not text (NUL bytes or mostly bytes that are not "
                                  "UTF-8 in its first block); allowed: UTF-8 text files, .jsonl, a dataset directory "
                                  "or hf:NAME.")
            first = False
            text = rest + chunk
            cut = text.rfind("\n")
            if cut < 0 or cut < len(text) // 4:  # no line end nearby: cut at the block size
                cut = len(text) - 1
            yield text[: cut + 1]
            rest = text[cut + 1:]
        if rest:
            yield rest


def _folder_files(path: Path, spec: str) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    if not files:
        raise ReinlmError(f"corpus: the folder {spec!r} holds no .txt or .md files; allowed: {SPEC_HELP}.")
    return files


def _hf_name(spec: str) -> tuple[str, str, str | None]:
    name = spec[3:] if spec.startswith("hf:") else spec
    parts = name.split(":")
    return parts[0], (parts[1] if len(parts) > 1 and parts[1] else "train"), (parts[2] if len(parts) > 2 else None)


def iter_documents(spec: str, text_column: str = "text", start: int = 0) -> Iterator[tuple[int, str]]:
    """(document index, text) of a text corpus spec (not ``self:N``) from document ``start`` on, streamed.

    Documents before ``start`` are skipped without being tokenised (files are still read). Empty documents
    keep their index (so indices never depend on content) but are not yielded.
    """
    path = Path(spec).expanduser()
    is_dataset_dir = path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()
                                        or (path / "dataset_dict.json").exists())
    if path.is_dir() and not is_dataset_dir:
        it = ((i, t) for i, t in enumerate(b for f in _folder_files(path, spec) for b in _text_blocks(f)))
    elif is_dataset_dir:
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        _check_column(ds.column_names, text_column, spec)
        it = ((i, str(ds[i][text_column])) for i in range(start, len(ds)))
    elif path.is_file() and path.suffix == ".jsonl":
        it = _jsonl_documents(path, text_column, spec, start)
    elif path.is_file():
        it = enumerate(_text_blocks(path))
    elif spec.startswith(("/", ".", "~")) or spec.endswith((".txt", ".jsonl", ".md")):
        raise ReinlmError(f"corpus: {spec!r}: no such file or directory; allowed: {SPEC_HELP}.")
    else:
        it = _hf_documents(spec, text_column, start)
    for i, text in it:
        if i >= start and text.strip():
            yield i, text


def _jsonl_documents(path: Path, column: str, spec: str, start: int = 0) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i < start or not line.strip():
                yield i, ""
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ReinlmError(f"corpus: {spec!r} line {i + 1} is not JSON ({e}); allowed: one JSON object "
                                  f"a line with a {column!r} field.") from e
            if not isinstance(row, dict) or column not in row:
                cols = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise ReinlmError(f"corpus: {spec!r} line {i + 1} has no column {column!r} (got: {cols}); pass "
                                  f"--text-column.")
            yield i, str(row[column])


def _hf_documents(spec: str, column: str, start: int) -> Iterator[tuple[int, str]]:
    name, split, config = _hf_name(spec)
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split=split, streaming=True)
        if start:
            ds = ds.skip(start)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad split: one clear error
        raise ReinlmError(f"corpus: could not stream the dataset {name!r} split {split!r} ({type(e).__name__}: "
                          f"{e}); allowed: {SPEC_HELP}.") from e
    if first is None:
        return
    _check_column(list(first), column, spec)
    yield start, str(first[column])
    for i, row in enumerate(rows, start + 1):
        yield i, str(row[column])


def _check_column(columns, column: str, spec: str) -> None:
    if column not in columns:
        raise ReinlmError(f"corpus: {spec!r} has no column {column!r} (columns: {', '.join(columns)}); "
                          f"pass --text-column.")


def load_texts(spec: str, text_column: str = "text", limit: int | None = None) -> list[str]:
    """The documents of a text corpus spec (not ``self:N``), in a stable order (the whole corpus in memory)."""
    texts = []
    for _, t in iter_documents(spec, text_column):
        texts.append(t)
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise ReinlmError(f"corpus: {spec!r} holds no text.")
    return texts


def builtin_prompts(spec: str = "builtin:neutral") -> list[str]:
    """Prompts for ``self:N`` sampling (the built-in neutral sentence openings)."""
    from reinlm.data import load_prompts

    return list(load_prompts(spec).prompts)


# ---------------------------------------------------------------------------------------------- held-out split

def _mix64(x: int) -> int:
    """splitmix64 finaliser: a well-mixed 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def is_held_out(doc: int, fraction: float, seed: int = 0) -> bool:
    """Whether document ``doc`` belongs to the held-out split: a seeded hash of its index, so the split never
    depends on how much of the stream was read or on the number of processes."""
    return _mix64(_mix64(int(seed)) ^ int(doc)) < fraction * 2.0 ** 64


# ---------------------------------------------------------------------------------------------- token sources

class TokenSource:
    """Documents as token windows: ``windows(start)`` yields (doc, piece, ids (n,) int32), 2 <= n <= length.

    A document is tokenised once and cut into consecutive pieces of ``length`` tokens (a last piece shorter
    than 2 tokens is dropped). ``start`` = (doc, piece): the first window to yield (exact resume).
    """

    def __init__(self, spec: str, tokenizer, length: int, text_column: str = "text"):
        self.spec, self.tokenizer, self.length, self.text_column = spec, tokenizer, int(length), text_column

    def _documents(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        for i, text in iter_documents(self.spec, self.text_column, start):
            yield i, np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)

    def windows(self, start: tuple[int, int] = (0, 0)) -> Iterator[tuple[int, int, np.ndarray]]:
        L = self.length
        for doc, ids in self._documents(start[0]):
            for piece, a in enumerate(range(0, len(ids), L)):
                w = ids[a:a + L]
                if len(w) >= 2 and (doc, piece) >= tuple(start):
                    yield doc, piece, w


class StoredTokenSource(TokenSource):
    """Documents that are already token ids: a ``tokens.npy`` / ``offsets.npy`` store (the ``self:N`` samples)."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, length: int, spec: str = "self"):
        super().__init__(spec, None, length)
        self.tokens, self.offsets = tokens, offsets

    def _documents(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        for s in range(start, len(self.offsets) - 1):
            yield s, np.asarray(self.tokens[self.offsets[s]:self.offsets[s + 1]], dtype=np.int32)
