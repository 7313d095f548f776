"""``embedding_similarity``: closeness of the completion to a target text in a sentence-embedding space.

The notebook seed (seeds/002, cells 10-11) used ``-||e(a) - e(b)||`` of mean-pooled BERT states with an
unbounded ``functools.cache``; here any sentence-transformers model (default: the embedded MiniLM), cosine or
negative L2, batched encoding and a bounded LRU cache of embeddings.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch

from reinlm.config.coerce import check_choice, check_range
from reinlm.errors import bad_value
from reinlm.rewards.base import register_reward, reward_function


class EmbeddingCache:
    """Encodes texts with a sentence encoder in batches, keeping the last ``size`` embeddings (LRU).

    The encoder is loaded through :func:`reinlm.hub.load_sentence_encoder` on first use.
    """

    def __init__(self, model: str = "minilm", device: str = "cpu", batch_size: int = 32, size: int = 4096):
        self.model, self.device, self.batch_size, self.size = model, device, batch_size, size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._encoder = None
        self.hits = self.misses = 0

    @property
    def encoder(self):
        """The loaded SentenceTransformer (loaded lazily)."""
        if self._encoder is None:
            from reinlm.hub import load_sentence_encoder

            self._encoder = load_sentence_encoder(self.model, device=self.device)
        return self._encoder

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts`` as a (N, D) float tensor on CPU; only uncached texts go to the encoder."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        fresh = {}
        if missing:
            emb = self.encoder.encode(missing, batch_size=self.batch_size, convert_to_tensor=True,
                                      show_progress_bar=False)  # (M, D)
            fresh = dict(zip(missing, emb.detach().float().cpu()))
        out = []
        for t in texts:
            vec = fresh.get(t)
            if vec is None:
                vec = self._cache[t]
            self._cache[t] = vec
            self._cache.move_to_end(t)
            out.append(vec)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return torch.stack(out) if out else torch.zeros(0, 0)  # (N, D)


def similarity(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Row-wise similarity of (N, D) ``a`` to a (D,) ``b``: cosine, or negative Euclidean distance (neg_l2)."""
    if metric == "cosine":
        return torch.nn.functional.cosine_similarity(a, b[None, :], dim=-1)  # (N,)
    return -torch.linalg.vector_norm(a - b[None, :], dim=-1)  # (N,)


@register_reward("embedding_similarity")
def embedding_similarity(target: str, model: str = "minilm", metric: Literal["cosine", "neg_l2"] = "cosine",
                         batch_size: int = 32, cache_size: int = 4096, device: str = "cpu"):
    """Similarity of the completion's sentence embedding to the ``target`` text's (higher = closer).

    ``model``: an embedded alias (``minilm``), a local sentence-transformers directory or a hub id.
    ``metric``: ``cosine`` (in [-1, 1]) or ``neg_l2`` (minus the Euclidean distance, <= 0).
    """
    if not isinstance(target, str) or not target.strip():
        raise bad_value("embedding_similarity.target", target,
                        'a non-empty text, e.g. embedding_similarity:target="Hi there!"')
    check_choice("embedding_similarity.metric", metric, ("cosine", "neg_l2"))
    check_range("embedding_similarity.batch_size", batch_size, 1)
    check_range("embedding_similarity.cache_size", cache_size, 1)
    cache = EmbeddingCache(str(model), device, int(batch_size), int(cache_size))

    @reward_function("embedding_similarity")
    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        emb = cache.encode([target, *completions])  # (1 + B, D)
        return similarity(emb[1:], emb[0], metric).tolist()

    reward.cache, reward.target, reward.metric = cache, target, metric
    return reward
