"""``evaluate(cfg)``: sample (or read) completions, compute the chosen metrics, write eval.json + samples.jsonl.

Each metric is a named function ``(EvalContext) -> MetricOutput`` in :data:`METRICS`; the numbers come
from the pure functions of :mod:`reinlm.evaluation.metrics`. Metric names in ``eval.json`` are stable and
grouped by prefix (docs/evaluation.md, "Metrics").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reinlm.config.build import config_to_dict
from reinlm.config.schema import DTYPE_CHOICES, Config, check_device, opt
from reinlm.errors import ConfigError, ReinlmError
from reinlm.evaluation import metrics as M
from reinlm.evaluation.generations import (Generations, ModelSource, prompt_columns, read_generations, resolve_source,
                                           sample_from_latent, sample_from_lm)
from reinlm.evaluation.lm import completion_logprobs, same_vocabulary
from reinlm.progress import task
from reinlm.rewards import parse_reward_spec
from reinlm.rewards.classifiers import classifier_scores, toxicity_probability, vader_scores
from reinlm.rewards.rouge import rouge_f
from reinlm.utils.jsonio import append_jsonl, write_json
from reinlm.utils.rng import seed_everything

log = logging.getLogger("reinlm")

DEFAULT_METRICS = ("reward", "distinct", "qd", "perplexity", "kl")


@dataclass
class EvalConfig(Config):
    """Every ``reinlm eval`` option."""

    model: str | None = opt(None, "model to sample from: alias, HF id, local dir, or a run directory (uses RUN_DIR/final)")
    latent: str | None = opt(None, "latent-action model directory: sample with its policy + world model")
    generations: str | None = opt(None, "evaluate existing texts: a .jsonl with prompt, completion (and reference)")
    prompts: str = opt("builtin:neutral", "prompt SPEC (see reinlm train --help)")
    prompt_column: str = opt("prompt", "column holding the prompt in tabular prompt files")
    chat_template: bool = opt(False, "wrap text prompts as a user message of the chat template (message-list prompts always use it)")
    num_prompts: int = opt(8, "prompts evaluated, the first N of the set (0: all)", lo=0)
    samples_per_prompt: int = opt(8, "completions sampled per prompt (M)", lo=1)
    max_new_tokens: int = opt(20, "maximum completion length in tokens", lo=1)
    temperature: float = opt(1.0, "sampling temperature (latent: action temperature)", lo=0, lo_open=True)
    top_k: int = opt(0, "top-k filtering (0: off)", lo=0)
    top_p: float = opt(1.0, "nucleus filtering (1.0: off)", lo=0, lo_open=True, hi=1)
    reward: str | None = opt(None, "reward SPEC for the reward statistics (e.g. sentiment, 0.5*sentiment+toxicity)")
    metrics: str | None = opt(None, "comma-separated metrics (default: reward if --reward, distinct, qd, perplexity, "
                                    "kl if the reference differs from the policy)")
    reference_model: str | None = opt(None, "LM for perplexity and KL (default: the run's starting model, the "
                                            "latent backbone, the model itself, or smollm2-135m for --generations)")
    qd_encoder: str = opt("minilm", "sentence-transformers encoder for quality-diversity (alias, id or path)")
    sentiment_backend: str = opt("vader", "sentiment classifier: vader or a HF text-classification id/path")
    sentiment_label: str = opt("positive", "the classifier's positive label (HF backends)")
    toxicity_backend: str = opt("profanity-check", "toxicity classifier: profanity-check or a HF id/path")
    toxicity_label: str = opt("toxic", "the classifier's toxic label (HF backends)")
    reference_column: str = opt("reference", "column holding reference texts for ROUGE")
    seed: int = opt(0, "seed for sampling", lo=0)
    device: str = opt("auto", "cpu, cuda or auto", check=check_device)
    dtype: str = opt("float32", "model dtype: float32 or bfloat16", choices=DTYPE_CHOICES)
    batch_size: int = opt(8, "sequences per forward pass when scoring log-probs", lo=1)
    out: str | None = opt(None, "output directory for eval.json and samples.jsonl (default: evals/<name>-seed<S>)")

    def __post_init__(self):
        super().__post_init__()  # every field checked and coerced first
        if not (self.model or self.latent or self.generations):
            raise ConfigError("eval: nothing to evaluate; allowed: --model MODEL|RUN_DIR, --latent DIR, or "
                              "--generations FILE.jsonl.")
        if self.generations and (self.model or self.latent):
            raise ConfigError("eval: --generations evaluates existing texts and cannot be combined with --model or "
                              "--latent; pass one of them.")
        for name in self.metric_list():
            if name not in METRICS:
                raise ConfigError(f"metrics: got {name!r}; allowed: a comma-separated list of "
                                  f"{', '.join(METRICS)}.")
        if "reward" in self.metric_list() and not self.reward and self.metrics:
            raise ConfigError("metrics: 'reward' needs --reward SPEC (e.g. --reward sentiment).")

    def metric_list(self) -> list[str]:
        """The metrics to compute, in the order asked (defaults resolved)."""
        if self.metrics:
            return [m.strip() for m in str(self.metrics).split(",") if m.strip()]
        return [m for m in DEFAULT_METRICS if m != "reward" or self.reward]

    @property
    def out_dir(self) -> Path:
        """``--out``; else ``RUN_DIR/evals/seed<S>`` when the model is a run directory or its ``final/`` (the
        evaluation belongs with the run); else ``evals/<model name>-seed<S>``."""
        if self.out:
            return Path(self.out)
        run = _run_dir_of(self.model) if self.model and not self.generations and not self.latent else None
        if run is not None:
            return run / "evals" / f"seed{self.seed}"
        name = Path(str(self.generations or self.latent or self.model).rstrip("/")).name or "eval"
        if name == "final":
            name = Path(str(self.model or self.latent).rstrip("/")).parent.name
        return Path("evals") / f"{Path(name).stem}-seed{self.seed}"


def _run_dir_of(model: str) -> Path | None:
    """The run directory when ``model`` is one (config.yaml beside final/ or checkpoints/) or its ``final/``."""
    path = Path(str(model).rstrip("/")).expanduser()
    for d in (path, path.parent) if path.name == "final" else (path,):
        if (d / "config.yaml").is_file() and ((d / "final").exists() or (d / "checkpoints").is_dir()):
            return d
    return None


@dataclass
class MetricOutput:
    """What one metric adds: aggregate numbers, per-sample columns (B values each) and info strings."""

    values: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, list] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    """The outcome of :func:`evaluate`: ``metrics`` (name -> number), ``info`` and the scored samples."""

    metrics: dict[str, float]
    info: dict[str, Any]
    samples: list[dict[str, Any]]
    out_dir: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "info": self.info}


class EvalContext:
    """The generations plus lazily loaded models shared by the metrics of one evaluation."""

    def __init__(self, cfg: EvalConfig, gens: Generations, source: ModelSource | None):
        self.cfg, self.gens, self.source = cfg, gens, source
        self._models: dict[str, tuple] = {}

    @property
    def reference_name(self) -> str:
        if self.cfg.reference_model:
            return self.cfg.reference_model
        if self.source is not None and self.source.default_reference:
            return self.source.default_reference
        return "smollm2-135m"

    @property
    def policy_name(self) -> str | None:
        return self.source.model if self.source is not None else None

    def lm(self, name: str):
        """``(model, tokenizer)`` loaded once per evaluation."""
        if name not in self._models:
            from reinlm.hub import load_causal_lm

            self._models[name] = load_causal_lm(name, device=self.cfg.device, dtype=self.cfg.dtype)
        return self._models[name]

    def logprobs(self, name: str) -> list[np.ndarray]:
        """Teacher-forced completion log-probs under model ``name`` (cached)."""
        key = f"logprobs::{name}"
        if key not in self._models:
            model, tok = self.lm(name)
            self._models[key] = (completion_logprobs(model, tok, self.gens.prompts, self.gens.completions,
                                                     self.cfg.batch_size),)
        return self._models[key][0]


# ---------------------------------------------------------------------------------------------- the metrics


def metric_reward(ctx: EvalContext) -> MetricOutput:
    """Reward statistics of ``--reward SPEC`` (total and each component)."""
    g = ctx.gens
    # chat data: the rewards see the message lists (TRL's form, as in training); text rewards the rendered prompt
    scores = parse_reward_spec(ctx.cfg.reward).score(g.raw_prompts or g.prompts, g.completions, g.columns,
                                                     prompt_texts=g.prompts if g.raw_prompts else None)
    valid = [bool(v) for v in scores.valid.tolist()]
    total = [float(t) if ok else None for t, ok in zip(scores.total.tolist(), valid)]
    out = MetricOutput(values=M.reward_stats(total, g.group_ids), per_sample={"reward": total},
                       info={"reward": ctx.cfg.reward})
    if len(scores.components) > 1:
        for name, comp in scores.components.items():
            vals = [float(t) if ok and t == t else None for t, ok in zip(comp.tolist(), valid)]  # NaN: not scored
            stats = M.reward_stats(vals, g.group_ids, prefix=f"reward/{name}")
            out.values[f"reward/{name}/mean"] = stats[f"reward/{name}/mean"]
            out.per_sample[f"reward/{name}"] = vals
    return out


def metric_distinct(ctx: EvalContext) -> MetricOutput:
    """Distinct-1/2/3 over each prompt's samples, averaged over prompts."""
    return MetricOutput(values=M.distinct_per_prompt(ctx.gens.completions, ctx.gens.group_ids))


