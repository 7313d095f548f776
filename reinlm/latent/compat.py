"""The seeds' own usage code on any reinlm latent directory (BWArea card ../shared/seeds/001, CoLA card 000).

Change only the import line and the model path of a card's snippet:

- BWArea: ``from reinlm.latent.compat import create_intention_model, load_hf_tokenizer``;
- CoLA: ``from reinlm.latent.compat import IntentionForCausalLM`` (its ``AutoTokenizer.from_pretrained(DIR)``
  line reads the tokenizer files reinlm writes into every latent directory).

Either snippet runs on either family (heads over a frozen backbone, or BWArea): the wrapper
:class:`IntentionForCausalLM` speaks both cards' APIs, which differ in three places - ``set_action_sampling``
takes ``temp=`` (BWArea) or ``tau=`` (CoLA); ``get_action_info()`` returns BWArea's ``{"action_idx": [(B, 1)
per step]}`` and ``get_action_info(prob=True)`` CoLA's ``(actions (B, R), probabilities (B, R))``; ``model(...,
act_mode=True)`` returns CoLA's action logits (B, T, K) and ``model(...)`` BWArea's output (``logits`` (B, T, V),
``action_index`` (B, T), ``last_hidden_state``). Parameter names hold ``policy`` exactly for the policy's
weights, so BWArea's ``mark_only_param_as_trainable(model, bias="policy")`` selects the policy.

Differences from the published code, on purpose: the pad token is EOS when the tokenizer has none (BWArea's
``load_hf_tokenizer`` adds ``[PAD]``, an id past the embeddings, and resizes them with untrained rows); a
forced ``action_idx`` is reported back as BWArea does (``action_index`` holds the policy's own choice) but
actions recorded after a row ended are 0, not -1; ``repetition_penalty`` must be 1.0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reinlm.errors import ReinlmError
from reinlm.hub import load_tokenizer
from reinlm.latent.model import LatentActionModel
from reinlm.latent.modules import sample_actions


@dataclass
class IntentionOutput:
    """What BWArea's forwards return (the fields its card reads)."""

    logits: torch.Tensor  # (B, T, V) next-token logits, or (B, T, K) action logits (forward_policy)
    action_index: torch.Tensor  # (B, T)
    last_hidden_state: torch.Tensor | None = None  # (B, T, H) the state the LM head reads
    past_key_values: None = None


def _dtype_name(dtype) -> str | None:
    if dtype is None or dtype == "auto":
        return None
    return str(dtype).replace("torch.", "")


def load_hf_tokenizer(model_name_or_path: str, fast_tokenizer: bool = True, add_special_tokens=None):
    """The tokenizer of a reinlm latent directory (BWArea's ``bwareaModel.tokenizer.load_hf_tokenizer``): the
    directory's own tokenizer files, else its backbone's. ``add_special_tokens``: extra special tokens (str or
    list), added as BWArea does."""
    d = Path(model_name_or_path)
    if (d / "tokenizer_config.json").is_file() or (d / "tokenizer.json").is_file():
        tok = load_tokenizer(str(d))
    else:
        try:
            backbone = json.loads((d / "config.json").read_text())["backbone"]
        except (OSError, ValueError, KeyError) as e:
            raise ReinlmError(f"load_hf_tokenizer: {str(d)!r} is not a reinlm latent directory with a tokenizer "
                              f"({type(e).__name__}); allowed: a directory written by `reinlm latent pretrain`, "
                              f"`import-cola` or `import-bwarea`.") from e
        local = d / backbone
        tok = load_tokenizer(str(local) if backbone.startswith(".") and local.is_dir() else backbone)
    if add_special_tokens is not None:
        extra = [add_special_tokens] if isinstance(add_special_tokens, str) else list(add_special_tokens)
        tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


def create_intention_model(model_name_or_path: str, tokenizer=None, dropout=None, flash_attn: bool = False,
                           dtype=None) -> "IntentionForCausalLM":
    """BWArea's ``bwareaModel.model_utils.create_intention_model``: the latent directory as the card's model.
    ``dtype``: the weights' (torch dtype); ``dropout`` and ``flash_attn`` are accepted and unused (inference)."""
    return IntentionForCausalLM.from_pretrained(model_name_or_path, torch_dtype=dtype, tokenizer=tokenizer)


