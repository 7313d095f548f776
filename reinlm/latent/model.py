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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reinlm.errors import ReinlmError
from reinlm.latent.config import ActionSampling, LatentConfig, resolve_for_backbone
from reinlm.latent.modules import (CausalStack, RotaryEmbedding, StackCache, WorldModel, idm_step_logits,
                                   sample_categorical)
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.jsonio import write_json

HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class InverseOutput:
    action_index: torch.Tensor  # (B, T-1) argmax action of step t (explains token t+1)
    probs: torch.Tensor  # (B, T-1, K)
    logits: torch.Tensor  # (B, T-1, K)


@dataclass
class PolicyOutput:
    logits: torch.Tensor  # (B, T, K) pi(a_t | x_<=t)
    action_index: torch.Tensor  # (B, T) sampled with the current action sampling settings


@dataclass
class LatentGeneration:
    """Everything one latent generation produced (``generate(..., return_dict=True)``)."""

    sequences: torch.Tensor  # (B, P+R) prompt (left-padded) + response
    attention_mask: torch.Tensor  # (B, P+R) 1 on real tokens (the EOS kept), 0 on padding
    prompt_length: int  # P
    actions: torch.Tensor  # (B, R) action chosen at each step (-1 after the sequence finished)
    action_logprobs: torch.Tensor  # (B, R) log-prob of that action under the sampling distribution
    action_probs: torch.Tensor  # (B, R) its probability
    hidden: torch.Tensor  # (B, P+R-1, H) backbone states h of every position that was fed (float32)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]  # (B, R)

    @property
    def response_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_length:]  # (B, R)


def _backbone_dims(backbone) -> tuple[int, int]:
    cfg = backbone.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.hidden_size), int(backbone.get_output_embeddings().weight.shape[0])


def _cache_kwarg(base) -> str:
    """Name of the KV-cache argument: ``cache`` (transformers >= 5.x) or ``past_key_values`` (older)."""
    import inspect

    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


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


