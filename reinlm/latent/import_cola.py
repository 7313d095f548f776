"""``reinlm latent import-cola SRC OUT``: a CoLA checkpoint (LAMDA-RL/CoLA, e.g. Llama-3.1-CoLA-10B) as a latent
model directory of reinlm.

CoLA's Hugging Face format (``IntentionForCausalLM`` with ``IntentionModel_v1``, config ``"v": 1`` or ``2``)
holds the whole model in one state dict: the Llama backbone (``model.embed_tokens``, ``model.layers.*``,
``model.norm``, ``lm_head``) beside the heads

- IDM: ``model.action_layers.{i}.*`` (Llama decoder layers), ``model.action_norm``, ``model.action_head``;
- world model: ``model.action_code_book`` (``Linear(K -> H)``), ``model.action_merge_layers.{i}.{gate,up,
  down}_proj`` (``s <- s + down(silu(gate([s; c])) * up([s; c]))``, read out as ``lm_head(norm(s) - h)``);
- policy: ``model.policy_layers.{i}.*``, ``model.policy_norm``, ``model.policy_head``;

and the config keys ``num_code`` (K), ``num_action_layer``, ``num_dyna_layer``, ``num_policy_layer``, ``v``.
These heads are reinlm's ``cola`` preset (docs/latent.md): the converter renames keys, fuses each layer's
q/k/v projections into one ``qkv`` weight, and writes ``config.json`` + ``heads.safetensors``. The backbone
is either checked against a given model (every tensor equal) or exported as ``OUT/backbone/`` (a plain Llama
directory with SRC's tokenizer; ``config.json`` then names ``./backbone``).

Weights are read one tensor at a time (``*.safetensors`` or ``*.bin``, one file or shards with an
``*.index.json``), so the converter needs about the heads' size in memory (6.4 GB for CoLA-10B in bfloat16),
plus the backbone when it is checked.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch

from reinlm.config.schema import Config, opt
from reinlm.errors import ReinlmError
from reinlm.latent.config import LatentConfig
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.integrity import safetensors_problem
from reinlm.utils.jsonio import write_json

log = logging.getLogger(__name__)

COLA_KEYS = ("num_code", "num_action_layer", "num_dyna_layer", "num_policy_layer")
HEAD_PREFIXES = ("model.action_", "model.policy_")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja")
ALLOWED = ("allowed: a CoLA checkpoint directory in Hugging Face format (config.json with num_code, "
           "num_action_layer, num_dyna_layer, num_policy_layer and v = 1 or 2; weights as model.safetensors, "
           "pytorch_model.bin, or shards with their .index.json), e.g. LAMDA-RL/Llama-3.1-CoLA-10B")


@dataclass
class ImportColaConfig(Config):
    """Options of ``reinlm latent import-cola`` (SRC and OUT are positional)."""

    src: str = opt("", help="CoLA checkpoint directory (Hugging Face format)", flag=False)
    out: str = opt("", help="latent model directory to write", flag=False)
    backbone: str = opt("", help="check the checkpoint's backbone against this model (alias, path or HF id; "
                                 "every tensor must be equal) and name it in config.json; default: export the "
                                 "checkpoint's backbone to OUT/backbone")
    heads_dtype: Literal["auto", "float32", "bfloat16"] = opt(
        "auto", help="dtype of the imported heads (auto = the checkpoint's: bfloat16 stays bfloat16)")
    overwrite: bool = opt(False, help="replace OUT if it exists")


# ---------------------------------------------------------------------------------------------- reading

class CheckpointReader:
    """Tensors of a HF checkpoint directory by name, read lazily (safetensors or torch .bin, sharded or not).

    ``tool`` and ``allowed`` word its errors (``import-cola`` / ``import-bwarea``). Every safetensors file is
    checked to be complete before it is read: a truncated shard is refused by name."""

    def __init__(self, src: Path, tool: str = "import-cola", allowed: str = ALLOWED):
        self.src, self.tool, self.allowed = src, tool, allowed
        self.files = self._weight_files(src)  # key -> file
        self._open: dict[Path, object] = {}

    def _weight_files(self, src: Path) -> dict[str, Path]:
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (src / index).is_file():
                try:
                    weight_map = json.loads((src / index).read_text())["weight_map"]
                except (ValueError, KeyError) as e:
                    raise ReinlmError(f"{self.tool}: {str(src / index)!r} is not a weight index ({e}); "
                                      f"{self.allowed}.")
                for f in sorted(set(weight_map.values())):
                    if not (src / f).is_file():
                        raise ReinlmError(f"{self.tool}: the shard {f!r} named in {index} is missing from "
                                          f"{str(src)!r}; copy the checkpoint again.")
                    self._check_file(src / f)
                return {k: src / f for k, f in weight_map.items()}
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (src / single).is_file():
                self._check_file(src / single)
                return {k: src / single for k in self._keys_of(src / single)}
        found = sorted(p.name for p in src.iterdir())[:12]
        raise ReinlmError(f"{self.tool}: {str(src)!r} has no model.safetensors, pytorch_model.bin or shard index "
                          f"(it holds: {', '.join(found) or 'nothing'}); {self.allowed}.")

    def _check_file(self, path: Path) -> None:
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
        if problem:
            raise ReinlmError(f"{self.tool}: the weight file {str(path)!r} is damaged: {problem}; copy the "
                              f"checkpoint again.")

    def _keys_of(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return list(f.keys())
        return list(_torch_load(path, self.tool).keys())

    def keys(self) -> list[str]:
        return list(self.files)

    def get(self, key: str) -> torch.Tensor:
        path = self.files[key]
        if path not in self._open:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                self._open[path] = safe_open(str(path), "pt")
            else:
                self._open[path] = _torch_load(path, self.tool)
        f = self._open[path]
        return f.get_tensor(key) if path.suffix == ".safetensors" else f[key]

    def by_file(self) -> Iterator[tuple[Path, list[str]]]:
        """(file, its keys) in file order, closing each file after use (bounded memory for big shards)."""
        groups: dict[Path, list[str]] = {}
        for k, p in self.files.items():
            groups.setdefault(p, []).append(k)
        for p in sorted(groups):
            yield p, groups[p]
            self._open.pop(p, None)


def _torch_load(path: Path, tool: str = "import-cola") -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise ReinlmError(f"{tool}: cannot read the weight file {str(path)!r} (truncated or not a torch checkpoint: "
                          f"{type(e).__name__}: {e}); copy the checkpoint again.") from e


# ---------------------------------------------------------------------------------------------- layout checks

def read_cola_config(src: Path, keys: list[str] | None = None) -> dict:
    """SRC's config.json, checked to be CoLA's v1 layout; names what is wrong otherwise (BWArea, v1a, a plain LM)."""
    if not src.is_dir():
        raise ReinlmError(f"import-cola: {str(src)!r} is not a directory; {ALLOWED}.")
    if not (src / "config.json").is_file():
        raise ReinlmError(f"import-cola: {str(src)!r} has no config.json; {ALLOWED}.")
    try:
        cfg = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise ReinlmError(f"import-cola: {str(src / 'config.json')!r} is not valid JSON ({e}); {ALLOWED}.") from e
    if "num_dim" in cfg and "num_action_layer" not in cfg:
        raise ReinlmError(f"import-cola: {str(src)!r} is a BWArea checkpoint (LAMDA-RL/BWArea layout: config.json "
                          f"has num_code, num_dim and action_dim; its parts own their embeddings), not CoLA's; "
                          f"import it with `reinlm latent import-bwarea {src} OUT`.")
    missing = [k for k in COLA_KEYS if k not in cfg]
    if missing:
        raise ReinlmError(f"import-cola: {str(src)!r} is not a CoLA checkpoint: its config.json lacks "
                          f"{', '.join(missing)} (model_type {cfg.get('model_type')!r}); {ALLOWED}.")
    keys = keys or []
    bwarea = any(k.startswith(("model.action_state_norm", "model.action_action_norm")) for k in keys)
    v = cfg.get("v")
    if bwarea or v is None or v not in (0, 1, 2):
        raise ReinlmError(
            f"import-cola: {str(src)!r} uses the BWArea / IntentionModel layout (config 'v' = {v!r}): its action "
            f"enters *inside* the backbone, between two decoder layers, through action_state_norm and "
            f"action_action_norm, and the backbone's remaining layers then run on the merged state. reinlm's heads "
            f"read the backbone's final state (CoLA's IntentionModel_v1), so this layout cannot be imported; "
            f"{ALLOWED}.")
    if v == 0:
        raise ReinlmError(f"import-cola: {str(src)!r} is CoLA's policy-only variant (IntentionModel_v1a, 'v': 0): "
                          f"it has no inverse dynamics model, which a reinlm latent model needs; {ALLOWED}.")
    check_llama_layers(cfg, "import-cola")
    return cfg


def check_llama_layers(cfg: dict, tool: str, plain_rope: bool = False) -> None:
    """The checkpoint's decoder layers are bias-free SwiGLU Llama layers (what reinlm's blocks compute), with
    plain RoPE when ``plain_rope`` (BWArea's own layers; CoLA's heads take the backbone's RoPE, scaling included);
    raises naming the config field otherwise."""
    if cfg.get("hidden_act", "silu") != "silu":
        raise ReinlmError(f"{tool}: hidden_act {cfg.get('hidden_act')!r}; allowed: silu (Llama's SwiGLU).")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ReinlmError(f"{tool}: the checkpoint's layers have attention or MLP biases; allowed: bias-free "
                          f"Llama layers.")
    if plain_rope and cfg.get("rope_scaling"):
        raise ReinlmError(f"{tool}: rope_scaling {cfg['rope_scaling']!r}; allowed: none (plain RoPE).")


def latent_config_from_cola(cfg: dict, backbone: str, heads_dtype: str) -> LatentConfig:
    """The cola preset with the checkpoint's K, layer counts and widths."""
    H, nh = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    return LatentConfig(
        backbone=backbone, hidden_size=H, vocab_size=int(cfg["vocab_size"]), num_actions=int(cfg["num_code"]),
        preset="cola", d_model=H, n_heads=nh, n_kv_heads=int(cfg.get("num_key_value_heads") or nh),
        head_dim=int(cfg.get("head_dim") or H // nh), mlp_ffn=int(cfg["intermediate_size"]),
        wm_ffn=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        idm_layers=int(cfg["num_action_layer"]), policy_layers=int(cfg["num_policy_layer"]),
        wm_layers=int(cfg["num_dyna_layer"]), heads_dtype=heads_dtype)


# ---------------------------------------------------------------------------------------------- key mapping

_LAYER = re.compile(r"^model\.(action|policy)_layers\.(\d+)\.(.+)$")
_MERGE = re.compile(r"^model\.action_merge_layers\.(\d+)\.(gate|up|down)_proj\.weight$")
_LAYER_PARTS = {"input_layernorm.weight": "norm1.weight", "post_attention_layernorm.weight": "norm2.weight",
                "self_attn.o_proj.weight": "proj.weight", "mlp.gate_proj.weight": "mlp.gate.weight",
                "mlp.up_proj.weight": "mlp.up.weight", "mlp.down_proj.weight": "mlp.down.weight"}
_SINGLE = {"model.action_norm.weight": "idm.norm.weight", "model.action_head.weight": "idm.out.weight",
           "model.policy_norm.weight": "policy.norm.weight", "model.policy_head.weight": "policy.out.weight",
           "model.action_code_book.weight": "world_model.codebook.weight"}


def convert_heads(reader: CheckpointReader, cfg: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """CoLA's head tensors -> reinlm's ``heads.safetensors`` keys (q/k/v fused into ``qkv``), cast to ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key in reader.keys():
        if not key.startswith(HEAD_PREFIXES):
            continue
        if key in _SINGLE:
            out[_SINGLE[key]] = reader.get(key)
        elif m := _MERGE.match(key):
            out[f"world_model.blocks.{m[1]}.ff.{m[2]}.weight"] = reader.get(key)
        elif m := _LAYER.match(key):
            stack = "idm" if m[1] == "action" else "policy"
            part = m[3]
            if part in _LAYER_PARTS:
                out[f"{stack}.blocks.{m[2]}.{_LAYER_PARTS[part]}"] = reader.get(key)
            elif q := re.match(r"^self_attn\.([qkv])_proj\.weight$", part):
                qkv.setdefault(f"{stack}.blocks.{m[2]}.qkv.weight", {})[q[1]] = reader.get(key)
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ReinlmError(f"import-cola: the checkpoint has head tensors this converter does not know: "
                          f"{', '.join(unknown[:6])}; {ALLOWED}.")
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ReinlmError(f"import-cola: {name.rsplit('.', 2)[0]} lacks some of its q/k/v projections "
                              f"(found {sorted(parts)}); the checkpoint is incomplete.")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    want = {"idm": int(cfg["num_action_layer"]), "policy": int(cfg["num_policy_layer"])}
    for stack, n in want.items():
        have = {int(k.split(".")[2]) for k in out if k.startswith(f"{stack}.blocks.")}
        if have != set(range(n)):
            raise ReinlmError(f"import-cola: config.json says {n} {stack} layers but the checkpoint holds layers "
                              f"{sorted(have)}; the checkpoint is incomplete or mislabelled.")
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- backbone

def backbone_config(cfg: dict) -> dict:
    """SRC's config.json as a plain Llama config (CoLA's keys and architecture removed)."""
    out = {k: v for k, v in cfg.items() if k not in (*COLA_KEYS, "v", "auto_map")}
    out.update(architectures=["LlamaForCausalLM"], model_type="llama")
    return out


def export_backbone(reader: CheckpointReader, cfg: dict, src: Path, dest: Path) -> int:
    """Write the backbone's tensors (unchanged dtype, one output shard per input file) with an index, a Llama
    config.json and SRC's tokenizer files. Returns the number of tensors written."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    files = [(p, [k for k in keys if not k.startswith(HEAD_PREFIXES)]) for p, keys in reader.by_file()]
    files = [(p, keys) for p, keys in files if keys]
    weight_map, n = {}, 0
    for i, (path, keys) in enumerate(files):
        name = "model.safetensors" if len(files) == 1 else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        tensors = {k: reader.get(k).contiguous() for k in keys}
        save_file(tensors, str(dest / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
        n += len(tensors)
        del tensors
    if len(files) > 1:
        write_json(dest / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    write_json(dest / "config.json", backbone_config(cfg))
    copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    for f in copied:
        shutil.copy2(src / f, dest / f)
    if not any(f.startswith("tokenizer") for f in copied):
        log.warning("import-cola: %s has no tokenizer files; put the backbone's tokenizer into %s", src, dest)
    return n


def check_backbone(reader: CheckpointReader, name: str, dtype: torch.dtype) -> tuple[int, str]:
    """Load the backbone ``name`` and compare it with the checkpoint's backbone tensors (cast to the
    checkpoint's dtype: exactly equal). Returns (tensors compared, tokenizer source). Raises on a difference."""
    from reinlm.hub import load_causal_lm

    model, _ = load_causal_lm(name, device="cpu", dtype="float32" if dtype == torch.float32 else "bfloat16")
    ref = model.state_dict()
    n = 0
    for key in reader.keys():
        if key.startswith(HEAD_PREFIXES):
            continue
        if key not in ref:
            raise ReinlmError(f"import-cola: the checkpoint's backbone tensor {key!r} has no counterpart in "
                              f"{name!r}; pass the backbone CoLA was trained on, or omit --backbone to export "
                              f"the checkpoint's own.")
        got, want = reader.get(key), ref[key]
        if got.shape != want.shape or not torch.equal(got.to(want.dtype), want):
            diff = (got.float() - want.float()).abs().max().item() if got.shape == want.shape else None
            raise ReinlmError(
                f"import-cola: the checkpoint's backbone differs from {name!r} at {key!r} ("
                + (f"shape {tuple(got.shape)} vs {tuple(want.shape)}" if diff is None else f"max |difference| {diff:.3g}")
                + "); it was fine-tuned or is another model: omit --backbone to export the checkpoint's own "
                  "backbone to OUT/backbone.")
        n += 1
    del model, ref
    return n, name


# ---------------------------------------------------------------------------------------------- entry point

def import_cola(cfg: ImportColaConfig) -> dict:
    """Convert ``cfg.src`` into the latent model directory ``cfg.out``; returns a summary dict."""
    src, out = Path(cfg.src).expanduser(), Path(cfg.out).expanduser()
    if not cfg.src or not cfg.out:
        raise ReinlmError("import-cola: needs SRC and OUT, e.g. `reinlm latent import-cola ./Llama-3.1-CoLA-10B "
                          "runs/cola10b`.")
    if out.exists() and not cfg.overwrite:
        raise ReinlmError(f"import-cola: {str(out)!r} exists; pass --overwrite to replace it, or choose another OUT.")
    if not (src / "config.json").is_file():
        read_cola_config(src)  # names what is wrong with SRC
    reader = CheckpointReader(src)
    cola = read_cola_config(src, reader.keys())
    sample = reader.get("model.action_code_book.weight") if "model.action_code_book.weight" in reader.files else None
    if sample is None:
        raise ReinlmError(f"import-cola: {str(src)!r} has no model.action_code_book.weight; {ALLOWED}.")
    ckpt_dtype = sample.dtype
    heads_dtype = cfg.heads_dtype if cfg.heads_dtype != "auto" else (
        "bfloat16" if ckpt_dtype in (torch.bfloat16, torch.float16) else "float32")
    heads = convert_heads(reader, cola, getattr(torch, heads_dtype))
    summary = {"src": str(src), "out": str(out), "num_actions": int(cola["num_code"]),
               "idm_layers": int(cola["num_action_layer"]), "policy_layers": int(cola["num_policy_layer"]),
               "wm_layers": int(cola["num_dyna_layer"]), "heads_dtype": heads_dtype,
               "checkpoint_dtype": str(ckpt_dtype).replace("torch.", ""),
               "heads_parameters": int(sum(t.numel() for t in heads.values()))}
    with atomic_dir(out) as tmp:
        if cfg.backbone:
            n, _ = check_backbone(reader, cfg.backbone, ckpt_dtype if ckpt_dtype != torch.float16 else torch.bfloat16)
            backbone_name = cfg.backbone
            summary["backbone_check"] = f"{n} tensors equal to {cfg.backbone}"
        else:
            n = export_backbone(reader, cola, src, tmp / "backbone")
            backbone_name = "./backbone"
            summary["backbone_export"] = f"{n} tensors written to {out / 'backbone'}"
        latent = latent_config_from_cola(cola, backbone_name, heads_dtype)
        from safetensors.torch import save_file

        write_json(tmp / "config.json", {**latent.to_dict(), "imported_from": str(src)})
        save_file(heads, str(tmp / "heads.safetensors"), metadata={"format": "pt"})
        for f in TOKENIZER_FILES:  # beside the heads too: the CoLA card's AutoTokenizer.from_pretrained(OUT)
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
    summary["backbone"] = backbone_name
    return summary