class IntentionForCausalLM(nn.Module):
    """Both cards' model class over a reinlm latent model (``.lam``: a LatentActionModel or a BWAreaModel)."""

    def __init__(self, lam, tokenizer=None):
        super().__init__()
        self.lam = lam
        self.tokenizer = tokenizer or lam.tokenizer
        self._steps: list[torch.Tensor] = []  # BWArea's action_info: the last position's action of each forward

    @classmethod
    def from_pretrained(cls, model_dir: str, torch_dtype=None, tokenizer=None, device: str = "cpu",
                        **_hf_kwargs) -> "IntentionForCausalLM":
        """Load a reinlm latent directory (either family). ``torch_dtype``: "auto" (as stored), or a dtype for
        the weights (the backbone and the heads of the frozen-backbone family)."""
        name = _dtype_name(torch_dtype)
        lam = LatentActionModel.from_pretrained(model_dir, device=device, dtype=name, heads_dtype=name)
        return cls(lam.eval(), tokenizer)

    @property
    def config(self):
        return self.lam.config

    @property
    def device(self) -> torch.device:
        return self.lam.device

    # ------------------------------------------------------------------ action settings and records

    def set_action_sampling(self, greedy: bool = True, temp: float | None = None, tau: float | None = None,
                            **kw) -> None:
        """BWArea's ``(greedy, temp)`` and CoLA's ``(greedy, tau)``."""
        t = tau if tau is not None else temp
        self.lam.set_action_sampling(greedy=greedy, tau=1.0 if t is None else t, **kw)

    def reset_action_info(self) -> None:
        self._steps = []
        self.lam.reset_action_info()

    def get_action_info(self, prob: bool = False):
        """``prob=False``: BWArea's ``{"action_idx": [(B, 1) per step]}``; ``prob=True``: CoLA's (actions (B, R),
        their probabilities (B, R)) of the last ``generate``."""
        if prob:
            return self.lam.get_action_info(prob=True)
        return {"action_idx": list(self._steps)}

    # ------------------------------------------------------------------ forwards

    def _policy_logits(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.lam.policy_logits_from_hidden(self.lam.head_input(ids, mask), mask)  # (B, T, K)

    def _draw(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.lam.action_sampling
        with torch.no_grad():
            return sample_actions(logits.detach(), greedy=s.greedy, tau=s.tau, top_k=s.top_k, top_p=s.top_p)

    def forward_policy(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       **_ignored) -> IntentionOutput:
        """Policy logits (B, T, K) (differentiable in the policy) and actions drawn per ``set_action_sampling``."""
        logits = self._policy_logits(input_ids, attention_mask)
        a = self._draw(logits)
        self._steps.append(a[:, -1:].cpu())
        return IntentionOutput(logits=logits, action_index=a)

    def forward_inverse(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        **_ignored) -> IntentionOutput:
        """IDM actions at every position (B, T) as BWArea returns them: position t holds the action of step t
        (it explains token t+1); the last position repeats the last step's reading. ``logits``: the IDM's."""
        with torch.no_grad():
            steps = self.lam.forward_inverse(input_ids, attention_mask).logits  # (B, T-1, K)
        logits = torch.cat([steps, steps[:, -1:]], dim=1)
        return IntentionOutput(logits=logits, action_index=logits.argmax(-1))

    def forward_world_model(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            action_idx: int | torch.Tensor = 0, **_ignored) -> torch.Tensor:
        """CoLA's: next-token logits (B, T, V) with ``action_idx`` (int, (B,) or (B, T)) at every step."""
        with torch.no_grad():
            return self.lam.forward_world_model(input_ids, attention_mask, action_idx)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, action_idx=None,
                act_mode: bool = False, **_ignored):
        """``act_mode=True`` (CoLA): the policy's action logits (B, T, K). Otherwise BWArea's forward: at every
        position the action is ``action_idx`` (int, or (B, T)) or the policy's draw; -> logits (B, T, V),
        ``action_index`` (the policy's draw, as BWArea reports it), ``last_hidden_state``."""
        if act_mode:
            return self._policy_logits(input_ids, attention_mask)
        lam = self.lam
        B, T = input_ids.shape
        with torch.no_grad():
            drawn = self._draw(self._policy_logits(input_ids, attention_mask))  # (B, T)
            a = drawn
            if action_idx is not None and not (isinstance(action_idx, int) and action_idx < 0):
                a = torch.as_tensor(action_idx, dtype=torch.long, device=input_ids.device).reshape(-1)
                a = a.view(B, T) if a.numel() == B * T else a.view(-1, 1).expand(B, T) if a.numel() == B else \
                    a.expand(B, T)
                lam._check_actions(a)
            state = lam.world_states(input_ids, attention_mask, a)
            logits = lam.token_logits(state)
        self._steps.append(drawn[:, -1:].cpu())
        return IntentionOutput(logits=logits, action_index=drawn, last_hidden_state=state)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = 1.0, pad_token_id: int | None = None,
                 eos_token_id=None, repetition_penalty: float = 1.0, num_beams: int = 1, **_hf_kwargs) -> torch.Tensor:
        """HF-style generation through policy + world model -> sequences (B, P+R); the actions are recorded for
        ``get_action_info`` in both cards' forms. HF options without effect here (``use_cache``,
        ``early_stopping``, ...) are accepted."""
        if repetition_penalty != 1.0:
            raise ReinlmError(f"generate: repetition_penalty {repetition_penalty}; allowed: 1.0 (latent generation "
                              f"draws its randomness in the actions).")
        out = self.lam.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p,
                                pad_token_id=pad_token_id, eos_token_id=eos_token_id, num_beams=num_beams,
                                return_dict=True)
        acts = out.actions.clamp(min=0).cpu()  # (B, R): 0 after a row ended (BWArea keeps drawing there)
        self._steps.extend(acts[:, i: i + 1] for i in range(acts.shape[1]))
        return out.sequences
