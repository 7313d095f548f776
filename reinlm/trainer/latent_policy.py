"""The latent-space policy: RL trains only the small policy over K latent actions.

The backbone and the world model stay frozen (they never receive gradients). A rollout keeps the
backbone's hidden states, so the update re-runs only the policy's few causal blocks, never the
backbone. The KL to the frozen behaviour-cloned policy is exact over the K categories:
KL_t = sum_a pi(a | x_<=t) (log pi(a | x_<=t) - log pi_BC(a | x_<=t)).

Dimension legend: B = sequences, P = prompt length, R = response steps (one action and one token each),
T = P + R - 1 positions whose hidden states were computed, H = backbone hidden size, K = actions,
D = policy width.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from reinlm.algorithms.kl import categorical_kl
from reinlm.algorithms.ppo import ValueHead
from reinlm.errors import ConfigError, ReinlmError, required
from reinlm.latent.model import LatentActionModel
from reinlm.rollout.token import RolloutBatch, decode_completions, token_char_spans
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.policy import PolicyScores
from reinlm.utils.devices import cast_parameters


@dataclass
class LatentRolloutBatch(RolloutBatch):
    """A :class:`RolloutBatch` whose ``logprobs`` are action log-probs, plus what the update needs."""

    actions: torch.Tensor | None = None  # (B, R) chosen action per step (0 on padding)
    hidden: torch.Tensor | None = None  # (B, T, H) backbone states of every fed position
    hidden_mask: torch.Tensor | None = None  # (B, T)
    old_logp_all: torch.Tensor | None = None  # (B, R, K) sampling distribution over actions


def as_latent(batch: RolloutBatch) -> LatentRolloutBatch:
    """``batch`` typed as the latent batch it is: a latent policy only scores what its own :meth:`LatentPolicy.rollout`
    made (or joined from those), whose fields (backbone states, action distributions) the methods read."""
    return cast(LatentRolloutBatch, batch)


LORA_FILE = "policy_lora.safetensors"  # --latent-train lora: the adapters of a saved policy
LORA_MODULES = ["qkv", "proj", "gate", "up", "down"]  # every linear layer of a policy block (modules.CausalBlock)


def add_policy_lora(policy: torch.nn.Module, rank: int, alpha: int) -> None:
    """LoRA (Hu et al. 2021, peft) on every linear layer of the policy's blocks, in place: W x + (alpha / r) B A x
    with B = 0 at the start (the policy is unchanged); only A and B are trainable. The output layer and the
    embeddings are not adapted."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_MODULES),
                            policy)


def reference_policy(policy: torch.nn.Module, what: str) -> torch.nn.Module:
    """The frozen starting policy, the reference of the exact KL (and the frozen-LM and frozen-opponent figures).
    ``what`` = ``--latent-train``: with ``head`` only the output layer trains, so the reference shares the policy's
    frozen trunk (embeddings or input layer, blocks, norm: the same modules, not copied) and holds a frozen copy of
    the output layer alone (at BWArea 2.7B: 131 k parameters instead of a 1.1 B-parameter copy); else a frozen deep
    copy of the whole policy (made before LoRA adapters are added, so it stays the plain starting policy)."""
    if what != "head":
        return copy.deepcopy(policy).eval().requires_grad_(False)
    ref = copy.copy(policy)  # a second view of the same stack: its own module table
    ref._modules = dict(policy._modules)
    ref._modules["out"] = copy.deepcopy(policy.get_submodule("out")).eval().requires_grad_(False)
    return ref


