"""A token policy's rollout engine: what generates with which weights, and when those weights are re-synced.

Three ways to generate, one result (:class:`~reinlm.rollout.token.RolloutBatch`):

- reinlm's decode engine on the trained weights themselves (``rollout_dtype="same"``);
- reinlm's decode engine on a **copy in the rollout dtype** (bfloat16 by default where the hardware computes
  it natively): the copy is re-synced from the trained float32 weights before the first rollout after an
  optimiser step (LoRA adapters merged into it), so it always samples from the current policy;
- vLLM in the training process (``generation_backend="vllm"``, :mod:`reinlm.rollout.vllm_backend`), whose
  weights are pushed the same way.

The trainer calls :meth:`TokenRolloutEngine.weights_changed` after every optimiser step (cheap: it only marks
the copy stale). ``batch.logprobs`` are the sampling log-probs in the rollout dtype / backend; when that is
not the training precision they differ from the trainer's recompute by the precision mismatch, which the
algorithms' truncated importance sampling (TIS) corrects.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from reinlm.rollout.config import RolloutConfig
from reinlm.rollout.fast import pack_linears, packing_supported
from reinlm.rollout.fused import unsupported_reason
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import RolloutBatch, context_length, generate_rollouts
from reinlm.rollout.vllm_backend import VLLMEngine, get_engine
from reinlm.utils.fsdp import full_tensor
from reinlm.utils.devices import cast_parameters, native_bfloat16, resolve_dtype

log = logging.getLogger(__name__)


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)  # DDP


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every weight of ``model`` as a plain (non-LoRA) model names it.

    LoRA adapters are merged on the fly (W + scale * B A, computed without touching the trained weights); tied
    weights appear once. Names are those of the base ``*ForCausalLM`` (e.g. ``model.layers.0.mlp.up_proj.weight``),
    which is also what vLLM's ``load_weights`` expects.
    """
    model = _unwrap(model)
    if not _is_peft(model):
        yield from model.named_parameters()
        return
    base = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "get_base_layer"):
            adapters = [a for a in getattr(module, "active_adapters", []) if a in getattr(module, "lora_A", {})]
            if adapters and not getattr(module, "merged", False):
                w = module.get_base_layer().weight
                merged[f"{name}.weight"] = w + sum(module.get_delta_weight(a) for a in adapters).to(w.dtype)
    for name, p in base.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue
        clean = name.replace(".base_layer", "").replace(".modules_to_save.default", "")
        yield clean, merged.get(clean, p)


