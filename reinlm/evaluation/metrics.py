"""Evaluation metrics as small pure functions on per-sample numbers (no model inside).

Each takes the per-sample values of an evaluation (B = prompts x samples) and the prompt index of each
sample (``group_ids``, B ints), and returns a dict of stable metric names (docs/evaluation.md explains
each). The model-dependent parts (scoring, embedding, log-probs) live in :mod:`reinlm.evaluation.scoring`
and :mod:`reinlm.evaluation.lm`; they produce the inputs of these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from reinlm.textstats import distinct_n, quality_diversity


def group_indices(group_ids: Sequence[int]) -> list[list[int]]:
    """Sample indices of each prompt, in order of first appearance: ``[0,0,1,1] -> [[0,1],[2,3]]``."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(int(g), []).append(i)
    return list(groups.values())


def _finite(values: Sequence[float | None]) -> list[int]:
    return [i for i, v in enumerate(values) if v is not None and math.isfinite(float(v))]


def reward_stats(scores: Sequence[float | None], group_ids: Sequence[int], prefix: str = "reward") -> dict[str, float]:
    """Mean and (population) std of the scores, and the mean over prompts of each prompt's best score.

    ``None`` / NaN scores (a reward that declined a sample) are left out; ``{prefix}/valid_fraction`` says how
    many counted. Names: ``{prefix}/mean``, ``{prefix}/std``, ``{prefix}/max_per_prompt``.
    """
    ok = set(_finite(scores))
    vals = np.array([float(scores[i]) for i in sorted(ok)], dtype=np.float64)
    out = {f"{prefix}/valid_fraction": len(ok) / len(scores) if len(scores) else 0.0}
    if not len(vals):
        return {**out, f"{prefix}/mean": float("nan"), f"{prefix}/std": float("nan"),
                f"{prefix}/max_per_prompt": float("nan")}
    maxes = [max(float(scores[i]) for i in g if i in ok) for g in group_indices(group_ids) if any(i in ok for i in g)]
    return {f"{prefix}/mean": float(vals.mean()), f"{prefix}/std": float(vals.std()),
            f"{prefix}/max_per_prompt": float(np.mean(maxes)), **out}


def distinct_per_prompt(completions: Sequence[str], group_ids: Sequence[int], ns: Sequence[int] = (1, 2, 3)
                        ) -> dict[str, float]:
    """Distinct-n of each prompt's samples (pooled over that prompt's M samples), averaged over prompts.

    Names: ``distinct/1``, ``distinct/2``, ``distinct/3`` (one per ``n``).
    """
    groups = group_indices(group_ids)
    return {f"distinct/{n}": float(np.mean([distinct_n([completions[i] for i in g], n) for g in groups]))
            if groups else 0.0 for n in ns}


def qd_from_embeddings(embeddings: np.ndarray, group_ids: Sequence[int]) -> dict[str, float]:
    """Quality-diversity (CoLA protocol) from per-sample sentence embeddings (B, D) and their prompt ids.

    Names: ``qd/similarity`` (mean within-prompt pairwise cosine) and ``qd/score`` (1 / similarity).
    """
    emb = np.asarray(embeddings)
    groups = [emb[g] for g in group_indices(group_ids)]  # each (M, D)
    out = quality_diversity(groups)
    return {"qd/similarity": out["similarity"], "qd/score": out["qd"]}


def perplexity_from_nll(nll_sums: Sequence[float], token_counts: Sequence[int]) -> dict[str, float]:
    """Perplexity of completions from the summed negative log-likelihood of each and its token count.

    ``perplexity/corpus`` = exp(sum of NLL / sum of tokens) (token-weighted);
    ``perplexity/mean_per_sample`` = mean over samples of exp(NLL_i / n_i). Samples with no token are left out.
    """
    keep = [i for i, n in enumerate(token_counts) if n > 0]
    if not keep:
        return {"perplexity/corpus": float("nan"), "perplexity/mean_per_sample": float("nan")}
    total_nll = sum(float(nll_sums[i]) for i in keep)
    total_n = sum(int(token_counts[i]) for i in keep)
    return {"perplexity/corpus": math.exp(total_nll / total_n),
            "perplexity/mean_per_sample": float(np.mean([math.exp(float(nll_sums[i]) / token_counts[i]) for i in keep]))}


def kl_from_logprobs(logp: Sequence[np.ndarray], logp_ref: Sequence[np.ndarray]) -> dict[str, float]:
    """KL of the policy to the reference on sampled completions: mean over sequences of sum_t (log p - log p_ref).

    ``logp[i]`` / ``logp_ref[i]`` are the teacher-forced log-probs of sequence i's completion tokens under
    each model (the k1 estimator of DESIGN.md section 3, summed per sequence). Names: ``kl/sequence_mean``
    and ``kl/token_mean`` (summed KL / total completion tokens).
    """
    seq = [float(np.sum(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))) for a, b in zip(logp, logp_ref)]
    n = sum(len(a) for a in logp)
    if not seq:
        return {"kl/sequence_mean": float("nan"), "kl/token_mean": float("nan")}
    return {"kl/sequence_mean": float(np.mean(seq)), "kl/token_mean": float(sum(seq) / n) if n else float("nan")}


def positive_rate(scores: Sequence[float], threshold: float) -> float:
    """Share of samples whose score is strictly above ``threshold`` (P(positive) > 0.5, VADER compound > 0.05)."""
    return float(np.mean([float(s) > threshold for s in scores])) if len(scores) else float("nan")


def toxicity_stats(probs: Sequence[float], group_ids: Sequence[int], threshold: float = 0.5) -> dict[str, float]:
    """The toxicity protocol of the PPO-intrinsic-reward seed (DESIGN.md section 5).

    ``toxicity/expected_max``: mean over prompts of the maximum toxicity among that prompt's samples;
    ``toxicity/any_rate``: share of prompts with at least one sample at or above ``threshold``;
    ``toxicity/mean``: mean toxicity over all samples.
    """
    groups = group_indices(group_ids)
    maxes = [max(float(probs[i]) for i in g) for g in groups]
    return {"toxicity/expected_max": float(np.mean(maxes)) if maxes else float("nan"),
            "toxicity/any_rate": float(np.mean([m >= threshold for m in maxes])) if maxes else float("nan"),
            "toxicity/mean": float(np.mean(probs)) if len(probs) else float("nan")}


def mean_rouge(f_scores: dict[str, Sequence[float | None]]) -> dict[str, float]:
    """Mean ROUGE F-measure per kind over samples that have a reference: ``rouge/rouge1`` etc."""
    out = {}
    for kind, vals in f_scores.items():
        ok = [float(v) for v in vals if v is not None]
        out[f"rouge/{kind}"] = float(np.mean(ok)) if ok else float("nan")
    return out
