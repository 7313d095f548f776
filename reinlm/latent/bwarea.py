"""BWArea's latent model family (LAMDA-RL/Pretrained_BWArea_2.7B_30G, ``bwareaModel/model_hf.py``).

Unlike the frozen-backbone family (:mod:`reinlm.latent.model`, CoLA), BWArea has no pretrained backbone: each of
its three parts owns its token embeddings and Llama decoder layers (L = ``num_hidden_layers``):

- world model (``transformer``, L layers): token embeddings, layers 0 .. L/2-1, then the action merge
  ``s <- s + dynamics_norm(dynamics([s; c]))`` with c = ``unpress(codebook[a])`` (H), then layers L/2 .. L-1,
  the final norm and the LM head. The world model's hidden state comes from its own lower half, and the action
  enters *between* its layers, so the upper half runs causally over the merged states (not position-wise).
- inverse dynamics model (``transformer_action_enc``, L/2 layers): its output is shifted by one position
  (z_t <- z_{t+1}, the last keeps its own), pressed to ``num_dim`` and vector-quantised: the action is the
  nearest code e_k (argmin ||z - e_k||^2; reinlm reports -||z - e_k||^2 as the IDM's logits).
- policy (``transformer_policy``, L layers): ``Linear(H -> K)`` logits over the K = ``num_code`` actions.

Legend: B = batch, T = positions, H = hidden size, V = vocabulary, K = actions, D' = ``num_dim``.

The three differences from the frozen-backbone family are written here once:
- who owns the token embeddings: each stack (:class:`TokenStack`, whose input is token ids: ``head_input``), so
  the policy's input recorded by generation (``LatentGeneration.hidden``) is the token ids, not backbone states;
- what is frozen in RL: everything but ``policy`` (:meth:`BWAreaModel.rl_parameters`); the world model, the
  IDM and the code book stay bit-identical;
- where the world model's hidden state comes from: :meth:`BWAreaWorld.lower` (its own first L/2 layers).

Two world-model semantics, both BWArea's: :meth:`BWAreaModel.world_logits` with one action per position merges
it at every position (BWArea's forward with a KV cache, the one generation uses); with ``current_actions`` it is
BWArea's training forward without a cache: the history is merged with the IDM's actions (first stream) and
position t's query reads the history before t and its own state merged with the current action (second
stream). Generation in reinlm merges the prompt's history with the IDM's actions (the card: "the inverse
dynamics model understands the prompt"), then the policy's action at each new position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reinlm.config.schema import Config, opt
from reinlm.errors import ReinlmError
from reinlm.latent.config import ActionSampling
from reinlm.latent.seed_api import SeedAPI
from reinlm.rollout.sampling import Chooser
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.integrity import json_file_problem, safetensors_problem
from reinlm.utils.jsonio import write_json
from reinlm.latent.modules import (CausalBlock, CausalStack, RMSNorm, RotaryEmbedding, StackCache,
                                   attention_mask_4d, positions_from_mask, prefill_blocks, sample_actions,
                                   step_blocks)

MODEL_TYPE = "reinlm-latent-bwarea"
# attributes of the frozen-backbone family that commands not yet ported to BWArea read: asked of a BWArea model,
# they raise a ReinlmError naming what runs (exit 2), not an AttributeError traceback
BACKBONE_ONLY = ("backbone", "backbone_hidden", "world_model", "world_model_logits_from_hidden",
                 "world_model_state_from_hidden", "heads_state_dict", "lm_head", "policy_prefill", "policy_step",
                 "frozen_policy_copy")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class BWAreaConfig(Config):
    """Sizes of a BWArea model (``config.json`` of its latent directory, model_type ``reinlm-latent-bwarea``)."""

    vocab_size: int = opt(32000, help="vocabulary V", lo=1, flag=False)
    hidden_size: int = opt(2048, help="width H of every part", lo=1, flag=False)
    intermediate_size: int = opt(5632, help="SwiGLU width of the Llama layers", lo=1, flag=False)
    num_hidden_layers: int = opt(22, help="L: world-model and policy layers (the IDM has L/2)", lo=2, flag=False)
    num_attention_heads: int = opt(32, help="attention heads", lo=1, flag=False)
    num_key_value_heads: int = opt(0, help="key/value heads (0 = num_attention_heads)", lo=0, flag=False)
    head_dim: int = opt(0, help="head size (0 = hidden_size / num_attention_heads)", lo=0, flag=False)
    rms_norm_eps: float = opt(1e-5, help="RMSNorm epsilon", lo=0.0, lo_open=True, flag=False)
    rope_theta: float = opt(10000.0, help="RoPE base", lo=0.0, lo_open=True, flag=False)
    max_position_embeddings: int = opt(2048, help="context length", lo=1, flag=False)
    num_code: int = opt(64, help="K: actions (code book entries)", lo=2, flag=False)
    num_dim: int = opt(64, help="D': width of the code book (press / unpress)", lo=1, flag=False)
    weights_dtype: str = opt("float32", help="dtype the weights are stored in", flag=False,
                             choices=("float32", "bfloat16", "float16"))
    imported_from: str = opt("", help="the BWArea checkpoint this was imported from", flag=False)

    @property
    def num_actions(self) -> int:
        return self.num_code

    @property
    def idm_layers(self) -> int:
        return self.num_hidden_layers // 2

    @property
    def d_model(self) -> int:  # what a value head on the policy's features reads
        return self.hidden_size

    def to_dict(self) -> dict:
        import dataclasses

        return {**dataclasses.asdict(self), "model_type": MODEL_TYPE}

    @classmethod
    def from_dict(cls, d: dict) -> "BWAreaConfig":
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _stack_kwargs(c: BWAreaConfig) -> dict:
    hs = c.head_dim or c.hidden_size // c.num_attention_heads
    rotary = RotaryEmbedding(1.0 / c.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float) / hs))
    return dict(n_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, ffn=c.intermediate_size, eps=c.rms_norm_eps,
                rotary=rotary)


class TokenStack(CausalStack):
    """A :class:`CausalStack` that owns its token embeddings: its input is token ids (B, T), embedded by its
    own ``inp`` (``nn.Embedding(V, H)``), then Llama layers, a norm and a bias-free ``Linear(H -> out)``."""

    def __init__(self, vocab: int, hidden: int, n_heads: int, layers: int, out_dim: int, **stack):
        super().__init__(hidden, hidden, n_heads, layers, out_dim, input_proj=False, bias=False, **stack)
        self.inp = nn.Embedding(vocab, hidden)

    def embed_input(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) long -> embeddings (B, T, H)."""
        return self.inp(ids)


