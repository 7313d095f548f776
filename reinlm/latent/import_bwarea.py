"""``reinlm latent import-bwarea SRC OUT``: a BWArea checkpoint (LAMDA-RL/Pretrained_BWArea_2.7B_30G) as a latent
model directory of reinlm (:mod:`reinlm.latent.bwarea`).

BWArea's Hugging Face format (``IntentionForCausalLM`` over ``IntentionVQModel``) is a Llama config with
``num_code`` (K), ``num_dim`` (the code book's width) and ``action_dim``, and one state dict:

- world model: ``model.transformer.{wte, h.{i}, ln_f}`` (L Llama layers), ``model.dynamics_layer``,
  ``model.dynamics_norm``, ``lm_head``;
- inverse dynamics: ``model.transformer_action_enc.{wte, h.{i}, ln_f}`` (L/2 layers), ``model.press_layer``;
- code book: ``model.action_code_book.embed``, ``model.unpress_layer``;
- policy: ``model.transformer_policy.{wte, h.{i}, ln_f}`` (L layers), ``model.transformer_policy_layer``;
- ``model.embed_tokens`` (read by no forward; dropped) and rotary ``inv_freq`` buffers (rebuilt; dropped).

The converter renames keys, fuses each layer's q/k/v projections into one ``qkv`` weight (the layout of
:class:`~reinlm.latent.modules.CausalBlock`), keeps the stored dtype, and reads one tensor at a time (the output
is held once: peak memory about the size of the weights). Unknown or missing keys are refused naming the first.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from reinlm.config.schema import Config, opt
from reinlm.errors import ReinlmError
from reinlm.latent.bwarea import CONFIG_FILE, MODEL_TYPE, WEIGHTS_FILE, BWAreaConfig, BWAreaModel
from reinlm.latent.import_cola import COLA_KEYS, TOKENIZER_FILES, CheckpointReader, check_llama_layers
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.jsonio import write_json

BWAREA_KEYS = ("num_code", "num_dim", "action_dim")
ALLOWED = ("allowed: a BWArea checkpoint directory in Hugging Face format (config.json with num_code, num_dim and "
           "action_dim; weights as model.safetensors, pytorch_model.bin, or shards with their .index.json), e.g. "
           "LAMDA-RL/Pretrained_BWArea_2.7B_30G, or its hub id when it is in the local Hugging Face cache")


@dataclass
class ImportBWAreaConfig(Config):
    """Options of ``reinlm latent import-bwarea`` (SRC and OUT are positional)."""

    src: str = opt("", help="BWArea checkpoint directory (Hugging Face format) or hub id (local cache)", flag=False)
    out: str = opt("", help="latent model directory to write", flag=False)
    overwrite: bool = opt(False, help="replace OUT if it exists")


# ---------------------------------------------------------------------------------------------- layout

def resolve_source(src: str) -> Path:
    """SRC as a directory: a path, or a hub id resolved from the local Hugging Face cache (never downloaded)."""
    path = Path(src).expanduser()
    if path.exists() or src.count("/") != 1 or src.startswith((".", "/", "~")):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - not cached, or no such repo: one clear message
        raise ReinlmError(f"import-bwarea: {src!r} is neither a directory nor a hub id in the local Hugging Face "
                          f"cache ({type(e).__name__}); download it first (huggingface-cli download {src}) or pass "
                          f"its directory; {ALLOWED}.") from e


def read_bwarea_config(src: Path) -> dict:
    """SRC's config.json, checked to be BWArea's layout; names the layout it is otherwise (CoLA, reinlm's own)."""
    if not src.is_dir():
        raise ReinlmError(f"import-bwarea: {str(src)!r} is not a directory; {ALLOWED}.")
    if not (src / "config.json").is_file():
        raise ReinlmError(f"import-bwarea: {str(src)!r} has no config.json; {ALLOWED}.")
    try:
        cfg = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise ReinlmError(f"import-bwarea: {str(src / 'config.json')!r} is not valid JSON ({e}); {ALLOWED}.") from e
    if not isinstance(cfg, dict):
        raise ReinlmError(f"import-bwarea: {str(src / 'config.json')!r} is not a JSON object; {ALLOWED}.")
    if str(cfg.get("model_type", "")).startswith("reinlm-latent"):
        raise ReinlmError(f"import-bwarea: {str(src)!r} is already a reinlm latent model directory (model_type "
                          f"{cfg['model_type']!r}); use it as it is (--latent {src}).")
    if all(k in cfg for k in COLA_KEYS):
        raise ReinlmError(f"import-bwarea: {str(src)!r} is a CoLA checkpoint (IntentionModel_v1 layout: config.json "
                          f"has num_action_layer, num_dyna_layer, num_policy_layer; heads over a frozen Llama "
                          f"backbone), not BWArea's; import it with `reinlm latent import-cola {src} OUT`.")
    missing = [k for k in BWAREA_KEYS if k not in cfg]
    if missing:
        raise ReinlmError(f"import-bwarea: {str(src)!r} is not a BWArea checkpoint: its config.json lacks "
                          f"{', '.join(missing)} (model_type {cfg.get('model_type')!r}); {ALLOWED}.")
    check_llama_layers(cfg, "import-bwarea", plain_rope=True)
    return cfg


def bwarea_config(cfg: dict, dtype: torch.dtype, src: str) -> BWAreaConfig:
    """reinlm's :class:`BWAreaConfig` from BWArea's config.json."""
    nh = int(cfg["num_attention_heads"])
    return BWAreaConfig(
        vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]), num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=nh, num_key_value_heads=int(cfg.get("num_key_value_heads") or nh),
        head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // nh),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)), num_code=int(cfg["num_code"]),
        num_dim=int(cfg["num_dim"]), weights_dtype=str(dtype).replace("torch.", ""), imported_from=src)