class LatentActionModel(nn.Module):
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

    def frozen_policy_copy(self) -> CausalStack:
        """A frozen deep copy of the policy (the reference for the exact KL of latent RL)."""
        import copy

        ref = copy.deepcopy(self.policy).eval()
        return ref.requires_grad_(False)

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the heads only (keys ``idm.*``, ``policy.*``, ``world_model.*``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``config.json`` and ``heads.safetensors`` (atomically; the backbone is never copied)."""
        from safetensors.torch import save_file

        with atomic_dir(out_dir) as tmp:
            write_json(tmp / CONFIG_FILE, self.config.to_dict())
            save_file({k: v.detach().contiguous().cpu() for k, v in self.heads_state_dict().items()},
                      str(tmp / HEADS_FILE))
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "cpu", dtype: str | None = None,
                        backbone=None, num_actions: int | None = None,
                        heads_dtype: str | None = None) -> "LatentActionModel":
        """Load a latent model directory; ``backbone`` = ``(model, tokenizer)`` to reuse a loaded backbone.

        ``dtype``: the backbone's (default: bfloat16 when the heads are stored in bfloat16, as an imported
        CoLA model, else float32); ``heads_dtype``: the heads' (default: ``config.json``'s ``heads_dtype``).
        ``num_actions``, when given, must equal the checkpoint's K. Raises :class:`ReinlmError` on a missing
        directory, a backbone of another hidden size or vocabulary, or a K mismatch.
        """
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        cfg_path, heads_path = model_dir / CONFIG_FILE, model_dir / HEADS_FILE
        if not cfg_path.is_file() or not heads_path.is_file():
            raise ReinlmError(f"latent: {str(model_dir)!r} is not a latent model directory (it needs {CONFIG_FILE} "
                              f"and {HEADS_FILE}); create one with `reinlm latent pretrain --out DIR`.")
        from reinlm.utils.integrity import json_file_problem, safetensors_problem

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
        """Final normalised hidden states h (B, T, H) float32, and the KV cache (or ``None``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:  # left padding: positions count real tokens only
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        base = self.backbone.base_model
        cache_kw = _cache_kwarg(base)
        with torch.no_grad():
            out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=use_cache, **{cache_kw: past_key_values})
        return out.last_hidden_state.float(), (getattr(out, cache_kw) if use_cache else None)

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

    def set_action_sampling(self, greedy: bool | None = None, tau: float | None = None, top_k: int | None = None,
                            top_p: float | None = None, temp: float | None = None) -> None:
        """Set how the policy's actions are drawn (``temp`` is the BWArea card's name for ``tau``)."""
        s = self.action_sampling
        tau = tau if tau is not None else temp
        self.action_sampling = ActionSampling(
            greedy=s.greedy if greedy is None else greedy, tau=s.tau if tau is None else tau,
            top_k=s.top_k if top_k is None else top_k, top_p=s.top_p if top_p is None else top_p)

    def _sample_actions(self, logits: torch.Tensor, generator=None, u: torch.Tensor | None = None):
        s = self.action_sampling
        return sample_categorical(logits, s.greedy, s.tau, s.top_k, s.top_p, generator, u)

    def forward_world_model(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            action_idx: int | torch.Tensor = 0) -> torch.Tensor:
        """Next-token logits (B, T, V) when action ``action_idx`` (int, (B,) or (B, T)) is taken at every step."""
        h, _ = self.backbone_hidden(input_ids, attention_mask)
        B, T, _ = h.shape
        a = torch.as_tensor(action_idx, dtype=torch.long, device=h.device)
        a = a.view(B, 1).expand(B, T) if a.dim() == 1 else a.expand(B, T)
        self._check_actions(a)
        return self.world_model_logits_from_hidden(h, a)

    def forward_inverse(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> InverseOutput:
        """IDM argmax actions of steps 0..T-2 (step t explains token t+1) and their probabilities."""
        h, _ = self.backbone_hidden(input_ids, attention_mask)
        logits = self.idm_logits_from_hidden(h, attention_mask)  # (B, T-1, K)
        return InverseOutput(logits.argmax(-1), logits.softmax(-1), logits)

    def forward_policy(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> PolicyOutput:
        """Policy logits (B, T, K) and actions sampled with the current ``set_action_sampling`` settings."""
        h, _ = self.backbone_hidden(input_ids, attention_mask)
        logits = self.policy_logits_from_hidden(h, attention_mask)
        B, T, K = logits.shape
        idx, _, _ = self._sample_actions(logits.reshape(B * T, K), generator)
        return PolicyOutput(logits, idx.view(B, T))

    def _check_actions(self, a: torch.Tensor) -> None:
        K = self.config.num_actions
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= K):
            raise ReinlmError(f"action_idx: got values in [{int(a.min())}, {int(a.max())}]; allowed: 0..{K - 1}.")

    def reset_action_info(self) -> None:
        """Forget the actions recorded by the last ``generate``."""
        self._action_info: dict[str, list[torch.Tensor]] = {"action_idx": [], "action_prob": []}

    def get_action_info(self, prob: bool = False):
        """Actions of the last generation: ``action_idx`` (B, R), with ``prob=True`` also their probs (B, R)."""
        idx = self._action_info["action_idx"]
        a = torch.cat(idx, dim=1) if idx else torch.zeros(0, 0, dtype=torch.long)
        if not prob:
            return a
        p = self._action_info["action_prob"]
        return a, (torch.cat(p, dim=1) if p else torch.zeros(0, 0))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 action_mode: str = "policy", fixed_action: int | torch.Tensor | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = False,
                 num_return_sequences: int = 1, **hf_kwargs):
        """Generate through policy + world model, recording the actions (``get_action_info``).

        At each step the action comes from the policy (``action_mode="policy"``, drawn per
        ``set_action_sampling``), uniformly at random (``"random"``) or is ``fixed_action`` (int or (B,)).
        The world model's next-token distribution is then decoded greedily (default: the randomness lives in
        the actions) or sampled (``do_sample`` with ``temperature`` / ``top_k`` / ``top_p``). Prompts are
        left-padded; the backbone keeps a KV cache; a row stops at its EOS (kept, mask 1), later positions
        are padding (mask 0, action -1). Returns the sequences (B, P+R) or, with ``return_dict``, a
        :class:`LatentGeneration`. HF-only options (``use_cache``, ``num_beams=1``, ...) are accepted.

        ``num_return_sequences`` = G: ``input_ids`` holds N distinct prompts, the output B = N * G rows
        (rows ``i * G .. i * G + G - 1`` continue prompt ``i``); each prompt is prefilled once and its caches
        repeated, which is the same as (but cheaper than) passing every prompt G times.

        It runs reinlm's decode engine (:mod:`reinlm.rollout.decode`) with the latent stepper
        (:mod:`reinlm.latent.stepper`). Cost per step: one single-token backbone forward, one single-position
        step of the policy's blocks (their keys/values are cached, so the policy is not re-run over the
        history), the world model and the LM head on the rows still going (a row that finished is fed its EOS
        once, so its state is kept, then dropped from every cache). States of positions after a row finished
        are zeros in ``hidden`` (padding, mask 0). Action log-probs follow the sampling conventions of
        :mod:`reinlm.rollout.sampling` (temperature tau, recorded before top-k/top-p filtering).

        ``generator``: ``None`` (global RNG), one ``torch.Generator`` for the batch, or a list of N generators,
        one per prompt: a prompt's samples then do not depend on the rest of the batch (so data-parallel
        processes that split the prompts draw what one process would). All uniforms are drawn up front
        (two per row and step: the action's, then the token's).
        """
        from reinlm.latent.stepper import LatentStepper
        from reinlm.rollout.decode import decode
        from reinlm.rollout.sampling import Chooser

        if hf_kwargs.get("num_beams", 1) != 1:
            raise ReinlmError("generate: num_beams must be 1 for latent generation (beam search over actions is "
                              "not supported).")
        G = int(num_return_sequences)
        if G < 1:
            raise ReinlmError(f"num_return_sequences: got {num_return_sequences!r}; allowed: an integer >= 1.")
        tok = self.tokenizer
        dev = input_ids.device
        if eos_token_id is None and tok is not None:
            eos_token_id = tok.eos_token_id
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        if pad_token_id is None:
            pad_token_id = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else (
                int(eos[0]) if len(eos) else 0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        N, P = input_ids.shape
        B, K = N * G, self.config.num_actions
        if fixed_action is not None:
            fixed = torch.as_tensor(fixed_action, dtype=torch.long, device=dev).expand(B)
            self._check_actions(fixed)
            act = Chooser("fixed", fixed=fixed)
        elif action_mode == "random":
            act = Chooser("uniform")
        elif action_mode == "policy":
            s = self.action_sampling
            act = Chooser("greedy" if s.greedy else "sample", float(s.tau), int(s.top_k), float(s.top_p))
        else:
            raise ReinlmError(f"action_mode: got {action_mode!r}; allowed: policy, random.")
        # world-model tokens: greedy by default (the randomness lives in the actions)
        tok_chooser = (Chooser("sample", float(temperature), int(top_k or 0), float(top_p if top_p is not None else 1.0))
                       if do_sample else Chooser("greedy", record_logprob=False))
        out = decode(LatentStepper(self, act, tok_chooser), input_ids, attention_mask.long(), samples_per_prompt=G,
                     max_new_tokens=max(int(max_new_tokens), 0), stop_ids=eos, pad_id=int(pad_token_id),
                     generator=generator)
        R = out.tokens.shape[1]
        rmask = out.mask  # (B, R)
        sequences = torch.cat([input_ids.repeat_interleave(G, 0), out.tokens], dim=1)  # (B, P+R)
        out_mask = torch.cat([attention_mask.long().repeat_interleave(G, 0), rmask], dim=1)
        actions = out.extras["action"] if "action" in out.extras else torch.zeros(B, 0, dtype=torch.long, device=dev)
        actions = actions.masked_fill(rmask == 0, -1)  # (B, R), -1 after a row finished
        logps = out.logprobs  # (B, R), 0 after a row finished
        probs = logps.exp() * rmask
        self._action_info = {"action_idx": [actions.cpu()], "action_prob": [probs.cpu()]}
        if not return_dict:
            return sequences
        return LatentGeneration(sequences=sequences, attention_mask=out_mask, prompt_length=P, actions=actions,
                                action_logprobs=logps, action_probs=probs, hidden=out.states["hidden"])

    # ------------------------------------------------------------------ incremental policy (generation only)

    def _policy_module(self) -> CausalStack:
        pol = self.policy
        return getattr(pol, "module", pol)  # unwrap DDP

    def policy_prefill(self, h: torch.Tensor, mask: torch.Tensor | None, capacity: int
                       ) -> tuple[StackCache, torch.Tensor]:
        """Policy over the prompt states h (N, P, H) keeping its keys/values for ``capacity`` positions:
        -> (cache, logits of the last position (N, K)). See :meth:`CausalStack.prefill`."""
        return self._policy_module().prefill(h, mask, capacity)

    def policy_step(self, h: torch.Tensor, key_mask: torch.Tensor, cache: StackCache, t: int) -> torch.Tensor:
        """One new position t per row: h (b, 1, H), key_mask (b, t+1) -> logits (b, K); writes position t of
        ``cache``. See :meth:`CausalStack.step`."""
        return self._policy_module().step(h, key_mask, cache, t)
