"""Prompt sets: the built-in ones, local files, ``save_to_disk`` directories and Hugging Face datasets.

A spec string names where prompts come from (see docs/models-and-data.md):

- ``builtin:neutral`` | ``builtin:reviews`` | ``builtin:summaries`` (written for reinlm, shipped in the package);
- ``path.txt``: one prompt a line, blank lines ignored;
- ``path.jsonl`` | ``path.csv`` | ``path.parquet``: a table; ``column`` holds the prompt, other columns are kept;
- a directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``: its ``train`` split);
- ``hf:NAME[:SPLIT]``: ``datasets.load_dataset(NAME, split=SPLIT)`` (default split ``train``).

Nothing is skipped silently: an empty file, a missing column, or a row whose prompt is not a non-empty
string raises :class:`~reinlm.errors.ReinlmError` naming the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reinlm.utils import read_jsonl_objects
from reinlm.errors import ReinlmError

BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_SETS = {
    "neutral": "neutral.txt",  # ~200 neutral sentence openings for open-ended generation
    "reviews": "reviews.txt",  # ~100 neutral-ish movie-review openings, for sentiment steering
    "summaries": "summaries.jsonl",  # ~30 passages + "TL;DR:"; columns reference, passage
}
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass
class PromptSet:
    """Prompts plus aligned extra columns (e.g. ``reference``), passed to rewards as keyword columns."""

    prompts: list[str]
    columns: dict[str, list] = field(default_factory=dict)
    source: str = ""  # the spec it came from, for logs and error messages

    def __post_init__(self):
        self.prompts = list(self.prompts)
        self.columns = {k: list(v) for k, v in self.columns.items()}
        for name, values in self.columns.items():
            if len(values) != len(self.prompts):
                raise ReinlmError(f"prompts: column {name!r} has {len(values)} values but there are "
                                  f"{len(self.prompts)} prompts; allowed: columns as long as the prompt list.")

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    def __getitem__(self, i: int) -> str:
        return self.prompts[i]

    def subset(self, indices: Sequence[int]) -> "PromptSet":
        """A new PromptSet with the rows at ``indices`` (in that order), columns included."""
        idx = [int(i) for i in indices]
        return PromptSet([self.prompts[i] for i in idx], {k: [v[i] for i in idx] for k, v in self.columns.items()},
                         self.source)

    def split(self, held_out_fraction: float, seed: int = 0) -> tuple["PromptSet", "PromptSet"]:
        """Random ``(train, held_out)`` split; each part keeps the original order.

        ``held_out = round(n * fraction)``, at least 1 when the fraction is > 0, and at least one prompt
        stays in train. The same seed gives the same split.
        """
        if not 0.0 <= held_out_fraction < 1.0:
            raise ReinlmError(f"held_out_fraction: got {held_out_fraction!r}; allowed: a number in [0, 1).")
        n = len(self)
        n_held = 0 if held_out_fraction == 0 else min(max(1, round(n * held_out_fraction)), n - 1)
        perm = np.random.default_rng(seed).permutation(n)
        held = sorted(perm[:n_held].tolist())
        train = sorted(perm[n_held:].tolist())
        return self.subset(train), self.subset(held)

    def rows(self, indices: Sequence[int] | None = None) -> dict[str, list]:
        """Extra columns for ``indices`` (all rows when ``None``), as reward keyword arguments."""
        if indices is None:
            return {k: list(v) for k, v in self.columns.items()}
        return {k: [v[int(i)] for i in indices] for k, v in self.columns.items()}


def load_prompts(spec: str | Path, column: str = "prompt", limit: int | None = None) -> PromptSet:
    """Load a :class:`PromptSet` from a spec string (see the module docstring); ``limit`` keeps the first N."""
    if limit is not None and limit < 1:
        raise ReinlmError(f"limit: got {limit!r}; allowed: a positive number of prompts, or none for all.")
    spec_s = str(spec)
    if spec_s.startswith("builtin:"):
        ps = _load_builtin(spec_s[len("builtin:"):], column)
    elif spec_s.startswith("hf:"):
        ps = _load_hf(spec_s[len("hf:"):], column)
    else:
        ps = _load_path(Path(spec_s).expanduser(), column)
    ps.source = spec_s
    if len(ps) == 0:
        raise ReinlmError(f"prompts: {spec_s!r} holds no prompts; allowed: a source with at least one prompt.")
    return ps.subset(range(min(limit, len(ps)))) if limit else ps


def _load_builtin(name: str, column: str) -> PromptSet:
    if name not in BUILTIN_SETS:
        raise ReinlmError(f"prompts: unknown built-in prompt set {name!r}; allowed: "
                          f"{', '.join('builtin:' + k for k in BUILTIN_SETS)}.")
    return _load_path(BUILTIN_DIR / BUILTIN_SETS[name], column)


def _load_path(path: Path, column: str) -> PromptSet:
    if not path.exists():
        raise ReinlmError(f"prompts: {str(path)!r} does not exist; allowed: builtin:{'|'.join(BUILTIN_SETS)}, "
                          f"a .txt/.jsonl/.csv/.parquet file, a directory saved by datasets.save_to_disk, "
                          f"or hf:NAME[:SPLIT].")
    if path.is_dir():
        return _from_records(_load_disk_dataset(path), column, str(path))
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return PromptSet([ln for ln in lines if ln])
    if suffix == ".jsonl":
        return _from_records(_read_jsonl_table(path), column, str(path))
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        try:
            df = pd.read_csv(path, keep_default_na=False, na_values=[""]) if suffix == ".csv" else pd.read_parquet(path)
        except pd.errors.EmptyDataError:
            df = pd.DataFrame()
        return _from_records({c: df[c].tolist() for c in df.columns}, column, str(path))
    raise ReinlmError(f"prompts: cannot read {str(path)!r} (suffix {suffix or 'none'!r}); allowed: "
                      f".txt, {', '.join(TABLE_SUFFIXES)}, or a directory saved by datasets.save_to_disk.")


def _read_jsonl_table(path: Path) -> dict[str, list]:
    rows = [obj for _, obj in read_jsonl_objects(path, "prompts",
                                                  'one JSON object per line, e.g. {"prompt": "..."}')]
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in names}


def _from_records(table: dict[str, list], column: str, where: str) -> PromptSet:
    """Table (column -> values) -> PromptSet; every prompt must be a non-empty string."""
    if not table or all(len(v) == 0 for v in table.values()):
        return PromptSet([])
    if column not in table:
        raise ReinlmError(f"prompts: {where!r} has no column {column!r}; columns present: "
                          f"{', '.join(map(str, table))}. Choose one with the prompt-column option.")
    prompts = table[column]
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            bad = "an empty string" if isinstance(p, str) else f"{p!r} ({type(p).__name__})"
            raise ReinlmError(f"prompts: {where!r} row {i} has {bad} in column {column!r}; allowed: a "
                              f"non-empty string in every row (fix or remove that row).")
    return PromptSet(prompts, {k: _plain(v) for k, v in table.items() if k != column})


def _plain(values: list) -> list:
    """NaN -> None, so missing values look the same whatever the file format."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def _dataset_to_table(ds: Any) -> dict[str, list]:
    return {name: ds[name] for name in ds.column_names} if len(ds) else {}