def metric_qd(ctx: EvalContext) -> MetricOutput:
    """Quality-diversity (CoLA protocol) with a sentence-transformers encoder."""
    from reinlm.hub import load_sentence_encoder

    if max(np.bincount(ctx.gens.group_ids)) < 2:
        raise ConfigError("metrics: 'qd' compares the samples of one prompt and needs --samples-per-prompt >= 2 "
                          "(or a generations file with several completions per prompt).")
    encoder = load_sentence_encoder(ctx.cfg.qd_encoder, device="cpu")
    emb = encoder.encode(list(ctx.gens.completions), convert_to_numpy=True, batch_size=32, show_progress_bar=False)
    return MetricOutput(values=M.qd_from_embeddings(emb, ctx.gens.group_ids), info={"qd_encoder": ctx.cfg.qd_encoder})


def metric_perplexity(ctx: EvalContext) -> MetricOutput:
    """Perplexity of the completions given their prompts under the reference LM."""
    lp = ctx.logprobs(ctx.reference_name)
    nll = [float(-a.sum()) for a in lp]
    counts = [len(a) for a in lp]
    per = [math.exp(n / c) if c else None for n, c in zip(nll, counts)]
    return MetricOutput(values=M.perplexity_from_nll(nll, counts), per_sample={"perplexity": per},
                        info={"reference_model": ctx.reference_name})


