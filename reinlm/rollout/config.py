"""Where and in which precision token rollouts are generated (flags ``--generation-backend``, ``--rollout-dtype``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinlm.config.schema import Config, opt


@dataclass
class RolloutConfig(Config):
    """How a token policy's rollouts are generated (``reinlm.rollout.engine.TokenRolloutEngine``)."""

    generation_backend: Literal["reinlm", "vllm"] = opt(
        "reinlm", "token rollouts: reinlm's decode engine, or vLLM running in the training process (pip install "
                  "'reinlm[vllm]'); the policy's weights are pushed into it after every optimiser step")
    rollout_dtype: Literal["auto", "same", "float32", "bfloat16"] = opt(
        "auto", "precision of the token rollouts: same (sample with the trained weights themselves), float32 / "
                "bfloat16 (a copy in that dtype, re-synced from the trained weights before the first rollout after "
                "an optimiser step), auto (bfloat16 where the device computes it natively, e.g. AVX512-BF16 CPUs and "
                "recent GPUs, else same). Sampling log-probs are recorded in this dtype; the trainer recomputes its "
                "own and --tis corrects the mismatch. bfloat16 rollouts are deterministic but not batch-composition "
                "invariant (a prompt's samples can change with the other prompts of the batch): data-parallel runs "
                "equal one process exactly only with same/float32")
    vllm_kv_cache_mb: int = opt(512, "vLLM backend: memory reserved for vLLM's KV cache, in MB", lo=16)
    vllm_max_model_len: int = opt(2048, "vLLM backend: longest prompt + completion, in tokens (capped by the "
                                        "model's context)", lo=16)
    vllm_enforce_eager: bool = opt(True, "vLLM backend: skip vLLM's graph compilation (engine start ~15 s instead of "
                                         "90-140 s on a 2-core CPU)")