def _load_disk_dataset(path: Path) -> dict[str, list]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ReinlmError(f"prompts: {str(path)!r} is a directory but not one saved by datasets.save_to_disk; "
                          f"allowed: such a directory, or a .txt/.jsonl/.csv/.parquet file.") from e
    return _dataset_to_table(_pick_split(ds, None, str(path)))


def _pick_split(ds: Any, split: str | None, where: str):
    import datasets

    if not isinstance(ds, datasets.DatasetDict):
        return ds
    names = list(ds.keys())
    want = split or ("train" if "train" in ds or len(names) != 1 else names[0])
    if want not in ds:
        raise ReinlmError(f"prompts: {where!r} has no split {want!r}; splits present: {', '.join(names)}.")
    return ds[want]


def _load_hf(name_split: str, column: str) -> PromptSet:
    """``hf:NAME[:SPLIT]`` via ``datasets.load_dataset`` (needs the network or the local datasets cache)."""
    import datasets

    name, _, split = name_split.partition(":")
    if not name:
        raise ReinlmError("prompts: 'hf:' needs a dataset name; allowed: hf:NAME or hf:NAME:SPLIT, "
                          "e.g. hf:stanfordnlp/imdb:test.")
    split = split or "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as e:
        raise ReinlmError(f"prompts: cannot load Hugging Face dataset {name!r} split {split!r} ({e}); allowed: "
                          f"a dataset id reachable online or already in the local datasets cache, and one of "
                          f"its splits.") from e
    return _from_records(_dataset_to_table(ds), column, f"hf:{name}:{split}")