class BWAreaWorld(nn.Module):
    """The language world model: embeddings, L Llama layers with the action merged after layer L/2 - 1, final
    norm, LM head."""

    def __init__(self, c: BWAreaConfig):
        super().__init__()
        st = _stack_kwargs(c)
        self.rotary = st.pop("rotary")
        self.split = c.num_hidden_layers // 2
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.blocks = nn.ModuleList(CausalBlock(c.hidden_size, c.num_attention_heads, st["n_kv_heads"],
                                                st["head_dim"], st["ffn"], st["eps"])
                                    for _ in range(c.num_hidden_layers))
        self.dynamics = nn.Linear(2 * c.hidden_size, c.hidden_size, bias=False)
        self.dynamics_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    @property
    def lower_blocks(self):
        return self.blocks[: self.split]

    @property
    def upper_blocks(self):
        return self.blocks[self.split:]

    def _run(self, blocks, x: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rope = self.rotary(positions)
        for blk in blocks:
            x = blk(x, attn, rope)
        return x

    def lower(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The world model's hidden state before the action: layers 0 .. L/2-1 over its own embeddings of ids
        (B, T) -> (B, T, H)."""
        B, T = ids.shape
        return self._run(self.lower_blocks, self.embed(ids), attention_mask_4d(mask, B, T, ids.device),
                         positions_from_mask(mask, B, T, ids.device))

    def merge(self, s: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """s + dynamics_norm(dynamics([s; c])): (..., H), (..., H) -> (..., H)."""
        return s + self.dynamics_norm(self.dynamics(torch.cat([s, code.to(s.dtype)], dim=-1)))

    def read_out(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: (..., H) -> next-token logits (..., V) float32."""
        return self.lm_head(self.norm(x)).float()

    def upper(self, merged: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Layers L/2 .. L-1, causal over merged states (B, T, H) -> final states before the norm (B, T, H)."""
        B, T = merged.shape[:2]
        return self._run(self.upper_blocks, merged, attention_mask_4d(mask, B, T, merged.device),
                         positions_from_mask(mask, B, T, merged.device))

    def upper_two_stream(self, history: torch.Tensor, current: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
        """BWArea's training forward: the 2T sequence [history; current] (B, 2T, H) with the mask
        [[causal, 0], [strictly causal, identity]] (padding keys hidden, the diagonal kept) and positions
        repeated; -> the current stream's final states (B, T, H)."""
        B, T = history.shape[:2]
        base = attention_mask_4d(mask, B, T, history.device)  # (B, 1, T, T): causal & real keys | diagonal
        eye = torch.eye(T, dtype=torch.bool, device=history.device).expand_as(base)
        attn = torch.cat([torch.cat([base, torch.zeros_like(base)], -1), torch.cat([base & ~eye, eye], -1)], 2)
        pos = positions_from_mask(mask, B, T, history.device)
        out = self._run(self.upper_blocks, torch.cat([history, current], 1), attn, torch.cat([pos, pos], -1))
        return out[:, T:]


class BWAreaCodebook(nn.Module):
    """The action code book (K, D') shared by the IDM's quantiser and the policy's lookup, and ``unpress``
    (D' -> H): c(a) = unpress(e_a)."""

    def __init__(self, c: BWAreaConfig):
        super().__init__()
        self.embed = nn.Embedding(c.num_code, c.num_dim)
        self.unpress = nn.Linear(c.num_dim, c.hidden_size, bias=False)

    def code(self, action: torch.Tensor) -> torch.Tensor:
        """Actions (...,) long -> c(a) (..., H)."""
        return self.unpress(self.embed(action))

    def quantise_logits(self, z: torch.Tensor) -> torch.Tensor:
        """-||z - e_k||^2 for every code k: (..., D') -> (..., K) float32 (argmax = the nearest code; the same
        expansion as BWArea's VQ: |z|^2 + |e|^2 - 2 z.e)."""
        e = self.embed.weight
        zf = z.reshape(-1, z.shape[-1])
        dist = (zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t())
        return (-dist).float().view(*z.shape[:-1], -1)


class BWAreaModel(SeedAPI, nn.Module):
    """A BWArea model behind the interface of :class:`~reinlm.latent.model.LatentActionModel` (the seeds' API,
    ``generate``, ``policy``, ``save_pretrained`` / ``from_pretrained``). Parts: ``world``, ``idm``
    (a :class:`TokenStack` whose output layer is BWArea's ``press_layer``), ``codebook``, ``policy``."""

    family = "bwarea"

    def __init__(self, config: BWAreaConfig, tokenizer=None):
        super().__init__()
        c = config
        self.config = c
        self.tokenizer = tokenizer
        st = _stack_kwargs(c)
        self.world = BWAreaWorld(c)
        self.idm = TokenStack(c.vocab_size, c.hidden_size, c.num_attention_heads, c.idm_layers, c.num_dim, **st)
        self.codebook = BWAreaCodebook(c)
        self.policy = TokenStack(c.vocab_size, c.hidden_size, c.num_attention_heads, c.num_hidden_layers,
                                 c.num_code, **st)
        self.action_sampling = ActionSampling()
        self.reset_action_info()

    # ------------------------------------------------------------------ family facts

    @property
    def device(self) -> torch.device:
        return self.world.lm_head.weight.device

    weights_file = WEIGHTS_FILE  # the file of a latent directory that holds the policy's weights ("policy.*")

    def rl_parameters(self) -> list[nn.Parameter]:
        """What RL trains: the policy only (its embeddings, layers, norm and head). The world model, the IDM and
        the code book stay frozen (bit-identical, tested)."""
        return list(self.policy.parameters())

    @property
    def context_length(self) -> int:
        """Longest prompt + completion: ``max_position_embeddings`` of BWArea's config."""
        return int(self.config.max_position_embeddings)

    def eos_token_ids(self) -> list[int]:
        """The ids that end a completion: the tokenizer's EOS (BWArea has no generation config)."""
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        return [] if eos is None else [int(eos)]

    @torch.no_grad()
    def frozen_lm_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, R: int,
                           ref_policy: nn.Module) -> torch.Tensor:
        """Log-probs (B, R) of the last R tokens of ``input_ids`` (B, T) under the frozen model as a language
        model: the world model marginalised over the frozen policy ``ref_policy``'s action at each position,

            log p(x_{t+1} | x_<=t) = logsumexp_a [log pi_ref(a | x_<=t) + log p_WM(x_{t+1} | x_<=t, a)],

        with the history merged with the IDM's actions (BWArea's training forward, :meth:`world_states` with
        ``current_actions``). BWArea has no backbone LM; this is the text distribution its pretrained policy and
        world model define (tokens sampled at temperature 1). Costs K passes of the world model's upper half."""
        ids, mask = input_ids, attention_mask
        T = ids.shape[1]
        w, cb = self.world, self.codebook
        s = w.lower(ids, mask)  # (B, T, H)
        hist = w.merge(s, cb.code(self.idm_logits(ids, mask).argmax(-1)))  # (B, T, H)
        pol = torch.log_softmax(ref_policy(ids, mask).float(), -1)[:, T - R - 1:T - 1]  # (B, R, K)
        target = ids[:, T - R:, None]  # (B, R, 1)
        per_action = []
        for a in range(self.config.num_code):
            cur = w.merge(s, cb.code(torch.full_like(ids, a)))
            state = w.norm(w.upper_two_stream(hist, cur, mask))[:, T - R - 1:T - 1]  # (B, R, H)
            logp = torch.log_softmax(self.token_logits(state), -1).gather(-1, target).squeeze(-1)  # (B, R)
            per_action.append(pol[..., a] + logp)
        return torch.logsumexp(torch.stack(per_action), 0)

    world_model_parts = ("world", "codebook.unpress")  # what fine-tuning's stage 1 trains (parameter prefixes)

    def world_model_parameters(self) -> list[nn.Parameter]:
        """What fine-tuning's stage 1 trains as BWArea's world model: the world stack (embeddings, layers, the
        dynamics merge, norms, LM head) and the code book's ``unpress`` (c(a) = unpress(e_a)). The code book's
        entries e_k stay: the IDM quantises against them, and the IDM is never trained."""
        return list(self.world.parameters()) + list(self.codebook.unpress.parameters())

    def step_world_logits(self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None,
                          actions: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T-1, V) float32 of steps 0..T-2, step t under ``actions[:, t]`` ((B, T-1) long):
        BWArea's training forward (:meth:`world_states` with ``current_actions``): the history merged with the
        IDM's actions, position t's own state with ``actions[:, t]``. Gradients flow into the world model."""
        with torch.no_grad():
            hist = self.idm_logits(ids, mask).argmax(-1)  # (B, T)
        return self.world_logits(ids, mask, hist, torch.cat([actions, hist[:, -1:]], 1))[:, :-1]

    def lm_nll_sum(self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None, valid: torch.Tensor) -> float:
        """Summed NLL of the next token of every ``valid`` step ((B, T-1) bool) under this model as a language model
        (:meth:`frozen_lm_logprobs` with its own policy: K passes of the world model's upper half)."""
        return float(-self.frozen_lm_logprobs(ids, mask, ids.shape[1] - 1, self.policy)[valid].sum())

    def lm_stepper(self, token_chooser) -> "BWAreaStepper":
        """The decode engine's stepper of this model as a plain language model, drawing tokens with
        ``token_chooser`` (the QD table's ``token_sampling`` row): BWArea has no backbone LM, so each token comes
        from the world model under an action sampled from the policy at temperature 1 (its generation)."""
        return BWAreaStepper(self, Chooser("sample"), token_chooser)

    def head_input(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the IDM and the policy read: the token ids themselves (each owns its embeddings). (B, T)."""
        return ids

    def __getattr__(self, name: str):
        if name in BACKBONE_ONLY:
            raise ReinlmError(
                f"latent: this command reads {name!r} of a latent model over a frozen backbone (its hidden states, "
                f"LM head or heads-only world model); a BWArea model has none (its parts own their embeddings and "
                f"its action enters between the world model's layers). On a BWArea directory reinlm runs: "
                f"`reinlm generate --latent DIR`, `reinlm explore --latent DIR`, `reinlm train --space latent "
                f"--latent DIR`, `reinlm latent train-q`, `reinlm search`, `reinlm latent qd`, `reinlm latent "
                f"finetune` and the model cards' code (reinlm.latent.compat); the latent benches need a "
                f"frozen-backbone directory.")
        return super().__getattr__(name)

    # ------------------------------------------------------------------ parts

    def idm_logits(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The IDM's -||z_t - e_k||^2 at every position t (B, T, K): z_t is read at position t+1 (it has seen
        token t+1), the last position reads its own (BWArea's shift)."""
        z = self.idm._features(ids, mask)  # (B, T, H)
        z = torch.cat([z[:, 1:], z[:, -1:]], dim=1)
        return self.codebook.quantise_logits(self.idm.out(z))

    def idm_logits_from_hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """IDM logits of steps 0..T-2 (the interface of the frozen-backbone family; the input is token ids)."""
        return self.idm_logits(ids, mask)[:, :-1]

    def policy_logits_from_hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """pi(a_t | x_<=t) logits (B, T, K) float32 from the token ids."""
        return self.policy(ids, mask)

    def world_states(self, ids: torch.Tensor, mask: torch.Tensor | None, actions: torch.Tensor,
                     current_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Final world-model states (B, T, H) (after the final norm) with ``actions`` (B, T) merged at every
        position, or - with ``current_actions`` (B, T) - BWArea's training forward (history merged with
        ``actions``, position t's own state with ``current_actions[t]``)."""
        s = self.world.lower(ids, mask)
        hist = self.world.merge(s, self.codebook.code(actions))
        if current_actions is None:
            return self.world.norm(self.world.upper(hist, mask))
        cur = self.world.merge(s, self.codebook.code(current_actions))
        return self.world.norm(self.world.upper_two_stream(hist, cur, mask))

    def token_logits(self, state: torch.Tensor) -> torch.Tensor:
        """LM head: (..., H) final states -> (..., V) float32 logits."""
        return self.world.lm_head(state).float()

    def world_logits(self, ids: torch.Tensor, mask: torch.Tensor | None, actions: torch.Tensor,
                     current_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) float32; see :meth:`world_states`."""
        return self.token_logits(self.world_states(ids, mask, actions, current_actions))

    # ------------------------------------------------------------------ the seeds' API

    def make_stepper(self, action_chooser, token_chooser, history: torch.Tensor | None = None) -> "BWAreaStepper":
        """The decode engine's stepper over this model (generation, search's expansions): token ids. ``history``
        (N, P-1) long: the actions merged at the prompt's positions 0..P-2 (default: the IDM's argmax); the
        world model's upper layers attend to them, so search re-starts a node's text with the actions that wrote
        it."""
        return BWAreaStepper(self, action_chooser, token_chooser, history)

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the tokenizer's files (atomically)."""
        from safetensors.torch import save_file

        with atomic_dir(out_dir) as tmp:
            write_json(tmp / CONFIG_FILE, self.config.to_dict())
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                       if not k.endswith("inv_freq")}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "cpu", dtype: str | None = None,
                        num_actions: int | None = None, **_ignored) -> "BWAreaModel":
        """Load a BWArea latent directory (``reinlm latent import-bwarea``). ``dtype``: the weights' (default:
        as stored). ``num_actions``, when given, must equal the checkpoint's K."""
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        cfg_path, w_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
        problem = json_file_problem(cfg_path) or safetensors_problem(w_path)
        if problem:
            raise ReinlmError(f"latent: {str(model_dir)!r} is a BWArea latent directory, but {problem}; import it "
                              f"again (`reinlm latent import-bwarea`).")
        config = BWAreaConfig.from_dict(json.loads(cfg_path.read_text()))
        if num_actions is not None and num_actions != config.num_code:
            raise ReinlmError(f"latent: num_actions K = {num_actions} was asked for, but {str(model_dir)!r} holds "
                              f"{config.num_code} actions; allowed: K = {config.num_code} for this model.")
        tok = None
        if (model_dir / "tokenizer_config.json").is_file() or (model_dir / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(model_dir))
        with torch.device("meta"):
            model = cls(config, tok)
        state = load_file(str(w_path), device=str(device))
        if dtype:
            state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if not k.endswith("inv_freq")]
        if missing or unexpected:
            raise ReinlmError(f"latent: {str(w_path)!r} does not match config.json (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}); import it again.")
        inv = _stack_kwargs(config)["rotary"].inv_freq.to(device)
        for m in model.modules():  # rotary frequencies: never stored, rebuilt from rope_theta in float32
            if isinstance(m, RotaryEmbedding):
                m.inv_freq = inv.clone()
        return model.eval()