def metric_kl(ctx: EvalContext) -> MetricOutput:
    """KL(policy || reference) on the sampled completions, teacher-forced on both models."""
    policy = ctx.policy_name
    if policy is None:
        raise ConfigError("metrics: 'kl' needs the policy's log-probs, so --model (a model or a token-space run "
                          "directory); it is not available with --generations or --latent.")
    ref = ctx.reference_name
    if str(ref) == str(policy):
        log.info("kl: the reference is the policy itself (%s); KL is 0 by definition", ref)
    if not same_vocabulary(ctx.lm(policy)[1], ctx.lm(ref)[1]):
        raise ConfigError(f"reference_model: got {ref!r}, whose tokenizer differs from the policy's; allowed for "
                          "'kl': a reference with the same vocabulary (e.g. the starting model).")
    lp, lr = ctx.logprobs(policy), ctx.logprobs(ref)
    per = [float(np.sum(a - b)) for a, b in zip(lp, lr)]
    return MetricOutput(values=M.kl_from_logprobs(lp, lr), per_sample={"kl": per}, info={"reference_model": ref})


def metric_sentiment(ctx: EvalContext) -> MetricOutput:
    """Share of positive samples: P(positive) > 0.5 (HF classifier) or VADER compound > 0.05."""
    backend = ctx.cfg.sentiment_backend
    texts = list(ctx.gens.completions)
    if backend == "vader":
        scores, threshold, rule = vader_scores(texts, "positive", "logit"), 0.05, "VADER compound > 0.05"
    else:
        scores = classifier_scores(texts, backend, ctx.cfg.sentiment_label, "prob", "cpu", ctx.cfg.batch_size,
                                   field="sentiment_label")
        threshold, rule = 0.5, f"P({ctx.cfg.sentiment_label}) > 0.5"
    return MetricOutput(values={"sentiment/positive_rate": M.positive_rate(scores, threshold)},
                        per_sample={"sentiment": scores}, info={"sentiment_backend": backend, "sentiment_rule": rule})


