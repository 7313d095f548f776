"""The latent stepper of the decode engine: backbone + policy (action) + world model (token) per step.

:func:`reinlm.rollout.decode.decode` drives it; ``LatentActionModel.generate`` builds it. One step for the
live rows (b of them): the policy's logits come from its own key/value cache (one new position per step,
never the whole history), the action chooser picks a_t and records its log-prob, the world model merges
the action into the last backbone state, the frozen LM head gives next-token logits, the token chooser
picks x_{t+1} (greedy by default: the randomness lives in the actions), and feeding x_{t+1} runs one
single-token backbone forward whose state h is kept (the update recomputes the policy from those states).
Legend: N = prompts, G = samples per prompt, B = N * G, P = prompt length, b = live rows, H = hidden size,
K = actions, V = vocabulary.
"""

from __future__ import annotations

import torch

from reinlm.rollout.decode import position_ids_from_mask
from reinlm.rollout.fast import decode_attention_on, pack_linears, packing_supported
from reinlm.rollout.fused import fused_decoder
from reinlm.rollout.sampling import Chooser
from reinlm.utils.devices import cast_parameters


class LatentStepper:
    """Stepper protocol of :func:`reinlm.rollout.decode.decode` over a ``LatentActionModel``.

    Args:
        lam: the latent-action model (its backbone, policy, world model and LM head are used as they are).
        action_chooser: picks a_t from the policy's logits (``sample``/``greedy``), or ``uniform`` / ``fixed``
            (then the policy is not run at all). Its log-prob is what the engine records per step.
        token_chooser: picks the token from the world model's logits.

    Uniform streams: column 0 of a step is the action's, column 1 the token's (sampling convention 4).
    ``choose`` returns the token, the action's log-prob and ``{"action": a_t}``; ``finish`` returns
    ``{"hidden": (B, P + R - 1, H)}``, the backbone states of every fed position (float32).
    """

    records_states = True
    n_streams = 2

    def __init__(self, lam, action_chooser: Chooser, token_chooser: Chooser):
        self.lam = lam
        self.act = action_chooser
        self.tok = token_chooser
        self.use_policy = action_chooser.mode in ("sample", "greedy")
        self.K = lam.config.num_actions
        self.fused, self.wm = None, lam.world_model  # context() may switch both to their fast forms

    def context(self):
        """Around the loop. A bfloat16 Llama-family backbone on a CPU with native bfloat16 decodes with the fused
        decoder (:mod:`reinlm.rollout.fused`: packed fused projections, float32 key/value buffers, its packed LM
        head) and the world model runs on a bfloat16 copy (:func:`generation_world_model`); another bfloat16
        backbone gets pre-packed linears and the decode attention; anything else runs as it is."""
        bb = self.lam.backbone
        self.fused = fused_decoder(bb)
        self.wm = generation_world_model(self.lam)
        if self.fused is None and next(bb.parameters()).dtype == torch.bfloat16 and packing_supported():
            pack_linears(bb)
        return decode_attention_on(bb)

    def start(self, ids: torch.Tensor, mask: torch.Tensor, G: int, capacity: int) -> None:
        lam = self.lam
        N, P = ids.shape
        B = N * G
        mask = mask.long()
        pos = position_ids_from_mask(mask)  # (N, P)
        h0, past = lam.backbone_hidden(ids, mask, position_ids=pos, use_cache=True)  # (N, P, H)
        self.pol_cache = self.pol_logits = None
        if self.use_policy and capacity > P:
            self.pol_cache, self.pol_logits = lam.policy_prefill(h0, mask, capacity)  # StackCache, (N, K)
        if G > 1:
            past.batch_repeat_interleave(G)
            h0, mask, pos = (t.repeat_interleave(G, 0) for t in (h0, mask, pos))
            if self.pol_cache is not None:
                self.pol_cache = self.pol_cache.repeat(G)
                self.pol_logits = self.pol_logits.repeat_interleave(G, 0)
        if self.fused is not None:  # single-token steps from here on: the fused decoder's own buffers
            self.fused.begin(past, capacity)
            past = None
        self.past, self.P = past, P
        self.hidden = h0.new_zeros(B, capacity, h0.shape[-1])  # (B, cap, H)
        self.hidden[:, :P] = h0
        self.attn = torch.cat([mask, mask.new_ones(B, capacity - P)], dim=1)  # (b, cap) backbone mask
        self.next_pos = pos[:, -1:] + 1  # (b, 1)
        self.h_last = h0[:, -1:]  # (b, 1, H)

    def choose(self, t: int, rows: torch.Tensor, u: torch.Tensor | None):
        lam = self.lam
        if self.use_policy and t > 0:  # the policy reads the state fed at the previous step
            self.pol_logits = lam.policy_step(self.h_last, self.attn[:, : self.P + t], self.pol_cache, self.P + t - 1)
        a, lp = self.act(self.pol_logits, None if u is None else u[:, 0], rows, self.K)
        state = self.wm(self.h_last, a[:, None])[:, 0]  # (b, H)
        logits = self.fused.logits(state).float() if self.fused is not None else lam.token_logits(state)  # (b, V)
        nxt, _ = self.tok(logits, None if u is None else u[:, 1], rows)
        return nxt, lp, {"action": a}

    def feed(self, tok: torch.Tensor, rows: torch.Tensor, t: int) -> None:
        P = self.P
        if self.fused is not None:
            h_new = self.fused.step(tok, self.next_pos[:, 0], self.attn[:, : P + t + 1]).float()[:, None]
        else:
            h_new, self.past = self.lam.backbone_hidden(tok[:, None], self.attn[:, : P + t + 1],
                                                        past_key_values=self.past, position_ids=self.next_pos,
                                                        use_cache=True)  # (b, 1, H)
        self.hidden[rows, P + t] = h_new[:, 0]
        self.h_last, self.next_pos = h_new, self.next_pos + 1

    def keep(self, idx: torch.Tensor) -> None:
        if self.fused is not None:
            self.fused.select(idx)
        else:
            self.past.batch_select_indices(idx)
        self.attn, self.next_pos, self.h_last = self.attn[idx], self.next_pos[idx], self.h_last[idx]
        if self.pol_cache is not None:
            self.pol_cache = self.pol_cache.select(idx)

    def policy_inputs(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """What the policy (and a Q-model) read at positions 0..n-1 of ``rows`` (the engine's row ids, (b,)): the
        backbone states fed so far, (b, n, H) float32."""
        return self.hidden[rows, :n]

    def finish(self, R: int) -> dict[str, torch.Tensor]:
        return {"hidden": self.hidden[:, : self.P + max(R - 1, 0)]}


def generation_world_model(lam):
    """The world model generation runs: a bfloat16 copy with pre-packed linears when the backbone is bfloat16 and
    the heads are float32 on a CPU with native bfloat16 (the world model is frozen while generating and its
    state goes to the bfloat16 LM head anyway; the policy, whose log-probs are recorded, stays as it is), else
    the world model itself. The copy is kept on the model and re-made when a world-model weight changed."""
    wm = lam.world_model
    wm = getattr(wm, "module", wm)
    bb_dtype = next(lam.backbone.parameters()).dtype
    if bb_dtype != torch.bfloat16 or wm.dtype == torch.bfloat16 or lam.device.type != "cpu" or not packing_supported():
        return wm
    key = tuple((p.data_ptr(), p._version) for p in wm.parameters())
    cached = lam.__dict__.get("_reinlm_wm16")
    if cached is None or cached[0] != key:
        import copy

        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors (the decode loop is in inference mode)
            copy16 = cast_parameters(copy.deepcopy(wm), torch.bfloat16).eval().requires_grad_(False)
            pack_linears(copy16)
        lam.__dict__["_reinlm_wm16"] = cached = (key, copy16)
    return cached[1]