# ---------------------------------------------------------------------------------------------- key mapping

_STACKS = {"transformer": "world", "transformer_action_enc": "idm", "transformer_policy": "policy"}
_STACK_KEY = re.compile(r"^model\.(transformer|transformer_action_enc|transformer_policy)\.(wte\.weight|ln_f\.weight|"
                        r"h\.(\d+)\.(.+))$")
_SINGLE = {"lm_head.weight": "world.lm_head.weight", "model.dynamics_layer.weight": "world.dynamics.weight",
           "model.dynamics_norm.weight": "world.dynamics_norm.weight", "model.press_layer.weight": "idm.out.weight",
           "model.action_code_book.embed.weight": "codebook.embed.weight",
           "model.unpress_layer.weight": "codebook.unpress.weight",
           "model.transformer_policy_layer.weight": "policy.out.weight"}
_EMBED = {"world": "world.embed.weight", "idm": "idm.inp.weight", "policy": "policy.inp.weight"}
_NORM = {"world": "world.norm.weight", "idm": "idm.norm.weight", "policy": "policy.norm.weight"}
_LAYER_PARTS = {"input_layernorm.weight": "norm1.weight", "post_attention_layernorm.weight": "norm2.weight",
                "self_attn.o_proj.weight": "proj.weight", "mlp.gate_proj.weight": "mlp.gate.weight",
                "mlp.up_proj.weight": "mlp.up.weight", "mlp.down_proj.weight": "mlp.down.weight"}
DROPPED = ("model.embed_tokens.weight",)  # BWArea's get_input_embeddings(): no forward reads it


def map_key(key: str) -> str | tuple[str, str] | None:
    """BWArea's key -> reinlm's key, (reinlm's fused qkv key, 'q'|'k'|'v'), ``""`` for a key dropped on
    purpose, or ``None`` for an unknown key."""
    if key in _SINGLE:
        return _SINGLE[key]
    if key in DROPPED or key.endswith(".rotary_emb.inv_freq"):
        return ""
    m = _STACK_KEY.match(key)
    if not m:
        return None
    stack = _STACKS[m[1]]
    if m[2] == "wte.weight":
        return _EMBED[stack]
    if m[2] == "ln_f.weight":
        return _NORM[stack]
    part = m[4]
    if part in _LAYER_PARTS:
        return f"{stack}.blocks.{m[3]}.{_LAYER_PARTS[part]}"
    if q := re.match(r"^self_attn\.([qkv])_proj\.weight$", part):
        return f"{stack}.blocks.{m[3]}.qkv.weight", q[1]
    return None