def metric_toxicity(ctx: EvalContext) -> MetricOutput:
    """Expected maximum toxicity over each prompt's samples and the share of prompts with any >= 0.5."""
    backend = ctx.cfg.toxicity_backend
    probs = toxicity_probability(list(ctx.gens.completions), backend, ctx.cfg.toxicity_label, "cpu", ctx.cfg.batch_size)
    return MetricOutput(values=M.toxicity_stats(probs, ctx.gens.group_ids), per_sample={"toxicity": probs},
                        info={"toxicity_backend": backend})


def metric_rouge(ctx: EvalContext) -> MetricOutput:
    """ROUGE-1/2/L F-measure of each completion against its reference (best of several references)."""
    col = ctx.cfg.reference_column
    if col not in ctx.gens.columns:
        raise ConfigError(f"metrics: 'rouge' needs a {col!r} column (got columns: "
                          f"{', '.join(sorted(ctx.gens.columns)) or 'none'}); allowed: a prompt set or generations "
                          "file with references, or --reference-column NAME.")
    refs = ctx.gens.columns[col]
    f = {k: [None if r in (None, "", []) else rouge_f(c, r, k) for c, r in zip(ctx.gens.completions, refs)]
         for k in ("rouge1", "rouge2", "rougeL")}
    return MetricOutput(values=M.mean_rouge(f), per_sample=dict(f))


METRICS: dict[str, Callable[[EvalContext], MetricOutput]] = {
    "reward": metric_reward, "distinct": metric_distinct, "qd": metric_qd, "perplexity": metric_perplexity,
    "kl": metric_kl, "sentiment": metric_sentiment, "toxicity": metric_toxicity, "rouge": metric_rouge,
}


# ---------------------------------------------------------------------------------------------- the driver


def collect_generations(cfg: EvalConfig) -> tuple[Generations, ModelSource | None, EvalContext | None]:
    """Read ``cfg.generations`` or sample from the model / latent model on the first prompts of ``cfg.prompts``."""
    if cfg.generations:
        return read_generations(cfg.generations), None, None
    from reinlm.data import load_prompts

    source = resolve_source(cfg.model, cfg.latent)
    pset = load_prompts(cfg.prompts, column=cfg.prompt_column, limit=cfg.num_prompts or None)
    prompts = list(pset.prompts)
    if not prompts:
        raise ReinlmError(f"prompts: {cfg.prompts!r} holds no prompts.")
    seed_everything(cfg.seed)

    with task(f"sampling {cfg.samples_per_prompt} completions for each of {len(prompts)} prompts"):
        gens, ctx = _sample(cfg, source, prompts)
    gens.columns = prompt_columns(dict(pset.columns), len(prompts), cfg.samples_per_prompt)
    return gens, source, ctx


