"""The token-space policy: the causal LM itself, its frozen reference, and an optional PPO value head.

Dimension legend: B = sequences in the batch, P = prompt length (left-padded), R = response length,
H = hidden size, V = vocabulary.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, cast

import torch

from reinlm.algorithms.kl import KLKind, kl_estimate
from reinlm.algorithms.ppo import ValueHead
from reinlm.hub import load_causal_lm, resolve_model_dir
from reinlm.rollout.engine import TokenRolloutEngine
from reinlm.rollout.token import RolloutBatch, SamplingConfig, eos_ids, token_char_spans, token_logprobs
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.lora import apply_lora, save_adapter, save_lora_final
from reinlm.trainer.policy import PolicyScores
from reinlm.utils.devices import cast_autocast_weights, cast_parameters

SYNCED_REFERENCE = "reference"  # --sync-ref-model: the mixed reference, in the checkpoint's policy/ directory


class TokenPolicy:
    """The :class:`~reinlm.trainer.policy.Policy` of token space: the trainable LM, the frozen reference and
    (``with_value_head``: algorithms whose ``needs.values``) a value head."""


    def __init__(self, cfg: TrainConfig, device: torch.device, model: Any = None, tokenizer: Any = None,
                 with_value_head: bool = False) -> None:
        self.cfg = cfg
        self.device = device
        if model is None:
            model, tokenizer = load_causal_lm(cfg.model, device=str(device), dtype=cfg.dtype)
        self.tokenizer = tokenizer
        self.uses_lora = cfg.lora_r > 0
        needs_ref = cfg.kl.kl_coef > 0
        if self.uses_lora:
            model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets, cfg.model)
            self.ref_model = None  # the reference is the same model with adapters disabled
        else:
            self.ref_model = self._frozen_copy(model) if needs_ref else None
        # frozen copy of the starting model for sample perplexity in evaluations (the reference when it exists)
        self.frozen_lm = self.ref_model
        if self.frozen_lm is None and not self.uses_lora and (cfg.eval_prompts > 0 or cfg.log_frozen_perplexity):
            self.frozen_lm = self._frozen_copy(model)
        self.model = model.to(device)
        self.model.train()  # no dropout in the supported LMs; train mode keeps the semantics honest
        if cfg.disable_dropout:
            disable_dropout(self.model)

        model_dir = None
        if cfg.rollout.generation_backend == "vllm":
            model_dir = resolve_model_dir(cfg.model)
        # generates the rollouts: the trained weights, a rollout-dtype copy (--rollout-dtype) or vLLM
        self.rollout_engine = TokenRolloutEngine(self.model, tokenizer, cfg.rollout, model_dir=model_dir, seed=cfg.seed)
        self._at_start = True  # the trained weights still equal the reference's (no optimiser step, no resume)
        self._optimizer_steps = 0  # counted for --sync-ref-model (saved with the mixed reference in checkpoints)
        self.sharded = False  # --sharding fsdp across several processes: see shard()
        self._gathered: dict[str, torch.Tensor] | None = None  # the whole state gathered for the next save (FSDP, main process)
        self._step_metrics: dict[str, float] = {}
        self.value_model = None
        self.value_head = None
        if with_value_head:
            hidden = model.config.hidden_size
            if cfg.ppo.value_model == "separate":  # a trainable copy of the starting model, in the training dtype
                self.value_model = copy.deepcopy(model).train().requires_grad_(True)
            self.value_head = ValueHead(hidden).to(device)

    def _frozen_copy(self, model: Any) -> Any:
        """A frozen deep copy of the starting model in ``--frozen-dtype`` (the reference, the evaluation copy).

        Its forward runs the training forward's numerics (:meth:`train_autocast`), so at the start its log-probs
        equal the policy's and the KL starts at 0. Under ``--train-precision bf16-autocast`` only the weights
        autocast multiplies in bfloat16 anyway are stored in ``--frozen-dtype`` (the linear layers; embeddings and
        norms stay float32, as in the training forward): bit for bit the training forward, in about half the
        memory. With LoRA there is no copy: the reference is the model with its adapters disabled.
        """
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        if self.cfg.train_precision == "bf16-autocast":
            return cast_autocast_weights(frozen, self.cfg.frozen_dtype_name)
        return cast_parameters(frozen, self.cfg.frozen_dtype_name)

    # --- generation ---
    @property
    def context_length(self) -> int:
        """The model's maximum sequence length in tokens."""
        conf = self._unwrapped.config
        n = getattr(conf, "max_position_embeddings", None) or getattr(conf, "n_positions", None) or 2048
        return int(n)

    @property
    def eos_token_ids(self) -> list[int]:
        """The ids that end a completion: the tokenizer's EOS and the generation config's."""
        return eos_ids(self._unwrapped, self.tokenizer)

    @property
    def _unwrapped(self) -> Any:
        return getattr(self.model, "module", self.model)

    def rollout(self, prompts: list[str], samples_per_prompt: int, seeds: list[int],
                greedy: bool = False) -> RolloutBatch:
        """Sample ``samples_per_prompt`` completions per prompt -> RolloutBatch (``greedy``: most likely tokens).

        ``seeds`` holds one seed per prompt: each prompt's group is drawn from its own generator, so the
        samples do not depend on which other prompts share the batch (or the process, under accelerate).
        """
        s = self.cfg.sampling
        sampling = SamplingConfig(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                                  repetition_penalty=s.repetition_penalty,
                                  max_new_tokens=s.max_new_tokens, greedy=greedy)
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        return self.rollout_engine.generate(prompts, samples_per_prompt, sampling, generator=gens)

    @property
    def rollout_logprobs_exact(self) -> bool:
        """True when rollouts run the training model itself, in its dtype (then equal within 1e-4, tested);
        False with a rollout copy in another dtype or vLLM (``--rollout-dtype``, ``--generation-backend``), or
        when training runs in mixed precision (``--train-precision bf16-autocast``). Under FSDP the rollouts run on a
        whole copy of the weights, exact when it is in the training dtype."""
        return self.rollout_engine.same_numerics and self.cfg.train_precision == "same"

    def train_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context of the training forward: ``torch.autocast`` to bfloat16 with ``--train-precision
        bf16-autocast`` (float32 weights, gradients and optimiser state), else nothing."""
        if self.cfg.train_precision == "bf16-autocast":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def frozen_logprobs(self, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
        """Log-probs (B, R) of the response tokens under the frozen starting model."""
        return self._frozen_forward(self.frozen_lm, batch, temperature)

    def _frozen_forward(self, frozen: Any, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        """Log-probs (B, R) of the response under ``frozen`` (LoRA: the model with its adapters off), in the
        training forward's numerics (:meth:`train_autocast`): one function for the policy and its reference."""
        R = batch.response_ids.shape[1]
        with self.train_autocast():
            if self.uses_lora:
                with self._unwrapped.disable_adapter():
                    return token_logprobs(self.model, batch.input_ids, batch.attention_mask, R, temperature).logp
            return token_logprobs(frozen, batch.input_ids, batch.attention_mask, R, temperature).logp

    @torch.no_grad()
    def eval_kl(self, batch: RolloutBatch) -> torch.Tensor:
        """Summed k1 KL of each sample to the starting model at the sampling temperature, (B,).

        The policy's side is the training model's own log-probs: the sampler's when they are exact, else
        recomputed (a bfloat16 rollout copy would otherwise add its rounding to the KL: 0.03 nats per
        20-token sample before any training on SmolLM2-135M).
        """
        ref = self.frozen_logprobs(batch, self.cfg.sampling.temperature)
        logp = batch.logprobs if self.rollout_logprobs_exact else self.score(batch).logp
        return (kl_estimate(logp, ref, "k1") * batch.response_mask).sum(-1)

    def rollout_kl(self, batch: RolloutBatch, ref: PolicyScores | None, estimator: str,
                   old: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-token KL estimate (B, R) of the sampled tokens between the policy that sampled (``old``, the
        trainer's log-probs, default the sampler's ``batch.logprobs``) and the reference; None when KL is off."""
        if ref is None:
            return None
        return kl_estimate(batch.logprobs if old is None else old, ref.logp, cast(KLKind, estimator))

    def kl_loss(self, batch: RolloutBatch, scores: PolicyScores, ref: PolicyScores) -> torch.Tensor:
        """Per-token k3 estimate of KL(pi_theta || pi_ref), (B, R), differentiable in the policy."""
        return kl_estimate(scores.logp, ref.logp, "k3")

    def reference_perplexity(self, batch: RolloutBatch, ref: PolicyScores | None, mask: torch.Tensor) -> float | None:
        """Perplexity of the sampled tokens (``mask``) under the frozen reference: free from its log-probs when
        they are at temperature 1 (a degeneration signal); None otherwise."""
        if ref is None or self.cfg.sampling.temperature != 1.0:
            return None
        mask = mask.float()
        return float(torch.exp(-(ref.logp * mask).sum() / mask.sum().clamp(min=1)))

    def action_stats(self, batch: RolloutBatch) -> dict[str, float]:
        """No action statistics in token space (the actions are the tokens)."""
        return {}

    def token_spans(self, batch: RolloutBatch) -> list[list[tuple[int, int]]]:
        """Character (start, end) of each response token in its completion string."""
        return token_char_spans(self.tokenizer, batch.response_ids, batch.response_mask)

    def backward(self, accelerator: Any, loss: torch.Tensor) -> None:
        accelerator.backward(loss)

    def after_optimizer_step(self) -> None:
        """The weights changed: a rollout copy / vLLM engine is re-synced before the next rollout; with
        ``--sync-ref-model`` the reference moves toward the policy every ``--ref-model-sync-steps`` steps."""
        self._at_start = False
        self._optimizer_steps += 1
        kl = self.cfg.kl
        if kl.sync_ref_model and self.ref_model is not None and self._optimizer_steps % kl.ref_model_sync_steps == 0:
            sync_reference(self._unwrapped, self.ref_model, kl.ref_model_mixup_alpha)
        self.rollout_engine.weights_changed()

    def step_metrics(self) -> dict[str, float]:
        """Metrics measured during this step, once: ``mismatch/ref_logp_abs`` at the first step when the
        reference runs in another dtype than the trained weights (see :meth:`reference`)."""
        out, self._step_metrics = self._step_metrics, {}
        return out

    def shard(self) -> torch.nn.Module:
        """FSDP2 (``--sharding fsdp``, several processes): shard the trained model across the processes
        (:func:`reinlm.utils.fsdp.shard_model`); rollouts keep a whole copy in the rollout dtype, made now from
        the unsharded weights and re-gathered after every optimiser step. Call before the optimiser is built."""
        from reinlm.utils.fsdp import shard_model

        self.rollout_engine.keep_full_copy()
        shard_model(self.model)
        self.sharded = True
        return cast(torch.nn.Module, self.model)

    def gather_state(self) -> None:
        """Collective under FSDP (every process calls it): gather the whole trained state for the next
        :meth:`save` / :meth:`save_final`, which the main process then writes. A no-op when nothing is sharded."""
        if self.sharded:
            from reinlm.utils.fsdp import full_model_state

            self._gathered = full_model_state(self.model)

    def _state_to_save(self) -> dict[str, torch.Tensor] | None:
        """The gathered whole state (FSDP) for ``save_pretrained(state_dict=...)``; None: the model's own."""
        if not self.sharded:
            return None
        if self._gathered is None:
            raise RuntimeError("FSDP: call gather_state() on every process before saving")
        return self._gathered

    def wrap_for_ddp(self, accelerator: Any) -> None:
        """Wrap the trainable modules for data-parallel gradient averaging."""
        self.model = accelerator.prepare_model(self.model)
        if self.value_model is not None:
            self.value_model = accelerator.prepare_model(self.value_model)
        if self.value_head is not None:
            self.value_head = accelerator.prepare_model(self.value_head)

    # --- scoring ---
    def score(self, batch: RolloutBatch, need_values: bool = False, need_dist: bool = False) -> PolicyScores:
        """Training forward: logp (B, R), entropy (B, R), values (B, R) if asked and the whole log-distributions
        (B, R, V) if ``need_dist`` (distillation), with gradients."""
        R = batch.response_ids.shape[1]
        shared_values = need_values and self.value_head is not None and self.value_model is None
        with self.train_autocast():  # the backward runs outside, as torch.autocast wants
            logp, entropy, hidden, dist = token_logprobs(self.model, batch.input_ids, batch.attention_mask, R,
                                                         self.cfg.sampling.temperature, return_entropy=True,
                                                         return_hidden=shared_values, return_dist=need_dist)
            values = None
            if need_values and self.value_head is not None:
                if self.value_model is not None:
                    hidden = token_logprobs(self.value_model, batch.input_ids, batch.attention_mask, R,
                                            self.cfg.sampling.temperature, return_hidden=True).hidden
                values = self.value_head(hidden).float()
        return PolicyScores(logp, entropy, values, dist)

    @torch.no_grad()
    def reference(self, batch: RolloutBatch) -> PolicyScores | None:
        """Log-probs (B, R) of the response under the frozen reference, in the training forward's numerics;
        ``None`` when KL is off."""
        if self.ref_model is None and not self.uses_lora:
            return None
        temperature = self.cfg.sampling.temperature
        logp = self._frozen_forward(self.ref_model, batch, temperature)
        if self._at_start and not self.uses_lora and self.cfg.frozen_dtype_name != self.cfg.dtype:
            # the error the frozen dtype adds to the KL, measured once: before any optimiser step the trained weights
            # are the reference's, so the training forward's log-probs are the exact reference
            exact = self._frozen_forward(self.model, batch, temperature)
            mask = batch.response_mask.float()
            self._step_metrics["mismatch/ref_logp_abs"] = float(((logp - exact).abs() * mask).sum()
                                                                / mask.sum().clamp(min=1))
            self._at_start = False
        return PolicyScores(logp)

    # --- parameters and persistence ---
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_model is not None:
            params += [p for p in self.value_model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    def modules(self) -> list[torch.nn.Module]:
        """The modules that receive gradients (for accelerate.prepare)."""
        return [m for m in (self.model, self.value_model, self.value_head) if m is not None]

    def save(self, out_dir: str | Path) -> None:
        """Write the policy as a loadable model directory (with LoRA: the adapter only, naming its base model)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        unwrapped = getattr(self.model, "module", self.model)
        if self.uses_lora:
            save_adapter(unwrapped, out_dir, self.cfg.model)
        else:
            unwrapped.save_pretrained(str(out_dir), safe_serialization=True, state_dict=self._state_to_save())
        self.tokenizer.save_pretrained(str(out_dir))
        if self.value_model is not None:  # PPO with a separate value model: it is trained state too
            vm = getattr(self.value_model, "module", self.value_model)
            vm.save_pretrained(str(out_dir / "value_model"), safe_serialization=True)
        if self.cfg.kl.sync_ref_model and self.ref_model is not None:  # the reference moved: it is state too
            from safetensors.torch import save_model

            (out_dir / SYNCED_REFERENCE).mkdir(exist_ok=True)
            save_model(self.ref_model, str(out_dir / SYNCED_REFERENCE / "model.safetensors"))  # tied weights once
            (out_dir / SYNCED_REFERENCE / "optimizer_steps.txt").write_text(str(self._optimizer_steps))

    def save_final(self, out_dir: str | Path) -> None:
        """Write the final model loadable by ``reinlm generate --model``. With LoRA: ``out_dir`` is the adapter
        (``peft.AutoPeftModelForCausalLM.from_pretrained(out_dir)``), with ``--lora-save-merged`` also
        ``out_dir/merged``, the merged model."""
        out_dir = Path(out_dir)
        unwrapped = getattr(self.model, "module", self.model)
        if self.uses_lora:
            save_lora_final(unwrapped, self.tokenizer, out_dir, self.cfg.model, merged=self.cfg.lora_save_merged)
            return
        unwrapped.save_pretrained(str(out_dir), safe_serialization=True, state_dict=self._state_to_save())
        self.tokenizer.save_pretrained(str(out_dir))

    def load(self, ckpt_policy_dir: str | Path) -> None:
        """Load policy weights saved by :meth:`save` into the live model."""
        ckpt_policy_dir = Path(ckpt_policy_dir)
        self._at_start = False  # trained weights from a checkpoint: no longer the reference's
        unwrapped = getattr(self.model, "module", self.model)
        if self.uses_lora:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(unwrapped, load_file(str(ckpt_policy_dir / "adapter_model.safetensors")))
        elif self.sharded:  # every process reads the whole state and keeps its shard; the rollout copy re-gathers
            from reinlm.utils.fsdp import load_full_model_state

            load_full_model_state(unwrapped, _read_safetensors_dir(ckpt_policy_dir))
            self.rollout_engine.weights_changed()
        else:
            _load_safetensors_dir_into(unwrapped, ckpt_policy_dir)
        ref_dir = ckpt_policy_dir / SYNCED_REFERENCE
        if self.cfg.kl.sync_ref_model and self.ref_model is not None and ref_dir.is_dir():
            _load_safetensors_dir_into(self.ref_model, ref_dir)
            self._optimizer_steps = int((ref_dir / "optimizer_steps.txt").read_text())
        value_dir = ckpt_policy_dir / "value_model"
        if self.value_model is not None and value_dir.is_dir():
            _load_safetensors_dir_into(getattr(self.value_model, "module", self.value_model), value_dir)


def sync_reference(model: torch.nn.Module, ref_model: torch.nn.Module, alpha: float) -> None:
    """ref <- alpha policy + (1 - alpha) ref, parameter by parameter in the reference's dtype (TRL's
    ``SyncRefModelCallback._sync_target_model``; TR-DPO, Gorbatovski et al. 2024)."""
    with torch.no_grad():
        for ref_p, p in zip(ref_model.parameters(), model.parameters(), strict=True):
            ref_p.data.mul_(1.0 - alpha).add_(p.data.to(ref_p.dtype), alpha=alpha)


def disable_dropout(model: torch.nn.Module) -> None:
    """Every ``torch.nn.Dropout`` of ``model`` to p = 0 (TRL's ``disable_dropout_in_model``, the same rule)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _read_safetensors_dir(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file of ``model_dir``."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def _load_safetensors_dir_into(model: torch.nn.Module, model_dir: Path) -> None:
    """Load every ``*.safetensors`` file of ``model_dir`` into ``model`` (tied LM-head weights may be absent)."""
    state = _read_safetensors_dir(model_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