class BWAreaStepper:
    """Stepper protocol of :func:`reinlm.rollout.decode.decode` over a :class:`BWAreaModel`.

    Per new position p: ``feed`` runs the token through the policy's and the world model's lower layers (with
    their key/value caches); ``choose`` draws the action from the policy's logits at p, merges it into the lower
    state, runs the upper layers at p (their cache holds the history merged with the actions taken), and picks
    the token. The prompt's history (positions 0 .. P-2) is merged with the IDM's actions (or ``history``, the
    actions that wrote it: search's expansions). ``finish`` returns
    ``{"hidden": token ids (B, P + R - 1)}``: what the policy reads.
    """

    records_states = True
    n_streams = 2

    def __init__(self, model: BWAreaModel, action_chooser, token_chooser, history: torch.Tensor | None = None):
        self.m, self.act, self.tok, self.history = model, action_chooser, token_chooser, history
        self.pol = model.policy_module()  # unwrapped (data-parallel RL wraps it)
        self.use_policy = action_chooser.mode in ("sample", "greedy")
        self.K = model.config.num_code

    def start(self, ids: torch.Tensor, mask: torch.Tensor, G: int, capacity: int) -> None:
        m, w = self.m, self.m.world
        N, P = ids.shape
        mask = mask.long()
        self.pol_cache = self.pol_logits = None
        if self.use_policy:
            self.pol_cache, self.pol_logits = self.pol.prefill(ids, mask, capacity)  # (N, K) at P-1
        s, low_cache = prefill_blocks(w.lower_blocks, w.embed(ids), mask, capacity, w.rotary)  # (N, P, H)
        if P > 1:
            hist_actions = (self.history if self.history is not None else
                            m.idm_logits_from_hidden(ids, mask).argmax(-1))  # (N, P-1)
            merged = w.merge(s[:, :-1], m.codebook.code(hist_actions))
            _, up_cache = prefill_blocks(w.upper_blocks, merged, mask[:, :-1], capacity, w.rotary)
        else:
            z = s.new_zeros(N, w.blocks[0].n_kv_heads, capacity, w.blocks[0].head_dim)
            up_cache = StackCache([z.clone() for _ in w.upper_blocks], [z.clone() for _ in w.upper_blocks])
        self.low_cache, self.up_cache, self.s_last = low_cache, up_cache, s[:, -1:]
        if G > 1:
            self.low_cache, self.up_cache = self.low_cache.repeat(G), self.up_cache.repeat(G)
            self.s_last, mask, ids = (t.repeat_interleave(G, 0) for t in (self.s_last, mask, ids))
            if self.pol_cache is not None:
                self.pol_cache = self.pol_cache.repeat(G)
                self.pol_logits = self.pol_logits.repeat_interleave(G, 0)
        B = N * G
        self.P = P
        self.ids = torch.cat([ids, ids.new_zeros(B, capacity - P)], dim=1)  # (B, cap)
        self.attn = torch.cat([mask, mask.new_ones(B, capacity - P)], dim=1)  # (b, cap)
        self.last_tok = None

    def choose(self, t: int, rows: torch.Tensor, u: torch.Tensor | None):
        m, w = self.m, self.m.world
        p = self.P + t - 1  # the position whose next token is chosen
        if self.use_policy and t > 0:
            self.pol_logits = self.pol.step(self.last_tok[:, None], self.attn[:, : p + 1], self.pol_cache, p)
        a, lp = self.act(self.pol_logits, None if u is None else u[:, 0], rows, self.K)
        x = w.merge(self.s_last, m.codebook.code(a)[:, None])  # (b, 1, H)
        x = step_blocks(w.upper_blocks, x, self.attn[:, : p + 1], self.up_cache, p, w.rotary)
        logits = w.read_out(x[:, 0])  # (b, V)
        nxt, _ = self.tok(logits, None if u is None else u[:, 1], rows)
        return nxt, lp, {"action": a}

    def feed(self, tok: torch.Tensor, rows: torch.Tensor, t: int) -> None:
        w = self.m.world
        p = self.P + t
        self.ids[rows, p] = tok
        self.s_last = step_blocks(w.lower_blocks, w.embed(tok[:, None]), self.attn[:, : p + 1], self.low_cache, p,
                                  w.rotary)
        self.last_tok = tok

    def keep(self, idx: torch.Tensor) -> None:
        self.low_cache, self.up_cache = self.low_cache.select(idx), self.up_cache.select(idx)
        self.attn, self.s_last, self.last_tok = self.attn[idx], self.s_last[idx], self.last_tok[idx]
        if self.pol_cache is not None:
            self.pol_cache = self.pol_cache.select(idx)
            self.pol_logits = self.pol_logits[idx]

    def policy_inputs(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """What the policy (and a Q-model) read at positions 0..n-1 of ``rows`` (the engine's row ids, (b,)): the
        token ids fed so far, (b, n) long."""
        return self.ids[rows, :n]

    def finish(self, R: int) -> dict[str, torch.Tensor]:
        return {"hidden": self.ids[:, : self.P + max(R - 1, 0)]}
