"""Classifier rewards: ``sentiment`` (VADER or a HF text classifier) and ``toxicity`` (profanity-check or a HF
classifier), plus :func:`toxicity_probability` for evaluation.

Each backend is a named function ``texts -> list[float]``; the factories only pick one (STYLE habit 3).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from reinlm.config.coerce import check_choice, check_range
from reinlm.errors import ConfigError, ReinlmError
from reinlm.progress import task
from reinlm.rewards.base import register_reward, reward_function
from reinlm.utils.chunks import chunked
from reinlm.utils.devices import resolve_device

# ---------------------------------------------------------------------------------------------- HF classifier


@functools.lru_cache(maxsize=4)
def load_text_classifier(name_or_path: str, device: str = "cpu"):
    """``(model, tokenizer)`` of a HF sequence-classification model (id or local dir), eval mode, cached."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reinlm.hub import resolve_model_dir

    where = resolve_model_dir(name_or_path)
    try:
        with task(f"loading text classifier {name_or_path}"):
            tok = AutoTokenizer.from_pretrained(where)
            model = AutoModelForSequenceClassification.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ReinlmError(
            f"reward: cannot load the text classifier {name_or_path!r} ({type(e).__name__}: {e}). Allowed: a local "
            f"directory with a sequence-classification model, or a Hugging Face id that is reachable or already in "
            f"the local Hugging Face cache; built-in offline backends: sentiment 'vader', toxicity "
            f"'profanity-check'.") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.to(resolve_device(device)).eval(), tok


def label_index(model, label: str, field: str) -> int:
    """Index of ``label`` in the classifier's labels (case-insensitive; ``LABEL_k`` or ``k`` also accepted)."""
    id2label = {int(i): str(name) for i, name in model.config.id2label.items()}
    for i, name in id2label.items():
        if name.lower() == str(label).lower() or str(label) in (str(i), f"LABEL_{i}"):
            return i
    raise ConfigError(f"{field}: got {label!r}; allowed: one of this classifier's labels "
                      f"{', '.join(id2label[i] for i in sorted(id2label))}.")


@torch.no_grad()
def classifier_scores(texts: list[str], name_or_path: str, label: str, score: str = "prob", device: str = "cpu",
                      batch_size: int = 32, max_length: int = 512, field: str = "label") -> list[float]:
    """Probability (``score="prob"``) or logit of ``label`` for each text under a HF classifier.

    Probabilities use softmax, or sigmoid when the model is multi-label (``problem_type``).
    """
    model, tok = load_text_classifier(name_or_path, device)
    idx = label_index(model, label, field)
    multi = getattr(model.config, "problem_type", None) == "multi_label_classification"
    out: list[float] = []
    for batch in chunked(list(texts), batch_size):
        enc = tok(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**enc.to(model.device)).logits.float()  # (b, n_labels)
        if score == "logit":
            vals = logits[:, idx]
        else:
            vals = torch.sigmoid(logits[:, idx]) if multi else logits.softmax(-1)[:, idx]
        out += vals.cpu().tolist()
    return out


# ---------------------------------------------------------------------------------------------- sentiment


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_scores(texts: list[str], label: str = "positive", score: str = "prob") -> list[float]:
    """VADER compound c in [-1, 1] mapped to ``label``: prob (c+1)/2 for positive, (1-c)/2 for negative;
    logit c for positive, -c for negative."""
    sign = 1.0 if label == "positive" else -1.0
    comp = [sign * _vader().polarity_scores(t)["compound"] for t in texts]
    return comp if score == "logit" else [(c + 1.0) / 2.0 for c in comp]


@register_reward("sentiment")
def sentiment(backend: str = "vader", label: str = "positive", score: Literal["prob", "logit"] = "prob",
              device: str = "cpu", batch_size: int = 32):
    """How strongly the completion expresses ``label`` (default: positive sentiment), higher = more.

    ``backend``: ``vader`` (offline lexicon; labels positive/negative) or a HF text-classification id/path
    (labels from its config). ``score``: ``prob`` in [0, 1] or ``logit`` (VADER: the compound score).
    """
    check_choice("sentiment.score", score, ("prob", "logit"))
    check_range("sentiment.batch_size", batch_size, 1)
    if backend == "vader":
        check_choice("sentiment.label", str(label).lower(), ("positive", "negative"))
        label = str(label).lower()

        def scores(texts):
            return vader_scores(texts, label, score)
    else:
        def scores(texts):
            return classifier_scores(texts, str(backend), label, score, device, int(batch_size), field="sentiment.label")

    @reward_function("sentiment")
    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return scores(completions)

    return reward


# ---------------------------------------------------------------------------------------------- toxicity

TOXICITY_BACKENDS = "'profanity-check' (offline linear model) or a HF text-classification id/path"


def profanity_probability(texts: list[str]) -> list[float]:
    """p(profane/toxic) per text from the alt-profanity-check linear model."""
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(list(texts))] if texts else []


def toxicity_probability(texts: list[str], backend: str = "profanity-check", label: str = "toxic",
                         device: str = "cpu", batch_size: int = 32) -> list[float]:
    """Probability that each text is toxic, in [0, 1] (for evaluation: expected max toxicity, toxic rate).

    ``backend``: ``profanity-check`` or a HF classifier whose ``label`` marks toxicity (e.g. ``toxic``).
    """
    if backend == "profanity-check":
        return profanity_probability(texts)
    return classifier_scores(texts, str(backend), label, "prob", device, int(batch_size), field="toxicity.label")


@register_reward("toxicity")
def toxicity(backend: str = "profanity-check", label: str = "toxic", device: str = "cpu", batch_size: int = 32):
    """Non-toxicity of the completion, 1 - p(toxic) in [0, 1] (higher = cleaner).

    ``backend``: ``profanity-check`` (offline) or a HF classifier id/path whose ``label`` marks toxicity.
    """
    check_range("toxicity.batch_size", batch_size, 1)
    if not isinstance(backend, str) or not backend:
        raise ConfigError(f"toxicity.backend: got {backend!r}; allowed: {TOXICITY_BACKENDS}.")

    @reward_function("toxicity")
    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [1.0 - p for p in toxicity_probability(completions, backend, label, device, batch_size)]

    return reward
