"""``LatentActionModel``: IDM, world model and policy heads on a frozen backbone causal LM.

The API mirrors the CoLA / BWArea cards (../shared/seeds/000, 001): ``forward_world_model``,
``forward_inverse``, ``forward_policy``, ``set_action_sampling``, ``generate``, ``reset_action_info`` /
``get_action_info``; plus heads-only functions on cached hidden states (``*_from_hidden``) so that
pretraining and RL never re-run the backbone. Legend: B = batch, T = positions, P = prompt length,
R = generated length, H = backbone hidden size, K = actions, V = vocabulary.

A model directory holds ``config.json`` (a :class:`~reinlm.latent.config.LatentConfig`, naming the
backbone) and ``heads.safetensors`` (IDM, policy, world model; never the backbone's weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reinlm.errors import ReinlmError
from reinlm.latent.backbone import backbone_forward
from reinlm.latent.bwarea import BWAreaModel
from reinlm.latent.config import ActionSampling, LatentConfig, resolve_for_backbone
from reinlm.latent.modules import (CausalStack, RotaryEmbedding, StackCache, WorldModel, idm_step_logits,
                                   sample_actions)
from reinlm.latent.seed_api import InverseOutput, LatentGeneration, PolicyOutput, SeedAPI  # noqa: F401 (re-exported)
from reinlm.latent.stepper import LatentStepper
from reinlm.rollout.decode import LMStepper
from reinlm.rollout.token import eos_ids, token_logprobs
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.integrity import json_file_problem, safetensors_problem
from reinlm.utils.jsonio import write_json

HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "config.json"


def _backbone_dims(backbone) -> tuple[int, int]:
    cfg = backbone.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.hidden_size), int(backbone.get_output_embeddings().weight.shape[0])


def backbone_rotary(backbone, head_dim: int) -> RotaryEmbedding:
    """The backbone's rotary embedding (inverse frequencies and scaling, e.g. Llama 3.1's ``llama3`` scaling)
    for heads of size ``head_dim``; the plain RoPE formula with the backbone's theta when the sizes differ."""
    rot = getattr(backbone.base_model, "rotary_emb", None)
    inv = getattr(rot, "original_inv_freq", None)
    inv = inv if inv is not None else getattr(rot, "inv_freq", None)
    if inv is not None and 2 * inv.numel() == head_dim:
        return RotaryEmbedding(inv, getattr(rot, "attention_scaling", 1.0))
    cfg = getattr(backbone.config, "text_config", None) or backbone.config
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = float(params.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)
    return RotaryEmbedding(1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def backbone_final_norm(backbone) -> nn.Module:
    """The backbone's final norm ``ln_f`` (what its LM head reads after), for the cola world-model read-out."""
    base = backbone.base_model
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        mod = getattr(base, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise ReinlmError(f"latent: wm_output 'cola' needs the backbone's final norm, but {type(base).__name__} has "
                      f"none of the attributes norm, final_layernorm, ln_f, final_layer_norm; allowed: "
                      f"--wm-output state.")


def latent_family(model_dir: str | Path) -> str:
    """``"bwarea"`` for a BWArea directory (``reinlm latent import-bwarea``), else ``"backbone"`` (heads over a
    frozen backbone: pretrained by reinlm or imported from CoLA). Every latent command loads through
    :meth:`LatentActionModel.from_pretrained`, which returns the family's model."""
    try:
        raw = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return "backbone"
    return "bwarea" if isinstance(raw, dict) and raw.get("model_type") == "reinlm-latent-bwarea" else "backbone"


class LatentActionModel(SeedAPI, nn.Module):
    """Heads over a frozen backbone. Only ``idm``, ``policy`` and ``world_model`` hold trainable weights."""

    def __init__(self, config: LatentConfig, backbone, tokenizer=None):
        super().__init__()
        H, V = _backbone_dims(backbone)
        config.hidden_size = config.hidden_size or H
        config.vocab_size = config.vocab_size or V
        if (config.hidden_size, config.vocab_size) != (H, V):
            raise ReinlmError(
                f"latent model: its heads were built for a backbone with hidden size {config.hidden_size} and "
                f"vocabulary {config.vocab_size}, but the backbone {config.backbone!r} has hidden size {H} and "
                f"vocabulary {V}; load it with the backbone it was pretrained on (config.json 'backbone').")
        resolve_for_backbone(config, backbone.config)
        self.config = config
        self.backbone = backbone.eval()
        self.backbone.requires_grad_(False)
        self.tokenizer = tokenizer
        c = config
        rotary = backbone_rotary(backbone, c.head_dim or c.d_model // c.n_heads) if c.rope else None
        stack = dict(n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, ffn=c.mlp_ffn, eps=c.norm_eps,
                     input_proj=c.input_proj, bias=c.head_bias, rotary=rotary)
        self.idm = CausalStack(H, c.d_model, c.n_heads, c.idm_layers, c.num_actions, **stack)
        self.policy = CausalStack(H, c.d_model, c.n_heads, c.policy_layers, c.num_actions, **stack)
        self.world_model = WorldModel(H, c.num_actions, c.wm_layers, c.wm_ffn, norm=c.wm_norm, eps=c.norm_eps,
                                      readout=c.wm_output,
                                      final_norm=backbone_final_norm(backbone) if c.wm_output == "cola" else None)
        self.heads_to(next(backbone.parameters()).device)
        self.action_sampling = ActionSampling()
        self.reset_action_info()

    # ------------------------------------------------------------------ construction, save, load

    @classmethod
    def from_backbone(cls, backbone: str, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                      **config_fields) -> "LatentActionModel":
        """Fresh (untrained) heads on the backbone ``backbone`` (alias / path / hub id)."""
        from reinlm.hub import load_causal_lm

        model, tok = load_causal_lm(backbone, device=device, dtype=dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(LatentConfig(backbone=str(backbone), **config_fields), model, tok)

    def heads_to(self, device, dtype: str | torch.dtype | None = None) -> "LatentActionModel":
        """Move the heads to ``device`` and cast their weights to ``dtype`` (default: ``config.heads_dtype``).

        Only parameters are cast: the rotary inverse frequencies stay float32."""
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        dtype = dtype or getattr(torch, self.config.heads_dtype)
        for m in (self.idm, self.policy, self.world_model):
            m.to(device=device)
            for p in m.parameters():
                p.data = p.data.to(dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.world_model.codebook.weight.device

    # ------------------------------------------------------------------ family facts (BWArea's: reinlm.latent.bwarea)

    weights_file = HEADS_FILE  # the file of a latent directory that holds the policy's weights ("policy.*")

    @property
    def context_length(self) -> int:
        """Longest prompt + completion the model reads: the backbone's ``max_position_embeddings`` (2048 if unset)."""
        return int(getattr(self.backbone.config, "max_position_embeddings", None) or 2048)

    def eos_token_ids(self) -> list[int]:
        """The ids that end a completion: the tokenizer's EOS and the backbone's generation-config EOS ids."""
        return eos_ids(self.backbone, self.tokenizer)

    @torch.no_grad()
    def frozen_lm_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, R: int,
                           ref_policy: nn.Module | None = None) -> torch.Tensor:
        """Log-probs (B, R) of the last R tokens of ``input_ids`` (B, T) under the frozen language model this latent
        model starts from: the backbone itself, temperature 1 (``ref_policy`` is not needed)."""
        return token_logprobs(self.backbone, input_ids, attention_mask, R, 1.0).logp

    world_model_parts = ("world_model",)  # what fine-tuning's stage 1 trains as the world model (parameter prefixes)

    def world_model_parameters(self) -> list[nn.Parameter]:
        """What fine-tuning's stage 1 trains as the world model: the code book and the merge blocks."""
        return list(self.world_model.parameters())

    def step_world_logits(self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None,
                          actions: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T-1, V) float32 of steps 0..T-2, step t under ``actions[:, t]`` ((B, T-1) long):
        the world model merges each action into its own position's backbone state x_t (x = ``head_input``,
        (B, T, H); ``ids`` / ``mask`` are not needed). Gradients flow into the world model."""
        return self.world_model_logits_from_hidden(x[:, :-1], actions)

    def lm_nll_sum(self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor) -> float:
        """Summed NLL of the next token of every ``valid`` step ((B, T-1) bool) under the frozen language model: the
        backbone's LM head on its states x (B, T, H)."""
        return F.cross_entropy(self.token_logits(x[:, :-1][valid]), ids[:, 1:][valid], reduction="sum").item()

    def lm_stepper(self, token_chooser):
        """The decode engine's stepper of the frozen language model this latent model starts from, drawing tokens
        with ``token_chooser``: the backbone itself (the QD table's ``token_sampling`` row)."""
        return LMStepper(self.backbone, token_chooser)

    def frozen_policy_copy(self) -> CausalStack:
        """A frozen deep copy of the policy (the reference for the exact KL of latent RL)."""
        import copy

        ref = copy.deepcopy(self.policy).eval()
        return ref.requires_grad_(False)

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the heads only (keys ``idm.*``, ``policy.*``, ``world_model.*``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``config.json``, ``heads.safetensors`` and the tokenizer's files (atomically; the backbone is
        never copied; the tokenizer files let the CoLA card's ``AutoTokenizer.from_pretrained(DIR)`` run)."""
        from safetensors.torch import save_file

        with atomic_dir(out_dir) as tmp:
            write_json(tmp / CONFIG_FILE, self.config.to_dict())
            save_file({k: v.detach().contiguous().cpu() for k, v in self.heads_state_dict().items()},
                      str(tmp / HEADS_FILE))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "cpu", dtype: str | None = None,
                        backbone=None, num_actions: int | None = None,
                        heads_dtype: str | None = None) -> "LatentActionModel":
        """Load a latent model directory; ``backbone`` = ``(model, tokenizer)`` to reuse a loaded backbone.
        A BWArea directory loads as a :class:`~reinlm.latent.bwarea.BWAreaModel` (``heads_dtype``: its weights').

        ``dtype``: the backbone's (default: bfloat16 when the heads are stored in bfloat16, as an imported
        CoLA model, else float32); ``heads_dtype``: the heads' (default: ``config.json``'s ``heads_dtype``).
        ``num_actions``, when given, must equal the checkpoint's K. Raises :class:`ReinlmError` on a missing
        directory, a backbone of another hidden size or vocabulary, or a K mismatch.
        """
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        cfg_path, heads_path = model_dir / CONFIG_FILE, model_dir / HEADS_FILE
        if latent_family(model_dir) == "bwarea":  # the family with its own embeddings (reinlm.latent.bwarea)

            return BWAreaModel.from_pretrained(model_dir, device=device, dtype=heads_dtype, num_actions=num_actions)
        if not cfg_path.is_file() or not heads_path.is_file():
            raise ReinlmError(f"latent: {str(model_dir)!r} is not a latent model directory (it needs {CONFIG_FILE} "
                              f"and {HEADS_FILE}); create one with `reinlm latent pretrain --out DIR`.")

        problem = json_file_problem(cfg_path) or safetensors_problem(heads_path)
        if problem:
            raise ReinlmError(f"latent: {str(model_dir)!r} is a latent model directory, but {problem}; write it "
                              "again (`reinlm latent pretrain`) or copy it again.")
        raw = json.loads(cfg_path.read_text())
        model_type = raw.get("model_type") if isinstance(raw, dict) else None
        if model_type != "reinlm-latent":
            raise ReinlmError(f"latent: {str(cfg_path)!r} has model_type {model_type!r}; allowed: "
                              f"'reinlm-latent' (a directory written by `reinlm latent pretrain`).")
        config = LatentConfig.from_dict(raw)  # saved fields are explicit; older directories lack the new
        # architecture fields, which then take their preset's (cpu / large) values: the architecture they had
        if heads_dtype is not None:
            config.heads_dtype = heads_dtype
        state = load_file(str(heads_path))
        k_ckpt = state["world_model.codebook.weight"].shape[1]
        if config.num_actions != k_ckpt or (num_actions is not None and num_actions != k_ckpt):
            want = num_actions if num_actions is not None else config.num_actions
            raise ReinlmError(f"latent: num_actions K = {want} was asked for, but the checkpoint "
                              f"{str(heads_path)!r} holds {k_ckpt} actions; allowed: K = {k_ckpt} for this model.")
        if backbone is None:
            from reinlm.hub import load_causal_lm

            local = model_dir / config.backbone  # a backbone kept inside the directory ("./backbone")
            where = str(local) if config.backbone.startswith(".") and local.is_dir() else config.backbone
            dtype = dtype or ("bfloat16" if config.heads_dtype == "bfloat16" else "float32")
            backbone = load_causal_lm(where, device=device, dtype=dtype)
        model = cls(config, backbone[0], backbone[1])
        state = {k: v.to(getattr(torch, config.heads_dtype)) for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ReinlmError(f"latent: {str(heads_path)!r} does not match config.json (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}); re-run `reinlm latent pretrain`.")
        return model

    # ------------------------------------------------------------------ backbone and heads-only functions

    @property
    def lm_head(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def backbone_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        past_key_values=None, position_ids: torch.Tensor | None = None, use_cache: bool = False):
        """Final normalised hidden states h (B, T, H) float32, and the KV cache (or ``None``); no gradient.
        See :func:`~reinlm.latent.backbone.backbone_forward`."""
        with torch.no_grad():
            h, cache = backbone_forward(self.backbone, input_ids, attention_mask, position_ids, past_key_values,
                                        use_cache)
        return h.float(), cache

    def head_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the IDM and the policy read: the frozen backbone's states h (B, T, H) float32, no gradient
        (BWArea's parts read the token ids: :meth:`reinlm.latent.bwarea.BWAreaModel.head_input`)."""
        return self.backbone_hidden(input_ids, attention_mask)[0]

    def world_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     actions: torch.Tensor) -> torch.Tensor:
        """The state the LM head reads (B, T, H) under ``actions`` (B, T) long."""
        return self.world_model_state_from_hidden(self.head_input(input_ids, attention_mask), actions)

    def token_logits(self, state: torch.Tensor) -> torch.Tensor:
        """Frozen LM head: (..., H) -> (..., V) float32 logits."""
        w = self.lm_head.weight
        return self.lm_head(state.to(w.dtype)).float()

    def policy_logits_from_hidden(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """pi(a_t | x_<=t) logits from cached states: (B, T, H) -> (B, T, K)."""
        return self.policy(h, mask)

    def idm_logits_from_hidden(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """IDM logits of steps 0..T-2 (step t read at position t+1): (B, T, H) -> (B, T-1, K)."""
        return idm_step_logits(self.idm, h, mask)

    def world_model_state_from_hidden(self, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(B, T, H), action (B, T) long or (B, T, K) one-hot -> state (B, T, H) for the LM head."""
        return self.world_model(h, action)

    def world_model_logits_from_hidden(self, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Next-token logits under the given actions: (B, T, H) -> (B, T, V)."""
        return self.token_logits(self.world_model(h, action))

    # ------------------------------------------------------------------ the seeds' API

    def make_stepper(self, action_chooser, token_chooser, history: torch.Tensor | None = None) -> LatentStepper:
        """The decode engine's stepper over this model (generation, search's expansions): backbone states.
        ``history`` (the actions that wrote the prompt's positions 0..P-2) changes nothing here: the world model
        merges each action into its own position's backbone state alone (BWArea's attends to them)."""
        return LatentStepper(self, action_chooser, token_chooser)

    # ------------------------------------------------------------------ incremental policy (generation only)

    def policy_prefill(self, h: torch.Tensor, mask: torch.Tensor | None, capacity: int
                       ) -> tuple[StackCache, torch.Tensor]:
        """Policy over the prompt states h (N, P, H) keeping its keys/values for ``capacity`` positions:
        -> (cache, logits of the last position (N, K)). See :meth:`CausalStack.prefill`."""
        return self.policy_module().prefill(h, mask, capacity)

    def policy_step(self, h: torch.Tensor, key_mask: torch.Tensor, cache: StackCache, t: int) -> torch.Tensor:
        """One new position t per row: h (b, 1, H), key_mask (b, t+1) -> logits (b, K); writes position t of
        ``cache``. See :meth:`CausalStack.step`."""
        return self.policy_module().step(h, key_mask, cache, t)
