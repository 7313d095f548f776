"""Size and sampling configuration of the latent-action heads (CoLA / BWArea, DESIGN.md section 4).

:class:`LatentConfig` is what ``config.json`` of a latent model directory holds: the backbone it sits on
(an alias, local path or Hugging Face id, never a copy of its weights), the backbone facts the heads were
built for (hidden size, vocabulary) and the head sizes. Two presets:

- ``cpu`` (default): width 256, 2 IDM blocks, 2 policy blocks, 2 merge blocks (about 5 M parameters on a
  576-wide backbone) - pretrains on 200k tokens in minutes on 2 CPU cores;
- ``large``: width 1024, 6 IDM blocks, 8 policy blocks, 4 merge blocks - a GPU-sized setting closer to the
  CoLA card's proportions (heads about a tenth of the backbone).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from reinlm.config import check_choice, check_range, opt

PRESETS: dict[str, dict[str, int]] = {
    "cpu": dict(d_model=256, n_heads=4, idm_layers=2, policy_layers=2, wm_layers=2, wm_ffn=1024),
    "large": dict(d_model=1024, n_heads=16, idm_layers=6, policy_layers=8, wm_layers=4, wm_ffn=4096),
}


@dataclass
class LatentConfig:
    """Architecture of the heads over a frozen backbone; saved as ``config.json``."""

    backbone: str = opt("smollm2-135m", help="backbone causal LM: embedded alias, local path or Hugging Face id",
                        flag=False)
    hidden_size: int = opt(0, help="backbone hidden size H (filled from the backbone; checked on load)",
                          flag=False)
    vocab_size: int = opt(0, help="backbone vocabulary size V (filled from the backbone; checked on load)",
                         flag=False)
    num_actions: int = opt(64, help="number of discrete latent actions K")
    preset: Literal["cpu", "large", "custom"] = opt("cpu", help="head sizes: cpu (small, default), large, or "
                                                             "custom (use the width/layer fields as given)")
    d_model: int = opt(256, help="width of the IDM and policy transformer blocks")
    n_heads: int = opt(4, help="attention heads in the IDM and policy blocks")
    idm_layers: int = opt(2, help="causal blocks in the inverse dynamics model")
    policy_layers: int = opt(2, help="causal blocks in the policy")
    wm_layers: int = opt(2, help="residual SwiGLU merge blocks in the world model")
    wm_ffn: int = opt(1024, help="inner width of each world-model merge block")

    def __post_init__(self):
        check_choice("preset", self.preset, ("cpu", "large", "custom"))
        if self.preset != "custom":
            for k, v in PRESETS[self.preset].items():
                setattr(self, k, v)
        check_range("num_actions", self.num_actions, 2)
        for name in ("d_model", "n_heads", "wm_ffn"):
            check_range(name, getattr(self, name), 1)
        for name in ("idm_layers", "policy_layers", "wm_layers"):
            check_range(name, getattr(self, name), 0)
        if self.d_model % self.n_heads:
            check_choice("n_heads", self.n_heads, [h for h in range(1, self.d_model + 1) if self.d_model % h == 0])

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model_type": "reinlm-latent"}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ActionSampling:
    """How the policy's action is drawn at each generation step (``set_action_sampling``)."""

    greedy: bool = opt(False, help="take the policy's most likely action (no randomness in actions)")
    tau: float = opt(1.0, help="temperature of the action distribution")
    top_k: int = opt(0, help="keep only the k most likely actions (0 = all)")
    top_p: float = opt(1.0, help="nucleus: keep the smallest set of actions with this much probability")

    def __post_init__(self):
        check_range("tau", self.tau, 0.0, lo_open=True)
        check_range("top_k", self.top_k, 0)
        check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)