def _sample(cfg: EvalConfig, source, prompts: list):
    """Generations of ``prompts`` from the latent model or the LM of ``source`` (and the eval context)."""
    if source.latent:
        gens = sample_from_latent(source.latent, prompts, cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                                  device=cfg.device, chat_template=cfg.chat_template)
        ctx = None
    else:
        ctx = EvalContext(cfg, Generations([], [], []), source)
        model, tok = ctx.lm(source.model)
        from reinlm.data import render_prompts

        raw = list(prompts)
        prompts = render_prompts(prompts, tok, cfg.chat_template)  # conversations: the chat template
        gens = sample_from_lm(model, tok, prompts, cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed)
        if any(not isinstance(p, str) for p in raw):  # chat data: rewards get messages, as in training
            gens.raw_prompts = [raw[g] for g in gens.group_ids]
    return gens, ctx


def evaluate(cfg: EvalConfig, write: bool = True) -> EvalResult:
    """Run the evaluation ``cfg`` describes; with ``write``, save ``eval.json`` and ``samples.jsonl`` in its out dir."""
    t0 = time.perf_counter()
    gens, source, ctx = collect_generations(cfg)
    if not len(gens):
        raise ReinlmError("eval: there are no completions to evaluate.")
    t_gen = time.perf_counter() - t0
    if ctx is None:
        ctx = EvalContext(cfg, gens, source)
    else:
        ctx.gens = gens
    names = cfg.metric_list()
    if ctx.policy_name is not None and "kl" in names and not cfg.metrics and str(ctx.reference_name) == str(ctx.policy_name):
        names.remove("kl")  # default set: KL to itself is 0, skip it
    values: dict[str, float] = {}
    per_sample: dict[str, list] = {}
    info: dict[str, Any] = {
        "model": cfg.model, "latent": cfg.latent, "generations": cfg.generations,
        "prompts": None if cfg.generations else cfg.prompts, "n_prompts": gens.n_prompts, "n_samples": len(gens),
        "samples_per_prompt": None if cfg.generations else cfg.samples_per_prompt,
        "max_new_tokens": None if cfg.generations else cfg.max_new_tokens, "seed": cfg.seed, "metrics": names,
    }
    for name in names:
        out = METRICS[name](ctx)
        values.update(out.values)
        per_sample.update(out.per_sample)
        info.update(out.info)
    info["seconds"] = {"generation": round(t_gen, 3), "total": round(time.perf_counter() - t0, 3)}
    info["config"] = config_to_dict(cfg)
    samples = [{"prompt": p, "completion": c, "group": g, **{k: v[i] for k, v in gens.columns.items()},
                **{k: v[i] for k, v in per_sample.items()}}
               for i, (p, c, g) in enumerate(zip(gens.prompts, gens.completions, gens.group_ids))]
    result = EvalResult(metrics=values, info=info, samples=samples)
    if write:
        out_dir = cfg.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "eval.json", result.to_json())
        path = out_dir / "samples.jsonl"
        path.unlink(missing_ok=True)
        for s in samples:
            append_jsonl(path, s)
        result.out_dir = out_dir
    return result


def format_table(metrics: dict[str, float], info: dict[str, Any] | None = None) -> str:
    """A two-column terminal table of the metrics (and a line of the backends used)."""
    width = max([len(k) for k in metrics] + [6])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    for k, v in metrics.items():
        lines.append(f"{k:<{width}}  {format_value(v)}")
    if info:
        notes = [f"{k}={info[k]}" for k in ("reference_model", "qd_encoder", "sentiment_rule", "toxicity_backend")
                 if info.get(k) is not None]
        head = f"{info.get('n_prompts')} prompts, {info.get('n_samples')} samples"
        lines.append(f"({head}{'; ' + ', '.join(notes) if notes else ''})")
    return "\n".join(lines)


def format_value(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)
