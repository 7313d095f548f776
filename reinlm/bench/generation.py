"""``reinlm bench generation``: decoding speed (tokens/s) of every generation backend, side by side.

Backends (``--backends``; by default all in one process with their calls alternating, see below):

- ``reinlm-float32`` / ``reinlm-bfloat16``: reinlm's rollout engine (``TokenRolloutEngine``, what training
  samples with) on the float32 weights themselves (``--rollout-dtype same``), or on its bfloat16 copy
  (``--rollout-dtype bfloat16``, the default ``auto`` on CPUs with native bfloat16);
- ``latent-bfloat16``: latent-action generation (``LatentActionModel.generate``: backbone + policy + world
  model per token) on the same backbone in bfloat16, heads float32 (``--latent DIR``, or fresh heads of
  the ``cpu`` preset: their speed does not depend on training);
- ``vllm-bfloat16`` / ``vllm-float32``: vLLM in the process (``reinlm.rollout.vllm_backend``, eager mode);
- ``hf-float32`` / ``hf-bfloat16``: Hugging Face ``model.generate`` (sampling, KV cache).

With ``--interleave`` (the default) every backend is loaded in one process and their timed calls alternate
(round robin, the order rotating each round), so the ratios are measured side by side even while the load of a
shared machine changes; ``--interleave false`` runs each backend in its own process, one after another.

Every backend generates the same shape, the one of an RL step: ``batch / group`` prompts of
``builtin:reviews`` x ``group`` samples each, exactly ``new_tokens`` tokens per row (EOS ignored), sampling
at temperature 1 without filters. Timed: the generate call only (model loading, engine start and one warm-up
call per batch size excluded); ``repeats`` timed calls per batch size, the median reported. Tokens/s = B *
new_tokens / seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from reinlm.bench.common import emit_result, ratio, run_child
from reinlm.config.build import build_config
from reinlm.config.coerce import check_range
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import Config, opt
from reinlm.errors import ConfigError
from reinlm.latent.model import LatentActionModel
from reinlm.rollout.config import RolloutConfig
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import encode_prompts
from reinlm.utils.devices import cast_parameters

BACKENDS = ("reinlm-float32", "reinlm-bfloat16", "latent-bfloat16", "vllm-bfloat16", "vllm-float32", "hf-float32",
            "hf-bfloat16")
DEFAULT_BACKENDS = ["reinlm-float32", "reinlm-bfloat16", "latent-bfloat16", "vllm-bfloat16", "hf-float32"]


@dataclass
class GenerationBenchConfig(Config):
    """Flags of ``reinlm bench generation``."""

    model: str = opt("smollm2-135m", "model: embedded alias, local dir or HF id (the latent backbone too)")
    backends: list[str] = opt(default_factory=lambda: list(DEFAULT_BACKENDS),
                              help="comma-separated backends: " + ", ".join(BACKENDS))
    batch_sizes: list[int] = opt(default_factory=lambda: [8, 16, 64], help="comma-separated batch sizes B (rows)", lo=1)
    group: int = opt(8, "samples per prompt G (B / G distinct prompts; each B must be a multiple of G)")
    new_tokens: int = opt(20, "tokens generated per row (EOS ignored)")
    repeats: int = opt(3, "timed calls per batch size (median reported), after one warm-up call")
    latent: str | None = opt(None, "latent model directory for latent-bfloat16 (default: fresh cpu-preset heads)")
    threads: int = opt(0, "torch CPU threads per backend process (0: torch's default)")
    seed: int = opt(0, "sampling seed", lo=0)
    interleave: bool = opt(True, "load every backend in ONE process and alternate their timed calls (round robin, "
                                 "rotating the order), so a shared machine's changing load hits all of them alike "
                                 "(the ratios are side by side); false: one process per backend, one after another")

    def __post_init__(self) -> None:
        super().__post_init__()  # every field checked and coerced first
        self.backends = [b.strip() for b in ([self.backends] if isinstance(self.backends, str) else self.backends)]
        for b in self.backends:
            if b not in BACKENDS:
                raise ConfigError(f"backends: got {b!r}; allowed: {', '.join(BACKENDS)}.")
        check_range("group", self.group, 1)
        check_range("new_tokens", self.new_tokens, 1)
        check_range("repeats", self.repeats, 1)
        check_range("threads", self.threads, 0)
        for b in self.batch_sizes:
            if not isinstance(b, int) or b < 1 or b % self.group:
                raise ConfigError(f"batch_sizes: got {b!r}; allowed: positive multiples of --group ({self.group}).")


# ----------------------------------------------------------------------------------------------- child side
def _prompts(n: int) -> list[str]:
    from reinlm.data import load_prompts

    base = load_prompts("builtin:reviews").prompts
    return [base[i % len(base)] for i in range(n)]


def _generators(cfg: GenerationBenchConfig, n: int):
    import torch

    return [torch.Generator().manual_seed(cfg.seed * 1000 + i) for i in range(n)]


def _make_runner(cfg: GenerationBenchConfig, backend: str):
    """-> (generate(prompts, G) -> tokens generated, info dict). Loading and engine start happen here."""
    import torch

    from reinlm.hub import load_causal_lm, resolve_model_dir

    kind, dtype = backend.split("-")
    sampling = SamplingConfig(max_new_tokens=cfg.new_tokens, ignore_eos=True)
    info: dict[str, Any] = {}
    if kind == "reinlm":  # exactly what training samples with: the rollout engine over float32 trained weights
        from reinlm.rollout.engine import TokenRolloutEngine

        model, tok = load_causal_lm(cfg.model, device="cpu", dtype="float32")
        engine = TokenRolloutEngine(model, tok, RolloutConfig(rollout_dtype="same" if dtype == "float32" else dtype))

        def run(prompts, G):
            batch = engine.generate(prompts, G, sampling, _generators(cfg, len(prompts)))
            return int(batch.response_mask.sum())
        return run, info
    if kind == "latent":
        if cfg.latent:
            lam = LatentActionModel.from_pretrained(cfg.latent, device="cpu", dtype=dtype)
        else:
            lam = LatentActionModel.from_backbone(cfg.model, device="cpu", dtype=dtype, seed=cfg.seed)
        lam.eval()
        lam.set_action_sampling(greedy=False, tau=1.0, top_k=0, top_p=1.0)
        tok = lam.tokenizer
        info["latent"] = cfg.latent or "fresh cpu-preset heads"

        def run(prompts, G):
            ids, mask = encode_prompts(tok, prompts, tok.pad_token_id or 0, add_special_tokens=False)
            out = lam.generate(ids, mask, max_new_tokens=cfg.new_tokens, num_return_sequences=G, eos_token_id=[],
                               generator=_generators(cfg, len(prompts)), return_dict=True)
            return int(out.response_mask.sum())
        return run, info
    if kind == "vllm":
        from reinlm.hub import load_tokenizer
        from reinlm.rollout.vllm_backend import VLLMEngine

        tok = load_tokenizer(cfg.model)
        engine = VLLMEngine(resolve_model_dir(cfg.model), tok, dtype=getattr(torch, dtype), max_model_len=512)
        info["engine_start_s"] = engine.start_s

        def run(prompts, G):
            batch = engine.generate(prompts, G, sampling, _generators(cfg, len(prompts)))
            return int(batch.response_mask.sum())
        return run, info
    if kind == "hf":
        model, tok = load_causal_lm(cfg.model, device="cpu", dtype="float32")
        model = cast_parameters(model, dtype).eval()

        def run(prompts, G):
            ids, mask = encode_prompts(tok, prompts, tok.pad_token_id)
            torch.manual_seed(cfg.seed)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                                     num_return_sequences=G, pad_token_id=tok.pad_token_id)
            return int(out[:, ids.shape[1]:].numel())
        return run, info
    raise ConfigError(f"backends: got {backend!r}; allowed: {', '.join(BACKENDS)}.")


def run_child_backend(cfg: GenerationBenchConfig, backend: str) -> dict[str, Any]:
    """Measure one backend at every batch size (in this process)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    run, info = _make_runner(cfg, backend)
    info["setup_s"] = time.perf_counter() - t0
    info["threads"] = torch.get_num_threads()
    per_batch = {}
    for B in cfg.batch_sizes:
        prompts = _prompts(B // cfg.group)
        run(prompts, cfg.group)  # warm-up (allocator, first-call caches)
        times, tokens = [], 0
        for _ in range(cfg.repeats):
            t = time.perf_counter()
            tokens = run(prompts, cfg.group)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        per_batch[str(B)] = {"tokens_per_s": tokens / med, "seconds": times, "tokens": tokens}
    return {"backend": backend, "batches": per_batch, **info}


def run_child_interleaved(cfg: GenerationBenchConfig) -> dict[str, Any]:
    """Measure every backend in this process, alternating their calls: for each batch size, one warm-up call per
    backend, then ``repeats`` rounds in which every backend runs once (the order rotates each round)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    runners, results = {}, {}
    for backend in cfg.backends:
        t0 = time.perf_counter()
        run, info = _make_runner(cfg, backend)
        info["setup_s"] = time.perf_counter() - t0
        runners[backend] = run
        results[backend] = {"backend": backend, "batches": {}, **info}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    names = list(runners)
    for B in cfg.batch_sizes:
        prompts = _prompts(B // cfg.group)
        times: dict[str, list[float]] = {n: [] for n in names}
        tokens: dict[str, int] = {}
        for n in names:
            runners[n](prompts, cfg.group)  # warm-up
        for r in range(cfg.repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t = time.perf_counter()
                tokens[n] = runners[n](prompts, cfg.group)
                times[n].append(time.perf_counter() - t)
        for n in names:
            med = statistics.median(times[n])
            results[n]["batches"][str(B)] = {"tokens_per_s": tokens[n] / med, "seconds": times[n], "tokens": tokens[n]}
    for n in names:
        results[n]["threads"] = torch.get_num_threads()
    return {"backends": results}


# ----------------------------------------------------------------------------------------------- parent side
def run_bench(args_or_cfg) -> dict[str, Any]:
    """Run every backend in its own process, one after another; -> ``{"backends": {...}, "ratios": {...}}``."""
    import os

    cfg = args_or_cfg if isinstance(args_or_cfg, GenerationBenchConfig) else build_config(GenerationBenchConfig,
                                                                                         args_or_cfg)
    from reinlm.rollout.vllm_backend import vllm_available

    load = {"before": os.getloadavg()[0]}
    results, skipped = {}, {}
    runnable = []
    for backend in cfg.backends:
        if backend.startswith("vllm") and not vllm_available():
            skipped[backend] = "vLLM is not installed (pip install 'reinlm[vllm]')"
        else:
            runnable.append(backend)
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if cfg.interleave and runnable:
        print(f"bench generation: {', '.join(runnable)} in one process, calls alternating ...", file=sys.stderr,
              flush=True)
        child_cfg = json.dumps({**asdict(cfg), "backends": runnable})
        results = run_child("reinlm.bench.generation", ["--child", "interleaved", "--child-config", child_cfg],
                            label="generation", timeout=3600 * len(runnable), env=env)["backends"]
    else:
        for backend in runnable:
            print(f"bench generation: {backend} ...", file=sys.stderr, flush=True)
            results[backend] = run_child("reinlm.bench.generation",
                                         ["--child", backend, "--child-config", json.dumps(asdict(cfg))],
                                         label=backend, timeout=3600, env=env)
    load["after"] = os.getloadavg()[0]
    ref = next((b for b in ("vllm-bfloat16", "vllm-float32") if b in results), None)
    ratios = {}
    if ref:
        for name, r in results.items():
            ratios[f"{name}/{ref}"] = {B: ratio(r["batches"][B]["tokens_per_s"], results[ref]["batches"][B]["tokens_per_s"])
                                       for B in r["batches"]}
    return {"config": asdict(cfg), "backends": results, "skipped": skipped, "ratios": ratios, "load_average": load}


def format_report(report: dict[str, Any]) -> str:
    sizes = [str(b) for b in report["config"]["batch_sizes"]]
    cfg = report["config"]
    how = "one process, calls alternating" if cfg.get("interleave") else "one process per backend"
    lines = [f"generation tokens/s, {cfg['model']}, {cfg['new_tokens']} new tokens per row, groups of {cfg['group']} "
             f"(median of {cfg['repeats']}, {how}; load average {report['load_average']['before']:.1f} -> "
             f"{report['load_average']['after']:.1f})"]
    head = f"{'backend':<18}" + "".join(f"{'B=' + b:>10}" for b in sizes) + "   setup s"
    lines += [head, "-" * len(head)]
    for name, r in report["backends"].items():
        lines.append(f"{name:<18}" + "".join(f"{r['batches'][b]['tokens_per_s']:>10.1f}" for b in sizes)
                     + f"{r.get('setup_s', 0):>10.1f}")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"{name:<18}  skipped: {why}")
    for name, per in report.get("ratios", {}).items():
        lines.append(f"{name:<34}" + "".join(f"{'B=' + b + ': ' + format(per[b], '.2f'):>12}" for b in sizes if b in per))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, GenerationBenchConfig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reinlm.bench.generation")
    p.add_argument("--child", required=True, choices=BACKENDS + ("interleaved",))
    p.add_argument("--child-config", required=True)
    a = p.parse_args(argv)
    cfg = GenerationBenchConfig(**json.loads(a.child_config))
    emit_result(run_child_interleaved(cfg) if a.child == "interleaved" else run_child_backend(cfg, a.child))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
