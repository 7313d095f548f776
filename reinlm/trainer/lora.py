"""LoRA (Hu et al. 2021, via peft): adapter configuration from the ``--lora-*`` flags, and portable outputs.

A LoRA run's ``final/`` directory holds the **adapter** (``adapter_config.json`` + ``adapter_model.safetensors``
+ the tokenizer), loadable with plain PEFT calls (``peft.AutoPeftModelForCausalLM.from_pretrained(RUN_DIR/final)``
or ``peft.PeftModel.from_pretrained(base_model, RUN_DIR/final)``); with ``--lora-save-merged`` also
``final/merged/``, the **merged** model (an ordinary model directory, the size of the base model).

``base_model_name_or_path`` in the adapter config is what PEFT and transformers can load (:func:`peft_base_path`):
a Hugging Face id as given, a local directory as an absolute path, and for an embedded alias or a ``.gguf`` file
the local directory reinlm de-quantised it into (an alias is not a hub id, and a GGUF is not what
``from_pretrained`` reads). The name the user gave is kept beside it in ``reinlm_base.json``
(:data:`reinlm.hub.ADAPTER_BASE_FILE`), so reinlm still finds the base on a machine where that directory does
not exist. Checkpoints' adapters record the same.

``--lora-targets`` takes peft's forms: ``all-linear`` (every linear layer but the output head), a comma list of
module names (``q_proj,v_proj``; a name matches a module whose name ends with it), or a regular expression
that must match a module's full name (``.*\\.(q|v)_proj``; any value with regex characters).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reinlm.errors import ConfigError
from reinlm.hub import ADAPTER_BASE_FILE, EMBEDDED_ALIASES, resolve_model_dir
from reinlm.utils.jsonio import write_json

if TYPE_CHECKING:  # peft loads only with --lora-r > 0
    from peft import LoraConfig, PeftModel

MERGED_DIR = "merged"  # final/merged/: the merged model of a LoRA run
_REGEX_CHARS = re.compile(r"[\\^$*+?()\[\]{}|]")


def lora_target_modules(spec: str) -> str | list[str]:
    """``--lora-targets`` -> peft's ``target_modules``: ``"all-linear"``, a regex string, or a list of names."""
    text = str(spec).strip()
    if not text:
        raise ConfigError("lora_targets: got an empty value; allowed: all-linear, a comma list of module names "
                          "(q_proj,v_proj) or a regular expression matching full module names.")
    if text == "all-linear":
        return text
    if _REGEX_CHARS.search(text):
        try:
            re.compile(text)
        except re.error as e:
            raise ConfigError(f"lora_targets: got {text!r}, which is not a valid regular expression ({e}); allowed: "
                              f"all-linear, a comma list of module names, or a valid regular expression.") from e
        return text
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"lora_targets: got {text!r}; allowed: all-linear, a comma list of module names or a "
                          f"regular expression.")
    return names


def lora_config(r: int, alpha: int, targets: str) -> LoraConfig:
    """A ``peft.LoraConfig`` for a causal LM (no dropout)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_target_modules(targets),
                      task_type="CAUSAL_LM")


def apply_lora(model: torch.nn.Module, r: int, alpha: int, targets: str, base_name: str) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; a target that matches no module is a :class:`ConfigError`
    listing some of the model's linear layers."""
    from peft import get_peft_model

    cfg = lora_config(r, alpha, targets)
    try:
        peft_model = get_peft_model(model, cfg)
    except ValueError as e:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(f"lora_targets: got {targets!r}, which matches no module of this model ({e}); allowed: "
                          f"all-linear, or names among {', '.join(linear)}.") from e
    set_base_name(peft_model, base_name)
    return peft_model


def set_base_name(peft_model: torch.nn.Module, base_name: str) -> None:
    """Record ``base_name`` as ``base_model_name_or_path`` in every adapter config of ``peft_model`` (peft fills
    it from the loaded model, which is a cache directory for GGUF and embedded models)."""
    for conf in getattr(peft_model, "peft_config", {}).values():
        conf.base_model_name_or_path = base_name


def peft_base_path(base_name: str) -> str:
    """What an adapter records as ``base_model_name_or_path`` for the model the user named ``base_name``: the
    local directory reinlm loads for an embedded alias or a ``.gguf`` file, the absolute path of a local
    directory, a Hugging Face id unchanged (so ``AutoPeftModelForCausalLM.from_pretrained`` finds the base)."""
    name = str(base_name)
    local = Path(name).expanduser()
    if name in EMBEDDED_ALIASES or name.endswith(".gguf") or local.exists():
        return str(Path(resolve_model_dir(name)).resolve())
    return name


def save_adapter(peft_model: PeftModel, out_dir: str | Path, base_name: str) -> None:
    """Write the adapter of ``peft_model`` to ``out_dir``: ``base_model_name_or_path`` = :func:`peft_base_path`,
    and the name the user gave in ``reinlm_base.json`` when the two differ.

    ``save_embedding_layers=False``: LoRA here never changes the embeddings, and the default ("auto") looks the
    base model up on the hub at every save.
    """
    out_dir = Path(out_dir)
    base_path = peft_base_path(base_name)
    set_base_name(peft_model, base_path)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)
    if base_path != str(base_name):
        write_json(out_dir / ADAPTER_BASE_FILE, {"model": str(base_name)})


def save_lora_final(peft_model: PeftModel, tokenizer: Any, out_dir: str | Path, base_name: str,
                    merged: bool = False) -> None:
    """Write ``out_dir`` = the adapter (+ tokenizer) and, with ``merged``, ``out_dir/merged`` = the merged model
    (+ tokenizer)."""
    out_dir = Path(out_dir)
    save_adapter(peft_model, out_dir, base_name)
    tokenizer.save_pretrained(str(out_dir))
    if merged:
        model = copy.deepcopy(peft_model).merge_and_unload()
        model.save_pretrained(str(out_dir / MERGED_DIR), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir / MERGED_DIR))


def describe_targets(peft_model: torch.nn.Module) -> dict[str, Any]:
    """Which modules the adapters were put on: ``{"n_modules": int, "names": sorted short names}``."""
    names = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {}))]
    return {"n_modules": len(names), "names": sorted({n.split(".")[-1] for n in names})}