def convert(reader: CheckpointReader, expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Every tensor of SRC under reinlm's names (q/k/v fused), in the stored dtype. Raises naming the first
    unknown key, the first missing key, or the first tensor of an unexpected shape."""
    for key in reader.keys():
        if map_key(key) is None:
            raise ReinlmError(f"import-bwarea: unknown tensor {key!r} in {str(reader.src)!r} (not part of BWArea's "
                              f"IntentionVQModel); {ALLOWED}.")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for path, keys in reader.by_file():
        for key in keys:
            name = map_key(key)
            if name == "":
                continue
            t = reader.get(key)
            if isinstance(name, tuple):
                parts = qkv.setdefault(name[0], {})
                parts[name[1]] = t
                if len(parts) == 3:
                    out[name[0]] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
                    del qkv[name[0]]
            else:
                out[name] = t.contiguous()
    for name, parts in qkv.items():
        missing = [f"{name.rsplit('.', 2)[0]}: self_attn.{x}_proj.weight" for x in "qkv" if x not in parts]
        raise ReinlmError(f"import-bwarea: missing tensor {missing[0]} (the checkpoint is incomplete); {ALLOWED}.")
    for name, shape in expected.items():
        if name not in out:
            raise ReinlmError(f"import-bwarea: missing tensor for {name!r} (config.json's sizes need it; the "
                              f"checkpoint is incomplete or its config is not its own); {ALLOWED}.")
        if out[name].shape != shape:
            raise ReinlmError(f"import-bwarea: {name!r} has shape {tuple(out[name].shape)} but config.json's sizes "
                              f"give {tuple(shape)}; the config is not this checkpoint's.")
    extra = [k for k in out if k not in expected]
    if extra:
        raise ReinlmError(f"import-bwarea: tensor {extra[0]!r} has no place in a model of config.json's sizes (more "
                          f"layers than num_hidden_layers?); {ALLOWED}.")
    return out


def import_bwarea(cfg: ImportBWAreaConfig) -> dict:
    """Convert ``cfg.src`` into the latent model directory ``cfg.out``; returns a summary dict."""
    from safetensors.torch import save_file

    if not cfg.src or not cfg.out:
        raise ReinlmError("import-bwarea: needs SRC and OUT, e.g. `reinlm latent import-bwarea "
                          "./Pretrained_BWArea_2.7B_30G runs/bwarea`.")
    out = Path(cfg.out).expanduser()
    if out.exists() and not cfg.overwrite:
        raise ReinlmError(f"import-bwarea: {str(out)!r} exists; pass --overwrite to replace it, or choose another OUT.")
    src = resolve_source(cfg.src)
    raw = read_bwarea_config(src)
    reader = CheckpointReader(src, tool="import-bwarea", allowed=ALLOWED)
    probe = next((k for k in reader.keys() if k == "model.action_code_book.embed.weight"), None)
    if probe is None:
        raise ReinlmError(f"import-bwarea: missing tensor 'model.action_code_book.embed.weight' in {str(src)!r}; "
                          f"{ALLOWED}.")
    dtype = reader.get(probe).dtype
    config = bwarea_config(raw, dtype, cfg.src)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in BWAreaModel(config).state_dict().items()}
    tensors = convert(reader, expected)
    summary = {"src": str(src), "out": str(out), "num_actions": config.num_code, "num_dim": config.num_dim,
               "layers": {"world_model": config.num_hidden_layers, "inverse_dynamics": config.idm_layers,
                          "policy": config.num_hidden_layers},
               "dtype": config.weights_dtype, "tensors": len(tensors),
               "parameters": parameter_counts(tensors)}
    with atomic_dir(out) as tmp:
        write_json(tmp / CONFIG_FILE, config.to_dict())
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "model_type": MODEL_TYPE})
        for f in TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
    return summary


def parameter_counts(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Parameters per part: world_model, inverse_dynamics (with the press layer), codebook, policy."""
    names = {"world": "world_model", "idm": "inverse_dynamics", "codebook": "codebook", "policy": "policy"}
    counts = {v: 0 for v in names.values()}
    for k, t in tensors.items():
        counts[names[k.split(".", 1)[0]]] += t.numel()
    return counts
