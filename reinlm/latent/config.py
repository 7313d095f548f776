"""Size and sampling configuration of the latent-action heads (CoLA / BWArea, DESIGN.md section 4).

:class:`LatentConfig` is what ``config.json`` of a latent model directory holds: the backbone it sits on
(an alias, local path or Hugging Face id, never a copy of its weights), the backbone facts the heads were
built for (hidden size, vocabulary) and the head sizes. Presets:

- ``cpu`` (default): width 256, 2 IDM blocks, 2 policy blocks, 2 merge blocks (about 9 M parameters on a
  576-wide backbone) - pretrains on 200k tokens in minutes on 2 CPU cores;
- ``large``: width 1024, 6 IDM blocks, 8 policy blocks, 4 merge blocks - a GPU-sized setting closer to the
  CoLA card's proportions (heads about a tenth of the backbone);
- ``cola``: CoLA's own architecture (``IntentionModel_v1`` in LAMDA-RL/CoLA): IDM and policy are 4 and 8
  full-width Llama decoder layers on h (no input projection; the backbone's RoPE, grouped-query heads, MLP
  width and norm eps; heads without bias), 2 merge blocks of the backbone's MLP width with no norm inside,
  and the LM head reads ``ln_f(s) - h``. Widths come from the backbone (:func:`resolve_for_backbone`).
- ``custom``: the ``cpu`` values for every field not given.

Every size / architecture field left unset (``None``) takes the preset's value; a field given explicitly
(flag, YAML, or a saved ``config.json``) overrides it, so ``--preset cola --policy-layers 2`` is CoLA's
architecture with 2 policy blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Optional

from reinlm.config.coerce import check_choice, check_range
from reinlm.config.schema import Config, opt

_REINLM_ARCH = dict(n_kv_heads=0, head_dim=0, mlp_ffn=0, norm_eps=1e-6, input_proj=True, rope=False,
                    head_bias=True, wm_norm=True, wm_output="state")
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(d_model=256, n_heads=4, idm_layers=2, policy_layers=2, wm_layers=2, wm_ffn=1024, **_REINLM_ARCH),
    "large": dict(d_model=1024, n_heads=16, idm_layers=6, policy_layers=8, wm_layers=4, wm_ffn=4096,
                  **_REINLM_ARCH),
    # d_model, n_heads, n_kv_heads, head_dim, mlp_ffn, wm_ffn, norm_eps: from the backbone (resolve_for_backbone)
    "cola": dict(idm_layers=4, policy_layers=8, wm_layers=2, input_proj=False, rope=True, head_bias=False,
                 wm_norm=False, wm_output="cola"),
}
PRESETS["custom"] = PRESETS["cpu"]
PRESET_NAMES = ("cpu", "large", "cola", "custom")
ARCH_FIELDS = tuple(PRESETS["cpu"])


@dataclass
class LatentConfig(Config):
    """Architecture of the heads over a frozen backbone; saved as ``config.json``."""

    backbone: str = opt("smollm2-135m", help="backbone causal LM: embedded alias, local path or Hugging Face id",
                        flag=False)
    hidden_size: int = opt(0, help="backbone hidden size H (filled from the backbone; checked on load)",
                          flag=False, lo=0)
    vocab_size: int = opt(0, help="backbone vocabulary size V (filled from the backbone; checked on load)",
                         flag=False, lo=0)
    num_actions: int = opt(64, help="number of discrete latent actions K", lo=2)
    preset: Literal["cpu", "large", "cola", "custom"] = opt(
        "cpu", help="head architecture: cpu (small, default), large, cola (CoLA's Llama-layer heads, widths from "
                    "the backbone), or custom (cpu values for the fields not given); explicit fields override it")
    d_model: Optional[int] = opt(None, help="width D of the IDM and policy blocks (preset: cpu 256, large 1024, "
                                            "cola = backbone hidden size)", lo=1)
    n_heads: Optional[int] = opt(None, help="attention heads in the IDM and policy blocks (cpu 4, large 16, cola: "
                                            "the backbone's)", lo=1)
    n_kv_heads: Optional[int] = opt(None, help="key/value heads (grouped-query attention; 0 = n_heads; cola: the "
                                               "backbone's)", lo=0)
    head_dim: Optional[int] = opt(None, help="size of each attention head (0 = d_model / n_heads; cola: the "
                                             "backbone's)", lo=0)
    mlp_ffn: Optional[int] = opt(None, help="inner width of the blocks' SwiGLU MLP (0 = 8 d_model / 3; cola: the "
                                            "backbone's intermediate size)", lo=0)
    norm_eps: Optional[float] = opt(None, help="epsilon of the heads' RMSNorms (cpu/large 1e-6; cola: the "
                                               "backbone's rms_norm_eps)", lo=0.0, lo_open=True)
    idm_layers: Optional[int] = opt(None, help="causal blocks in the inverse dynamics model (cpu 2, large 6, "
                                               "cola 4)", lo=0)
    policy_layers: Optional[int] = opt(None, help="causal blocks in the policy (cpu 2, large 8, cola 8)", lo=0)
    wm_layers: Optional[int] = opt(None, help="residual SwiGLU merge blocks in the world model (cpu 2, large 4, "
                                              "cola 2)", lo=0)
    wm_ffn: Optional[int] = opt(None, help="inner width of each world-model merge block (cpu 1024, large 4096, "
                                           "cola: the backbone's intermediate size)", lo=1)
    input_proj: Optional[bool] = opt(None, help="a Linear(H -> D) before the IDM / policy blocks (cpu/large: "
                                                "true; cola: false, D = H)")
    rope: Optional[bool] = opt(None, help="rotary positions in the IDM / policy blocks, from the backbone's "
                                          "config (cpu/large: false; cola: true)")
    head_bias: Optional[bool] = opt(None, help="bias in the input projection and the action heads (cpu/large: "
                                               "true; cola: false)")
    wm_norm: Optional[bool] = opt(None, help="RMSNorm on the state inside each merge block (cpu/large: true; "
                                             "cola: false)")
    wm_output: Optional[Literal["state", "cola"]] = opt(
        None, help="what the frozen LM head reads: state = the merged state s (cpu/large), cola = ln_f(s) - h "
                   "with the backbone's final norm (cola)")
    heads_dtype: Literal["float32", "bfloat16"] = opt("float32", help="dtype of the heads' weights (bfloat16 "
                                                                      "halves their memory; train in float32)")

    def __post_init__(self):
        # types, ranges and choices of every field are checked by Config before this runs
        super().__post_init__()
        for k, v in PRESETS[self.preset].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.resolved:
            self.check_sizes()

    @property
    def resolved(self) -> bool:
        """False while some field still waits for the backbone's value (cola preset before the model is built)."""
        return all(getattr(self, k) is not None for k in ARCH_FIELDS)

    def check_sizes(self) -> None:
        for name in ("d_model", "n_heads", "wm_ffn"):
            check_range(name, getattr(self, name), 1)
        for name in ("n_kv_heads", "head_dim", "mlp_ffn", "idm_layers", "policy_layers", "wm_layers"):
            check_range(name, getattr(self, name), 0)
        check_range("norm_eps", self.norm_eps, 0.0, lo_open=True)
        if not self.head_dim and self.d_model % self.n_heads:
            check_choice("n_heads", self.n_heads, [h for h in range(1, self.d_model + 1) if self.d_model % h == 0])
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            check_choice("n_kv_heads", self.n_kv_heads, [h for h in range(1, self.n_heads + 1) if self.n_heads % h == 0])
        if self.rope and (self.head_dim or self.d_model // self.n_heads) % 2:
            check_choice("head_dim", self.head_dim, ["an even number (rotary positions rotate pairs)"])

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model_type": "reinlm-latent"}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_for_backbone(config: LatentConfig, backbone_config) -> LatentConfig:
    """Fill the fields still unset (the cola preset's widths) from the backbone's HF config; check the sizes.

    The cola preset: D = hidden size, the backbone's attention heads, key/value heads, head size, MLP width
    (also the merge blocks' width) and RMSNorm eps, as CoLA's ``LlamaDecoderLayer(config)`` heads use.
    """
    cfg = getattr(backbone_config, "text_config", None) or backbone_config
    H = int(cfg.hidden_size)
    nh = int(getattr(cfg, "num_attention_heads", 0) or 1)
    values = {
        "d_model": H, "n_heads": nh, "n_kv_heads": int(getattr(cfg, "num_key_value_heads", None) or nh),
        "head_dim": int(getattr(cfg, "head_dim", None) or H // nh),
        "mlp_ffn": int(getattr(cfg, "intermediate_size", 0) or 4 * H),
        "wm_ffn": int(getattr(cfg, "intermediate_size", 0) or 4 * H),
        "norm_eps": float(getattr(cfg, "rms_norm_eps", None) or getattr(cfg, "layer_norm_eps", None) or 1e-6),
    }
    for k, v in values.items():
        if getattr(config, k) is None:
            setattr(config, k, v)
    config.check_sizes()
    return config


@dataclass
class ActionSampling(Config):
    """How the policy's action is drawn at each generation step (``set_action_sampling``)."""

    greedy: bool = opt(False, help="take the policy's most likely action (no randomness in actions)")
    tau: float = opt(1.0, help="temperature of the action distribution", lo=0.0, lo_open=True)
    top_k: int = opt(0, help="keep only the k most likely actions (0 = all)", lo=0)
    top_p: float = opt(1.0, help="nucleus: keep the smallest set of actions with this much probability",
                       lo=0.0, hi=1.0, lo_open=True)
