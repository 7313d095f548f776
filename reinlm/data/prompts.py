"""Prompt sets: the built-in ones, local files, ``save_to_disk`` directories, Hugging Face datasets and
Python objects (a ``datasets.Dataset``, a list of dicts, a list of strings).

A spec string names where prompts come from (see docs/models-and-data.md):

- ``builtin:neutral`` | ``builtin:reviews`` | ``builtin:summaries`` | ``builtin:topics`` (conversational; written
  for reinlm, shipped in the package);
- ``path.txt``: one prompt a line, blank lines ignored;
- ``path.jsonl`` | ``path.csv`` | ``path.parquet``: a table; ``column`` holds the prompt, other columns are kept;
- a directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``: its ``train`` split);
- ``hf:NAME[:CONFIG][:SPLIT]``: ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)`` (default split ``train``).

A prompt is a non-empty string, or (TRL's conversational format) a non-empty list of ``{"role", "content"}``
messages; one set holds one kind. ``rename`` maps column names before the prompt column is picked.
Nothing is skipped silently: an empty file, a file that is not UTF-8, a missing column, or a row whose prompt
is neither raises :class:`~reinlm.errors.ReinlmError` naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reinlm.errors import ConfigError, ReinlmError
from reinlm.utils.jsonio import read_jsonl_objects
from reinlm.utils.textfile import read_text

BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_SETS = {
    "neutral": "neutral.txt",  # ~200 neutral sentence openings for open-ended generation
    "reviews": "reviews.txt",  # ~100 neutral-ish movie-review openings, for sentiment steering
    "summaries": "summaries.jsonl",  # ~30 passages + "TL;DR:"; columns reference, passage
    "topics": "topics.jsonl",  # 60 conversational prompts "Write one sentence about <topic>."; column topic
}
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
#: Columns TRL does not pass to rewards ("prompt" goes as ``prompts``); a "completion" column is kept out too.
NOT_REWARD_COLUMNS = ("completion", "completion_ids")
#: Names every reward receives as arguments: a column may not take one of them.
RESERVED_COLUMNS = ("prompts", "completions", "trainer_state", "log_extra", "log_metric", "completion_token_spans")
SPLIT_NAMES = re.compile(r"^(train|test|validation|valid|dev|eval|evaluation)(\[.*\])?([+].*)?$")
Messages = list  # a conversational prompt: [{"role": ..., "content": ...}, ...]


@dataclass
class PromptSet:
    """Prompts plus aligned extra columns (e.g. ``reference``), passed to rewards as keyword columns.

    ``prompts[i]`` is a string, or a list of ``{"role", "content"}`` messages (conversational data; rendered
    with the tokenizer's chat template before generation, see :mod:`reinlm.data.chat`).
    """

    prompts: list[str | Messages]
    columns: dict[str, list] = field(default_factory=dict)
    source: str = ""  # the spec it came from, for logs, error messages and config.yaml
    completions: list | None = None  # the data's "completion" column (not given to rewards; GKD's --lmbda steps)

    def __post_init__(self):
        self.prompts = list(self.prompts)
        self.columns = {k: list(v) for k, v in self.columns.items()}
        if self.completions is not None and len(self.completions) != len(self.prompts):
            raise ReinlmError(f"prompts: column 'completion' has {len(self.completions)} values but there are "
                              f"{len(self.prompts)} prompts; allowed: columns as long as the prompt list.")
        for name, values in self.columns.items():
            if len(values) != len(self.prompts):
                raise ReinlmError(f"prompts: column {name!r} has {len(values)} values but there are "
                                  f"{len(self.prompts)} prompts; allowed: columns as long as the prompt list.")

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    def __getitem__(self, i: int) -> str | Messages:
        return self.prompts[i]

    @property
    def conversational(self) -> bool:
        """Whether the prompts are message lists (TRL's conversational format)."""
        return bool(self.prompts) and isinstance(self.prompts[0], list)

    def subset(self, indices: Sequence[int]) -> "PromptSet":
        """A new PromptSet with the rows at ``indices`` (in that order), columns included."""
        idx = [int(i) for i in indices]
        return PromptSet([self.prompts[i] for i in idx], {k: [v[i] for i in idx] for k, v in self.columns.items()},
                         self.source, None if self.completions is None else [self.completions[i] for i in idx])

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

    def records(self) -> list[dict[str, Any]]:
        """One dict per row: ``{"prompt": ..., **columns}``."""
        return [{"prompt": p, **{k: v[i] for k, v in self.columns.items()}} for i, p in enumerate(self.prompts)]

    def fingerprint(self) -> str:
        """A short hash of the prompts and columns (order included): equal sets give equal fingerprints."""
        blob = json.dumps({"prompts": self.prompts, "columns": self.columns}, sort_keys=True, default=repr,
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        """One line for logs: how many prompts, from where, conversational or not."""
        kind = "conversational prompts" if self.conversational else "prompts"
        return f"{len(self)} {kind} from {self.source or 'Python'}"


def held_out_line(n_total: int, n_held: int, fraction: float, n_eval: int) -> str:
    """The line the trainer prints about the held-out prompts (they must not vanish silently)."""
    if n_held == 0 and n_eval == 0:
        return f"prompts: training on all {n_total} (--eval-prompts 0: none held out, no before/after evaluation)."
    if n_held == 0:
        reuse = (f"; the before/after evaluation reuses {min(n_eval, n_total)} of them (--eval-prompts)"
                 if n_eval > 0 else "")
        return (f"prompts: training on all {n_total} (--held-out-fraction {fraction:g}){reuse}. "
                f"--held-out-fraction 0.2 keeps a fifth out for the evaluation instead.")
    used = f" ({min(n_eval, n_held)} of them used, --eval-prompts)" if n_eval > 0 else " (--eval-prompts 0: unused)"
    return (f"prompts: holding out {n_held} of {n_total} (--held-out-fraction {fraction:g}) for the before/after "
            f"evaluation{used}; training on {n_total - n_held}. --held-out-fraction 0 trains on all of them.")


def parse_column_map(text: str | dict | None) -> dict[str, str]:
    """``"old=new,old2=new2"`` (or a dict) -> ``{"old": "new", ...}`` for renaming columns."""
    if text is None or text == "" or text == {}:
        return {}
    if isinstance(text, dict):
        pairs = [(str(k), str(v)) for k, v in text.items()]
    else:
        pairs = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            old, eq, new = part.partition("=")
            if not eq or not old.strip() or not new.strip():
                raise ConfigError(f"rename_columns: got {text!r}; allowed: OLD=NEW pairs separated by commas, "
                                  f"e.g. question=prompt,answer=solution.")
            pairs.append((old.strip(), new.strip()))
    out = dict(pairs)
    if len(set(out.values())) != len(out):
        raise ConfigError(f"rename_columns: got {text!r}, which gives two columns the same name; allowed: distinct "
                          f"new names.")
    return out


def load_prompts(spec: "str | Path | Any", column: str = "prompt", limit: int | None = None,
                 rename: str | dict | None = None) -> PromptSet:
    """Load a :class:`PromptSet` from a spec string (see the module docstring) or a Python object.

    Python objects: a :class:`PromptSet`, a ``datasets.Dataset`` / ``DatasetDict`` (its train split), a list of
    strings, a list of dicts (one per row), a dict of columns, or a pandas DataFrame. ``column``: the prompt
    column; ``rename``: columns to rename first (``"old=new,..."`` or a dict); ``limit`` keeps the first N.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ReinlmError(f"limit: got {limit!r}; allowed: a positive number of prompts, or none for all.")
    mapping = parse_column_map(rename)
    if isinstance(spec, (str, Path)):
        spec_s = str(spec)
        if spec_s.startswith("builtin:"):
            ps = _load_builtin(spec_s[len("builtin:"):], column, mapping)
        elif spec_s.startswith("hf:"):
            ps = _load_hf(spec_s[len("hf:"):], column, mapping)
        else:
            ps = _load_path(Path(spec_s).expanduser(), column, mapping)
        ps.source = spec_s
    else:
        ps = _from_object(spec, column, mapping)
    if len(ps) == 0:
        raise ReinlmError(f"prompts: {ps.source or type(spec).__name__!r} holds no prompts; allowed: a source with "
                          f"at least one prompt.")
    return ps.subset(range(min(limit, len(ps)))) if limit else ps


def _from_object(obj: Any, column: str, mapping: dict[str, str]) -> PromptSet:
    """A PromptSet from a Python object (see :func:`load_prompts`); ``source`` says what it was."""
    if isinstance(obj, PromptSet):
        if not mapping:
            return obj
        kept = {} if obj.completions is None else {"completion": obj.completions}
        return _from_records({"prompt": obj.prompts, **obj.columns, **kept}, column, obj.source or "PromptSet",
                             mapping)
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(obj, (datasets.Dataset, datasets.DatasetDict)):
        ds = _pick_split(obj, None, "the DatasetDict")
        ps = _from_records(ds.to_dict(), column, "datasets.Dataset", mapping)
        ps.source = f"datasets.Dataset(fingerprint={getattr(ds, '_fingerprint', '?')}, rows={len(ds)})"
        return ps
    if hasattr(obj, "to_dict") and hasattr(obj, "columns") and hasattr(obj, "iloc"):  # a pandas DataFrame
        ps = _from_records({c: obj[c].tolist() for c in obj.columns}, column, "DataFrame", mapping)
        ps.source = f"pandas.DataFrame(rows={len(obj)})"
        return ps
    if isinstance(obj, dict):
        ps = _from_records({k: list(v) for k, v in obj.items()}, column, "dict of columns", mapping)
        ps.source = f"dict(rows={len(ps)})"
        return ps
    if isinstance(obj, (list, tuple)):
        items = list(obj)
        if items and all(isinstance(x, str) for x in items):
            ps = _from_records({"prompt": items}, "prompt", "list of strings", {})
        elif items and all(isinstance(x, dict) for x in items) and not _is_message(items[0]):
            names = list(dict.fromkeys(k for r in items for k in r))
            ps = _from_records({k: [r.get(k) for r in items] for k in names}, column, "list of dicts", mapping)
        elif items and all(isinstance(x, list) for x in items):  # a list of conversations
            ps = _from_records({"prompt": items}, "prompt", "list of message lists", {})
        else:
            raise ReinlmError(f"prompts: got a {type(obj).__name__} of {_kinds(items)}; allowed: a list of strings, "
                              f"a list of dicts (one per row, with a {column!r} key), or a list of message lists.")
        ps.source = f"list(rows={len(ps)})"
        return ps
    raise ReinlmError(f"prompts: got a {type(obj).__name__}; allowed: a prompt SPEC string (builtin:NAME, a file, "
                      f"hf:NAME[:CONFIG][:SPLIT]), a datasets.Dataset, a list of strings or of dicts, a dict of "
                      f"columns, a pandas DataFrame, or a PromptSet.")


def _kinds(items: list) -> str:
    kinds = sorted({type(x).__name__ for x in items})
    return "nothing" if not items else ", ".join(kinds)


def _load_builtin(name: str, column: str, mapping: dict[str, str]) -> PromptSet:
    if name not in BUILTIN_SETS:
        raise ReinlmError(f"prompts: unknown built-in prompt set {name!r}; allowed: "
                          f"{', '.join('builtin:' + k for k in BUILTIN_SETS)}.")
    return _load_path(BUILTIN_DIR / BUILTIN_SETS[name], column, mapping)


def check_utf8(path: Path, what: str = "prompts") -> str:
    """The text of ``path`` decoded as UTF-8 (a leading byte-order mark dropped): :func:`reinlm.utils.textfile.read_text`.

    A file that is not UTF-8 raises :class:`ReinlmError` naming the file, the line and the byte at fault.
    """
    return read_text(path, what)


def _load_path(path: Path, column: str, mapping: dict[str, str]) -> PromptSet:
    if not path.exists():
        raise ReinlmError(f"prompts: {str(path)!r} does not exist; allowed: builtin:{'|'.join(BUILTIN_SETS)}, "
                          f"a .txt/.jsonl/.csv/.parquet file, a directory saved by datasets.save_to_disk, "
                          f"or hf:NAME[:CONFIG][:SPLIT].")
    if path.is_dir():
        return _from_records(_load_disk_dataset(path), column, str(path), mapping)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = [ln.strip() for ln in check_utf8(path).splitlines()]
        return PromptSet([ln for ln in lines if ln])
    if suffix in TABLE_SUFFIXES:
        return _from_records(read_table(path, "prompts"), column, str(path), mapping)
    raise ReinlmError(f"prompts: cannot read {str(path)!r} (suffix {suffix or 'none'!r}); allowed: "
                      f".txt, {', '.join(TABLE_SUFFIXES)}, or a directory saved by datasets.save_to_disk.")


def read_table(path: str | Path, what: str = "prompts") -> dict[str, list]:
    """A ``.jsonl`` / ``.csv`` / ``.parquet`` file as ``{column: values}`` (text files must be UTF-8)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ReinlmError(f"{what}: {str(path)!r} does not exist; allowed: an existing {', '.join(TABLE_SUFFIXES)} "
                          f"file.")
    if suffix == ".jsonl":
        check_utf8(path, what)
        rows = [obj for _, obj in read_jsonl_objects(path, what, 'one JSON object per line, e.g. {"prompt": "..."}')]
        names = list(dict.fromkeys(k for r in rows for k in r))
        return {k: [r.get(k) for r in rows] for k in names}
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        if suffix == ".csv":
            check_utf8(path, what)
        try:
            df = (pd.read_csv(path, keep_default_na=False, na_values=[""], encoding="utf-8-sig") if suffix == ".csv"
                  else pd.read_parquet(path))
        except pd.errors.EmptyDataError:
            df = pd.DataFrame()
        except (pd.errors.ParserError, ValueError, OSError) as e:
            raise ReinlmError(f"{what}: cannot read {str(path)!r} as {suffix[1:]} ({type(e).__name__}: {e}); "
                              f"allowed: a well-formed {suffix[1:]} file with a header row.") from e
        return {c: df[c].tolist() for c in df.columns}
    raise ReinlmError(f"{what}: cannot read {str(path)!r} (suffix {suffix or 'none'!r}); allowed: "
                      f"{', '.join(TABLE_SUFFIXES)}.")


def read_table_rows(path: str | Path, what: str = "data") -> list[dict[str, Any]]:
    """A table file (see :func:`read_table`) as one dict per row (missing values are ``None``)."""
    table = read_table(path, what)
    n = max((len(v) for v in table.values()), default=0)
    return [{k: _plain(v)[i] for k, v in table.items()} for i in range(n)]


def _is_message(x: Any) -> bool:
    return isinstance(x, dict) and "role" in x and "content" in x


def _check_prompt(p: Any, i: int, column: str, where: str) -> str | None:
    """``None`` when ``p`` is a valid prompt (text or message list), else why not."""
    if isinstance(p, str):
        return None if p.strip() else "an empty string"
    if isinstance(p, (list, tuple)):
        if not p:
            return "an empty message list"
        for j, m in enumerate(p):
            if not _is_message(m) or not isinstance(m["role"], str):
                return f"a message list whose message {j} is {m!r} (not a {{'role': str, 'content': str}} dict)"
            if not isinstance(m["content"], str):
                return (f"a message list whose message {j} has content of type {type(m['content']).__name__} "
                        f"(multimodal content parts are not supported; allowed: text content)")
        return None
    return f"{p!r} ({type(p).__name__})"


def _from_records(table: dict[str, list], column: str, where: str, mapping: dict[str, str] | None = None) -> PromptSet:
    """Table (column -> values) -> PromptSet; every prompt must be a non-empty string or message list."""
    if not table or all(len(v) == 0 for v in table.values()):
        return PromptSet([])
    if mapping:
        missing = [old for old in mapping if old not in table]
        if missing:
            raise ReinlmError(f"rename_columns: {where!r} has no column {missing[0]!r}; columns present: "
                              f"{', '.join(map(str, table))}.")
        table = {mapping.get(k, k): v for k, v in table.items()}
    if column not in table:
        raise ReinlmError(f"prompts: {where!r} has no column {column!r}; columns present: "
                          f"{', '.join(map(str, table))}. Choose one with the prompt-column option (or rename one "
                          f"with rename-columns, e.g. question=prompt).")
    prompts = [list(p) if isinstance(p, tuple) else p for p in table[column]]
    prompts = [[dict(m) for m in p] if isinstance(p, list) else p for p in prompts]
    for i, p in enumerate(prompts):
        bad = _check_prompt(p, i, column, where)
        if bad:
            raise ReinlmError(f"prompts: {where!r} row {i} has {bad} in column {column!r}; allowed: a non-empty "
                              f"string, or a list of {{\"role\": ..., \"content\": ...}} messages, in every row (fix "
                              f"or remove that row).")
    kinds = {isinstance(p, list) for p in prompts}
    if len(kinds) > 1:
        first = next(i for i, p in enumerate(prompts) if isinstance(p, list) != isinstance(prompts[0], list))
        raise ReinlmError(f"prompts: {where!r} mixes text prompts and message lists (row 0 is "
                          f"{'a message list' if isinstance(prompts[0], list) else 'text'}, row {first} is not); "
                          f"allowed: one kind in a prompt set.")
    reserved = [k for k in table if k in RESERVED_COLUMNS]
    if reserved:
        raise ReinlmError(f"prompts: {where!r} has a column named {reserved[0]!r}, a name every reward already gets as "
                          f"an argument ({', '.join(RESERVED_COLUMNS)}); allowed: another name, e.g. "
                          f"rename-columns {reserved[0]}={reserved[0]}_column.")
    columns = {k: _plain(v) for k, v in table.items() if k != column and k not in NOT_REWARD_COLUMNS}
    return PromptSet(prompts, columns, completions=_plain(table["completion"]) if "completion" in table else None)


def _plain(values: list) -> list:
    """NaN -> None, so missing values look the same whatever the file format."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def _load_disk_dataset(path: Path) -> dict[str, list]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ReinlmError(f"prompts: {str(path)!r} is a directory but not one saved by datasets.save_to_disk; "
                          f"allowed: such a directory, or a .txt/.jsonl/.csv/.parquet file.") from e
    return _pick_split(ds, None, str(path)).to_dict()


def _pick_split(ds: Any, split: str | None, where: str):
    import datasets

    if not isinstance(ds, datasets.DatasetDict):
        return ds
    names = list(ds.keys())
    want = split or ("train" if "train" in ds or len(names) != 1 else names[0])
    if want not in ds:
        raise ReinlmError(f"prompts: {where!r} has no split {want!r}; splits present: {', '.join(names)}.")
    return ds[want]


def parse_hf_spec(rest: str) -> tuple[str, str | None, str]:
    """``NAME[:CONFIG][:SPLIT]`` -> ``(name, config, split)``.

    With one part after NAME it is the split when it looks like one (``train``, ``test``, ``validation``,
    ``dev``, ..., with an optional slice such as ``train[:100]``), else the config; ``NAME:CONFIG:SPLIT`` is
    always read in that order (``NAME::SPLIT`` = default config).
    """
    parts, depth, cur = [], 0, ""
    for ch in rest:  # split on ':' outside [...] (a split slice such as train[:100] holds one)
        depth += (ch == "[") - (ch == "]")
        if ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    name = parts[0].strip()
    if not name or len(parts) > 3:
        raise ReinlmError(f"prompts: cannot read hf:{rest!r}; allowed: hf:NAME, hf:NAME:SPLIT, hf:NAME:CONFIG or "
                          f"hf:NAME:CONFIG:SPLIT, e.g. hf:stanfordnlp/imdb:test or hf:openai/gsm8k:main:train.")
    if len(parts) == 1:
        return name, None, "train"
    if len(parts) == 2:
        x = parts[1].strip()
        return (name, None, x) if SPLIT_NAMES.match(x) else (name, x or None, "train")
    return name, parts[1].strip() or None, parts[2].strip() or "train"


def _load_hf(rest: str, column: str, mapping: dict[str, str]) -> PromptSet:
    """``hf:NAME[:CONFIG][:SPLIT]`` via ``datasets.load_dataset`` (needs the network or the local datasets cache)."""
    import datasets

    name, config, split = parse_hf_spec(rest)
    where = f"hf:{name}" + (f":{config}" if config else "") + f":{split}"
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except (FileNotFoundError, ConnectionError, OSError, ValueError, KeyError) as e:
        raise ReinlmError(f"prompts: cannot load Hugging Face dataset {name!r} (config {config or 'default'}, split "
                          f"{split!r}): {type(e).__name__}: {' '.join(str(e).split())}; allowed: a dataset id reachable online or already in "
                          f"the local datasets cache (or a local dataset directory), one of its configs and one of its "
                          f"splits, as hf:NAME[:CONFIG][:SPLIT].") from e
    return _from_records(ds.to_dict(), column, where, mapping)