def resolve_rollout_dtype(name: str, train_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 where ``device`` computes it natively (and the weights are float32), else the training
    dtype; ``same`` -> the training dtype; ``float32`` / ``bfloat16`` as named."""
    if name == "same":
        return train_dtype
    if name == "auto":
        return torch.bfloat16 if train_dtype == torch.float32 and native_bfloat16(device) else train_dtype
    return resolve_dtype(name)


class TokenRolloutEngine:
    """Generates a token policy's rollouts (reinlm's decode engine or vLLM) and keeps their weights current.

    Args:
        model: the trained causal LM (a ``*ForCausalLM``, possibly a peft ``PeftModel`` or DDP-wrapped).
        tokenizer: its tokenizer.
        cfg: :class:`~reinlm.rollout.config.RolloutConfig`.
        model_dir: a directory holding the starting weights and tokenizer (the vLLM backend starts from it;
            ``reinlm.hub.resolve_model_dir`` of the model name).
        seed: seed of the vLLM engine.
    """

    def __init__(self, model: Any, tokenizer: Any, cfg: RolloutConfig | None = None, *, model_dir: str | None = None,
                 seed: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg or RolloutConfig()
        self.model_dir = model_dir
        self.seed = seed
        p = next(_unwrap(model).parameters())
        self.device, self.train_dtype = p.device, p.dtype
        self.dtype = resolve_rollout_dtype(self.cfg.rollout_dtype, self.train_dtype, self.device)
        self._copy: torch.nn.Module | None = None  # the rollout-dtype copy (reinlm backend), made at the first rollout
        self._vllm: VLLMEngine | None = None
        self._stale = True
        self.last_sync_s = 0.0  # seconds the last weight sync took (perf/rollout_sync_s)
        self.syncs = 0
        self.sharded = False  # the trained weights are FSDP shards: see keep_full_copy

    def keep_full_copy(self) -> None:
        """Before the trained model is sharded (``--sharding fsdp``): from now on rollouts run on a whole copy in the
        rollout dtype (the decode engine needs every weight, and processes decode different prompts for a different
        number of steps, so a sharded forward per token would hang), re-synced right after every optimiser step by
        gathering the shards on all processes (collective; then the main process alone may roll out, e.g. for the
        held-out evaluation)."""
        if self._copy is None:
            self._copy = self._make_copy()
        self._stale = False
        self.sharded = True

    @property
    def uses_copy(self) -> bool:
        """Whether rollouts run on a separate copy of the weights (another dtype, or vLLM)."""
        return self.cfg.generation_backend == "vllm" or self.dtype != self.train_dtype or self.sharded

    @property
    def same_numerics(self) -> bool:
        """Whether rollouts compute as the trained weights do: reinlm's engine in the training dtype (the trained
        model itself, or under FSDP its whole copy in the same dtype)."""
        return self.cfg.generation_backend != "vllm" and self.dtype == self.train_dtype

    def weights_changed(self) -> None:
        """Call after every optimiser step (on every process): the rollout weights are re-synced before the next
        rollout, or now when the trained weights are sharded (a gather every process must join)."""
        self._stale = True
        if self.sharded:
            self.sync()

    # ------------------------------------------------------------------ sync
    def _make_copy(self) -> torch.nn.Module:
        model = _unwrap(self.model)
        if _is_peft(model):
            base = copy.deepcopy(model).merge_and_unload()
        else:
            base = copy.deepcopy(model)

        base = cast_parameters(base, self.dtype).eval().requires_grad_(False)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and packing_supported() and \
                unsupported_reason(base) is not None:
            # oneDNN-packed linears; each re-packs itself after a sync changed its weight. A Llama-family copy
            # decodes with reinlm.rollout.fused instead (its own packed, fused weights, rebuilt after a sync)
            pack_linears(base)
        copied: torch.nn.Module = base
        return copied

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the trained weights into the rollout copy / vLLM now (LoRA merged)."""
        t0 = time.perf_counter()
        if self.cfg.generation_backend == "vllm":
            self._vllm_backend().load_weights(policy_weights(self.model))
        elif self.uses_copy:
            if self._copy is None:
                self._copy = self._make_copy()
            else:
                params = dict(self._copy.named_parameters())
                for name, w in policy_weights(self.model):
                    params[name].copy_(full_tensor(w))  # casts to the rollout dtype (FSDP: gathers the shards)
        self._stale = False
        self.last_sync_s = time.perf_counter() - t0
        self.syncs += 1

    def _vllm_backend(self) -> VLLMEngine:
        if self._vllm is None:
            self._vllm = get_engine(self.model_dir, self.tokenizer, dtype=self.dtype, cfg=self.cfg, seed=self.seed,
                                    context=context_length(_unwrap(self.model)))
        return self._vllm

    @property
    def rollout_model(self) -> Any:
        """The module the decode engine samples from (the trained model itself, or the synced copy)."""
        if self.uses_copy and self.cfg.generation_backend != "vllm":
            if self._stale or self._copy is None:
                self.sync()
            return self._copy
        return _unwrap(self.model)

    # ------------------------------------------------------------------ generate
    def generate(self, prompts: list[str], samples_per_prompt: int, sampling: SamplingConfig,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> RolloutBatch:
        """Sample ``samples_per_prompt`` completions per prompt -> RolloutBatch on the training device.

        ``generator``: one per prompt (or one, or None), as :func:`reinlm.rollout.token.generate_rollouts`.
        """
        if self.cfg.generation_backend == "vllm":
            backend = self._vllm_backend()
            if self._stale:
                self.sync()
            return backend.generate(prompts, samples_per_prompt, sampling, generator).to(self.device)
        model = self.rollout_model
        was_training = model.training
        model.eval()
        try:
            batch = generate_rollouts(model, self.tokenizer, prompts, samples_per_prompt, sampling, generator=generator)
        finally:
            model.train(was_training)
        return batch.to(self.device)