def merged_lora_copy(policy: torch.nn.Module) -> torch.nn.Module:
    """A copy of a LoRA'd policy with every adapter merged into its linear layer (W + (alpha / r) B A) and the
    plain layers back in place: the state dict of the policy without adapters (what a latent directory holds)."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(policy)
    for name, mod in list(merged.named_modules()):
        if isinstance(mod, LoraLayer):
            mod.merge()
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, mod.get_base_layer())
    return merged


class LatentPolicy:
    """The :class:`~reinlm.trainer.policy.Policy` of latent space: wraps a
    :class:`~reinlm.latent.model.LatentActionModel` (trainable policy, frozen BC reference, and a value head on
    the policy's features with ``with_value_head``)."""

    rollout_logprobs_exact = True  # the rollout's action log-probs come from the training forward itself

    def __init__(self, cfg: TrainConfig, device: torch.device, latent_model: Any = None,
                 with_value_head: bool = False) -> None:
        self.cfg = cfg
        self.device = device
        if latent_model is None and not cfg.latent:
            raise ConfigError("latent: --space latent needs --latent DIR, a latent-action model directory.")
        self.lam = latent_model or LatentActionModel.from_pretrained(str(cfg.latent), device=str(device),
                                                                         dtype=cfg.frozen_dtype_name,
                                                                         num_actions=cfg.num_actions)
        self.lam.requires_grad_(False)
        if cfg.dtype == "float32" and any(p.dtype != torch.float32 for p in self.lam.policy.parameters()):
            # bfloat16 heads (an imported CoLA model): the trained policy gets float32 weights and AdamW state, as
            # the token policy does; an update of lr 1e-4 is below bfloat16's resolution for most weights. The
            # frozen heads stay in their dtype; the policy casts its inputs to its own dtype.

            cast_parameters(self.lam.policy, torch.float32)
        self.trained = self.trained_module(self.lam, cfg.latent_train)
        self.trained.requires_grad_(cfg.latent_train != "lora")
        self.tokenizer = self.lam.tokenizer
        if self.tokenizer is None:
            raise ReinlmError(f"latent: the backbone of {cfg.latent!r} has no tokenizer; it cannot score text.")
        self.ref_policy = reference_policy(self.lam.policy, cfg.latent_train)
        if cfg.latent_train == "lora":  # adapters after the reference copy: it stays the plain starting policy
            add_policy_lora(self.lam.policy, cfg.lora_r, cfg.lora_alpha)
        self.value_head = None
        if with_value_head:
            self.value_head = ValueHead(cast(int, self.lam.config.d_model)).to(device)  # the preset filled it
        self.num_actions = self.lam.config.num_actions

    @staticmethod
    def trained_module(lam: Any, what: str) -> torch.nn.Module:
        """The part of the policy RL trains (``--latent-train``): ``policy`` = all of it, ``head`` = its output
        layer (``policy.out``, BWArea's ``transformer_policy_layer``); ``lora``: the policy, of which only the
        adapters are trainable (:func:`add_policy_lora`)."""
        return cast(torch.nn.Module, lam.policy.out if what == "head" else lam.policy)

    @property
    def context_length(self) -> int:
        return self.lam.context_length

    @property
    def eos_token_ids(self) -> list[int]:
        """The ids that end a completion (the latent model family's: the tokenizer's EOS and, over a backbone,
        its generation config's)."""
        return self.lam.eos_token_ids()

    @property
    def policy(self) -> torch.nn.Module:
        return self.lam.policy

    # --- generation ---
    def _generate(self, prompts: list[str], samples_per_prompt: int, seeds: list[int],
                  greedy: bool = False) -> tuple[Any, torch.Tensor, torch.Tensor, list[str]]:
        tok = self.tokenizer
        G = samples_per_prompt
        rows = [p for p in prompts for _ in range(G)]
        # the N distinct prompts are prefilled once; generate repeats their caches G times
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)  # (N, P)
        # the sampled distribution must be exactly the one the update differentiates: no top-k/top-p here
        self.lam.set_action_sampling(greedy=greedy, tau=self.cfg.sampling.temperature, top_k=0, top_p=1.0)
        gens = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]  # one per prompt
        was_training = self.lam.policy.training
        self.lam.policy.eval()
        try:
            out = self.lam.generate(ids, mask, max_new_tokens=self.cfg.sampling.max_new_tokens, do_sample=False,
                                    generator=gens, return_dict=True, num_return_sequences=G)
        finally:
            self.lam.policy.train(was_training)
        return out, ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), rows  # (B, P)

    @torch.no_grad()
    def rollout(self, prompts: list[str], samples_per_prompt: int, seeds: list[int],
                greedy: bool = False) -> LatentRolloutBatch:
        """Sample G action sequences per prompt through policy + world model -> LatentRolloutBatch.

        ``seeds``: one per prompt; a prompt's G samples come from its own generator, so they do not depend on
        the rest of the batch (data-parallel processes that split the prompts draw what one process would).
        """
        if len(seeds) != len(prompts):
            raise ReinlmError(f"seeds: got {len(seeds)} for {len(prompts)} prompts; allowed: one seed per prompt.")
        out, ids, mask, rows = self._generate(prompts, samples_per_prompt, seeds, greedy=greedy)
        P = ids.shape[1]
        response_ids = out.response_ids
        response_mask = out.response_mask.long()
        actions = out.actions.clamp(min=0)  # (B, R); -1 after a row finished -> 0, masked anyway
        hidden_mask = out.attention_mask[:, : out.hidden.shape[1]].long()  # (B, T)
        logits = self.lam.policy(out.hidden, hidden_mask)[:, P - 1:]  # (B, R, K)
        old_logp_all = torch.log_softmax(logits.float() / self.cfg.sampling.temperature, dim=-1)
        logprobs = old_logp_all.gather(-1, actions[..., None]).squeeze(-1) * response_mask
        batch = LatentRolloutBatch(
            prompt_ids=ids, prompt_mask=mask, response_ids=response_ids, response_mask=response_mask,
            logprobs=logprobs, group_ids=torch.arange(len(prompts), device=self.device).repeat_interleave(samples_per_prompt),
            prompts=rows, completions=decode_completions(self.tokenizer, response_ids, response_mask),
            temperature=float(self.cfg.sampling.temperature), pad_token_id=int(self.tokenizer.pad_token_id or 0),
            actions=actions, hidden=out.hidden, hidden_mask=hidden_mask, old_logp_all=old_logp_all,
        )
        return batch

    # --- scoring ---
    def action_logp_all(self, policy: torch.nn.Module, batch: LatentRolloutBatch) -> torch.Tensor:
        """log pi(a | x_<=t) / temperature, normalised, of ``policy`` (the trained or the reference one) at the
        batch's R response steps: (B, R, K), from its states ``hidden`` (B, T, ...)."""
        P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
        logits = policy(batch.hidden, batch.hidden_mask)[:, P - 1:P - 1 + R]  # (B, R, K)
        return torch.log_softmax(logits.float() / self.cfg.sampling.temperature, dim=-1)

    def score(self, batch: RolloutBatch, need_values: bool = False, need_dist: bool = False) -> PolicyScores:
        """logp (B, R) of the taken actions, entropy (B, R), the whole distributions (B, R, K) and values (B, R)
        if asked, with gradients."""
        batch = as_latent(batch)
        logp_all = self.action_logp_all(self.lam.policy, batch)  # (B, R, K)
        logp = logp_all.gather(-1, required(batch.actions, "latent batch: actions")[..., None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        values = None
        if need_values and self.value_head is not None:
            P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
            feats = self.lam.policy.features(required(batch.hidden, "latent batch: hidden"), batch.hidden_mask)[:, P - 1:P - 1 + R]  # (B, R, D)
            values = self.value_head(feats)
        return PolicyScores(logp, entropy, values, logp_all)

    @torch.no_grad()
    def reference(self, batch: RolloutBatch) -> PolicyScores:
        """The frozen BC policy's scores, with its whole action distributions (B, R, K) for the exact KL.

        Cheap (a few small blocks over cached states), so it is computed even when beta = 0, for the metric.
        """
        batch = as_latent(batch)
        logp_all = self.action_logp_all(self.ref_policy, batch)
        return PolicyScores(logp_all.gather(-1, required(batch.actions, "latent batch: actions")[..., None]).squeeze(-1), dist=logp_all)

    def reference_perplexity(self, batch: RolloutBatch, ref: PolicyScores | None, mask: torch.Tensor) -> float | None:
        """None: the reference is a policy over actions, not a language model (see :meth:`frozen_logprobs`)."""
        return None

    @torch.no_grad()
    def eval_kl(self, batch: RolloutBatch) -> torch.Tensor:
        """Summed exact KL of each sample's action distributions to the BC policy, (B,)."""
        batch = as_latent(batch)
        kl = categorical_kl(required(batch.old_logp_all, "latent batch: old_logp_all"), self.action_logp_all(self.ref_policy, batch))
        return (kl * batch.response_mask).sum(-1)

    @torch.no_grad()
    def frozen_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """Log-probs (B, R) of the response tokens under the frozen starting language model, temperature 1: the
        backbone itself, or BWArea's world model marginalised over the frozen policy's actions
        (``frozen_lm_logprobs`` of the model family)."""
        R = batch.response_ids.shape[1]
        return self.lam.frozen_lm_logprobs(batch.input_ids, batch.attention_mask, R, self.ref_policy)

    def rollout_kl(self, batch: RolloutBatch, ref: PolicyScores | None, estimator: str,
                   old: torch.Tensor | None = None) -> torch.Tensor | None:
        """Exact per-step KL(pi_old || pi_BC) over the K actions, (B, R), from the sampling distributions the
        rollout kept; no estimator (nor ``old``) is needed."""
        batch = as_latent(batch)
        if ref is None:
            return None
        return categorical_kl(required(batch.old_logp_all, "latent batch: old_logp_all"), required(ref.dist, "latent batch: reference distribution"))

    def kl_loss(self, batch: RolloutBatch, scores: PolicyScores, ref: PolicyScores) -> torch.Tensor:
        """Exact per-step KL(pi_theta || pi_BC), (B, R), differentiable in the policy."""
        batch = as_latent(batch)
        return categorical_kl(required(scores.dist, "latent batch: policy distribution"), required(ref.dist, "latent batch: reference distribution"))

    @torch.no_grad()
    def action_stats(self, batch: RolloutBatch) -> dict[str, float]:
        """How the rollout used its K actions (the collapse diagnostics of docs/latent.md):

        - ``latent/distinct_actions``: how many of the K actions were taken at least once in the batch;
        - ``latent/action_perplexity``: exp of the entropy of the batch's action frequencies (effective number
          of actions used; K = all used equally, 1 = one action everywhere);
        - ``latent/max_action_prob``: the policy's mean probability of its most likely action per step
          (from the (B, R, K) sampling distributions; near 1 = a deterministic policy).
        """
        batch = as_latent(batch)
        mask = batch.response_mask.bool()  # (B, R)
        taken = required(batch.actions, "latent batch: actions")[mask]  # (n,)
        if taken.numel() == 0:
            return {}
        freq = torch.bincount(taken, minlength=self.num_actions).float()
        p = freq / freq.sum()
        ent = float(-(p[p > 0] * p[p > 0].log()).sum())
        top = required(batch.old_logp_all, "latent batch: old_logp_all").exp().amax(-1)[mask]  # (n,)
        return {"latent/distinct_actions": int((freq > 0).sum()), "latent/action_perplexity": math.exp(ent),
                "latent/max_action_prob": float(top.mean())}

    def token_spans(self, batch: RolloutBatch) -> list[list[tuple[int, int]]]:
        return token_char_spans(self.tokenizer, batch.response_ids, batch.response_mask)

    # --- parameters and persistence ---
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.trained.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    def backward(self, accelerator: Any, loss: torch.Tensor) -> None:
        accelerator.backward(loss)

    def after_optimizer_step(self) -> None:
        """The weights changed (nothing to refresh: rollouts run the trained policy itself)."""

    def step_metrics(self) -> dict[str, float]:
        """None: the BC reference reads the same (frozen-dtype) backbone states as the policy, so its exact KL
        has no dtype error to report."""
        return {}

    def wrap_for_ddp(self, accelerator: Any) -> None:
        self.lam.policy = accelerator.prepare_model(self.lam.policy)
        if self.value_head is not None:
            self.value_head = accelerator.prepare_model(self.value_head)

    def shard(self) -> torch.nn.Module:
        """FSDP is token-space only (TrainConfig refuses ``--sharding fsdp`` with ``--space latent``)."""
        raise ConfigError("sharding: fsdp is token-space only; the latent policy is a few small heads.",
                          field="sharding")

    def gather_state(self) -> None:
        """Nothing is sharded in latent space."""

    def _unwrap(self) -> torch.nn.Module:
        pol = self.lam.policy
        return getattr(pol, "module", pol)

    def save(self, out_dir: str | Path) -> None:
        """A complete latent model directory (config + heads, or BWArea's weights) holding the current policy;
        with ``--latent-train lora`` the adapters merged into it, and the adapters alone in ``LORA_FILE`` (what
        a resumed run reads back)."""
        wrapped = self.lam.policy
        lora = self.cfg.latent_train == "lora"
        self.lam.policy = merged_lora_copy(self._unwrap()) if lora else self._unwrap()
        try:
            self.lam.save_pretrained(out_dir)
        finally:
            self.lam.policy = wrapped
        if lora:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in self._unwrap().state_dict().items()
                       if "lora_" in k}, str(Path(out_dir) / LORA_FILE))

    save_final = save

    def load(self, policy_dir: str | Path) -> None:
        """Load the policy weights of a latent model directory written by :meth:`save`."""
        from safetensors.torch import load_file

        if self.cfg.latent_train == "lora":  # the starting policy plus the saved adapters
            missing, unexpected = self._unwrap().load_state_dict(load_file(str(Path(policy_dir) / LORA_FILE)),
                                                                  strict=False)
            assert not unexpected and not [k for k in missing if "lora_" in k], (missing, unexpected)
            return
        state = load_file(str(Path(policy_dir) / self.lam.weights_file))
        pol = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
        self._unwrap().load_state_dict(pol)
