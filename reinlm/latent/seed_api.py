"""The seeds' API shared by every latent model family (CoLA / BWArea cards, ../shared/seeds/000, 001).

``set_action_sampling``, ``reset_action_info`` / ``get_action_info`` and ``generate`` are written once here; a
family (:class:`~reinlm.latent.model.LatentActionModel` over a frozen backbone,
:class:`~reinlm.latent.bwarea.BWAreaModel`) supplies ``config.num_actions``, ``tokenizer``, ``device`` and
``make_stepper(action_chooser, token_chooser)`` (its stepper for :func:`reinlm.rollout.decode.decode`; search
expands with it too),
``head_input(ids, mask)`` (what the IDM and the policy read), ``idm_logits_from_hidden``,
``policy_logits_from_hidden``, ``world_states(ids, mask, actions)`` and ``token_logits(state)``.
Legend: B = batch, T = positions, P = prompt length, R = generated length, H = hidden size, K = actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reinlm.errors import ReinlmError
from reinlm.latent.config import ActionSampling
from reinlm.latent.modules import sample_actions
from reinlm.rollout.decode import decode
from reinlm.rollout.sampling import Chooser


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
    hidden: torch.Tensor  # what the policy reads at every position that was fed: (B, P+R-1, H) backbone states
    # (float32) for the frozen-backbone family, (B, P+R-1) token ids for BWArea (its policy owns its embeddings)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length:]  # (B, R)

    @property
    def response_mask(self) -> torch.Tensor:
        return self.attention_mask[:, self.prompt_length:]  # (B, R)



class SeedAPI:
    """Mixin: the seeds' action-sampling, action-info and generation API over a family's stepper."""

    def set_action_sampling(self, greedy: bool | None = None, tau: float | None = None, top_k: int | None = None,
                            top_p: float | None = None, temp: float | None = None) -> None:
        """Set how the policy's actions are drawn (``temp`` is the BWArea card's name for ``tau``)."""
        s = self.action_sampling
        tau = tau if tau is not None else temp
        self.action_sampling = ActionSampling(
            greedy=s.greedy if greedy is None else greedy, tau=s.tau if tau is None else tau,
            top_k=s.top_k if top_k is None else top_k, top_p=s.top_p if top_p is None else top_p)

    def forward_world_model(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            action_idx: int | torch.Tensor = 0) -> torch.Tensor:
        """Next-token logits (B, T, V) when action ``action_idx`` (int, (B,) or (B, T)) is taken at every step."""
        B, T = input_ids.shape
        a = torch.as_tensor(action_idx, dtype=torch.long, device=input_ids.device)
        a = a.view(B, 1).expand(B, T) if a.dim() == 1 else a.expand(B, T)
        self._check_actions(a)
        return self.token_logits(self.world_states(input_ids, attention_mask, a))

    def forward_inverse(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> InverseOutput:
        """IDM argmax actions of steps 0..T-2 (step t explains token t+1), their probabilities and logits."""
        logits = self.idm_logits_from_hidden(self.head_input(input_ids, attention_mask), attention_mask)
        return InverseOutput(logits.argmax(-1), logits.softmax(-1), logits)  # (B, T-1), (B, T-1, K) x 2

    def forward_policy(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> PolicyOutput:
        """Policy logits (B, T, K) and actions sampled with the current ``set_action_sampling`` settings."""
        logits = self.policy_logits_from_hidden(self.head_input(input_ids, attention_mask), attention_mask)
        s = self.action_sampling
        idx = sample_actions(logits, greedy=s.greedy, tau=s.tau, top_k=s.top_k, top_p=s.top_p, generator=generator)
        return PolicyOutput(logits, idx)

    def _check_actions(self, a: torch.Tensor) -> None:
        K = self.config.num_actions
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= K):
            raise ReinlmError(f"action_idx: got values in [{int(a.min())}, {int(a.max())}]; allowed: 0..{K - 1}.")

    def policy_module(self):
        """The policy's stack, unwrapped when data-parallel RL wrapped it in DDP (generation and the Q-model read it)."""
        pol = self.policy
        return getattr(pol, "module", pol)

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

        It runs reinlm's decode engine (:mod:`reinlm.rollout.decode`) with the family's stepper
        (``make_stepper``: :mod:`reinlm.latent.stepper`, or BWArea's in :mod:`reinlm.latent.bwarea`). Cost per step: one single-token backbone forward, one single-position
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
        out = decode(self.make_stepper(act, tok_chooser), input_ids, attention_mask.long(), samples_per_prompt=G,
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
