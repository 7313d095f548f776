"""Where and in which precision rollouts are generated (flags ``--generation-backend``, ``--rollout-dtype``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinlm.config import check_choice, check_range, opt


@dataclass
class RolloutConfig:
    """How a token policy's rollouts are generated (``reinlm.rollout.engine.TokenRolloutEngine``)."""

    generation_backend: Literal["reinlm", "vllm"] = opt(
        "reinlm", "token rollouts: reinlm's decode engine, or vLLM running in the training process (pip install "
                  "'reinlm[vllm]'); the policy's weights are pushed into it after every optimiser step")
    rollout_dtype: Literal["auto", "same", "float32", "bfloat16"] = opt(
        "auto", "precision of the rollout weights: same (generate with the trained weights themselves), float32 / "
                "bfloat16 (a copy in that dtype, re-synced from the trained weights after every optimiser step), "
                "auto (bfloat16 where the device computes it natively, e.g. AVX512-BF16 CPUs and recent GPUs, else "
                "same). Sampling log-probs are recorded in this dtype")
    vllm_kv_cache_mb: int = opt(512, "vLLM backend: memory reserved for vLLM's KV cache, in MB")
    vllm_max_model_len: int = opt(2048, "vLLM backend: longest prompt + completion, in tokens")
    vllm_enforce_eager: bool = opt(True, "vLLM backend: skip vLLM's graph compilation (engine start ~15 s instead of "
                                         "90-140 s on a 2-core CPU; decoding speed within noise at these sizes)")

    def __post_init__(self):
        check_choice("generation_backend", self.generation_backend, ("reinlm", "vllm"))
        check_choice("rollout_dtype", self.rollout_dtype, ("auto", "same", "float32", "bfloat16"))
        check_range("vllm_kv_cache_mb", self.vllm_kv_cache_mb, 16)
        check_range("vllm_max_model_len", self.vllm_max_model_len, 16)
