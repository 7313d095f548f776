"""Training batches for latent pretraining: read from the hidden-state cache, or streamed with the backbone's
states computed on the fly.

Both providers define one *global* batch of B windows per step, the same on every process, and each of W
processes takes windows ``rank::W`` of it; so W processes see exactly the windows one process sees, and the
stage losses (pretrain.py) normalise by the global token count.

- :class:`CachedWindows`: windows ``(start, end)`` into a :class:`~reinlm.latent.hidden_cache.HiddenCache`,
  in a seeded permutation per epoch. Stateless: batch ``s`` is a function of ``s`` (resume = start at s).
- :class:`StreamedWindows`: windows of a :class:`~reinlm.latent.corpus.TokenSource` through a seeded shuffle
  buffer, epoch after epoch; the backbone computes the states of each batch (the window is its context).
  Its state (stream position, buffer, generator) is saved with a checkpoint and restored exactly.

Legend: B = global batch (windows), b = this process's share, L = window length, H = hidden size.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from reinlm.errors import ReinlmError
from reinlm.latent.backbone import backbone_forward
from reinlm.latent.corpus import TokenSource, is_held_out


def pad_windows(windows: list[np.ndarray], device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token windows -> ids (b, L) long, mask (b, L) long, right-padded to the longest (L)."""
    L = max(len(w) for w in windows)
    ids = np.zeros((len(windows), L), dtype=np.int64)
    mask = np.zeros((len(windows), L), dtype=np.int64)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = w
        mask[i, : len(w)] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


@torch.no_grad()
def backbone_states(backbone, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The backbone's final normalised hidden states of right-padded windows: (b, L) -> (b, L, H) float32."""
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return backbone_forward(backbone, ids, mask, pos)[0].float()


def epoch_order(n: int, batch: int, epochs: float, seed: int) -> tuple[np.ndarray, int]:
    """Window indices of every step, concatenated (a fresh seeded permutation per epoch), and the step count."""
    total = max(1, int(math.ceil(epochs * n / batch)))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(int(math.ceil(epochs)) + 1)])
    return order, total


class CachedWindows:
    """Cache mode: ``windows`` (W, 2) = (start, end) into ``cache``; batch ``s`` = this process's share of the
    s-th slice of B windows of the epoch permutations."""

    def __init__(self, cache, windows: np.ndarray, batch: int, epochs: float, seed: int, rank: int = 0,
                 world: int = 1, steps: int = 0):
        self.cache, self.windows, self.batch_size = cache, windows, batch
        self.rank, self.world = rank, world
        self.order, self.total = epoch_order(len(windows), batch, epochs, seed)
        if steps:
            self.total = steps
            reps = int(math.ceil(steps * batch / max(len(windows), 1))) + 1
            self.order = np.concatenate([self.order] + [np.random.default_rng([seed, r]).permutation(len(windows))
                                                        for r in range(reps)])
        self.step = 0

    def global_windows(self, step: int) -> np.ndarray:
        return self.windows[self.order[step * self.batch_size:(step + 1) * self.batch_size]]

    def next_batch(self, device="cpu"):
        """-> h (b, L, H) float32, ids (b, L), mask (b, L), tokens of the global batch."""
        win = self.global_windows(self.step)
        self.step += 1
        h, ids, mask = self.cache.batch(win[self.rank::self.world], device)
        return h, ids, mask, int((win[:, 1] - win[:, 0]).sum())

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class StreamedWindows:
    """Stream mode: the training windows of ``source`` (documents not held out under ``split_seed``) through a
    shuffle buffer of ``buffer`` windows (order seeded by ``seed``), cycling over the corpus (at most
    ``max_tokens`` tokens an epoch when > 0); ``backbone`` computes each batch's states."""

    def __init__(self, source: TokenSource, backbone, batch: int, seed: int, held_out_fraction: float,
                 buffer: int = 4096, rank: int = 0, world: int = 1, max_tokens: int = 0, split_seed: int | None = None):
        self.source, self.backbone, self.batch_size = source, backbone, batch
        self.seed, self.fraction, self.buffer_size = seed, held_out_fraction, max(int(buffer), 1)
        self.split_seed = seed if split_seed is None else split_seed  # the held-out split's (same every stage)
        self.rank, self.world, self.max_tokens = rank, world, int(max_tokens)
        self.rng = np.random.default_rng([seed, 17])
        self.epoch, self.pos, self.epoch_tokens, self.train_tokens = 0, (0, 0), 0, 0
        self.buffer: list[np.ndarray] = []
        self._it: Iterator | None = None

    def _next_window(self) -> np.ndarray:
        for restart in (False, True):
            if restart:
                if self.train_tokens == 0:
                    raise ReinlmError(f"corpus: {self.source.spec!r} has no training window of 2 or more tokens "
                                      f"outside the held-out split; use a larger corpus.")
                self.epoch, self.pos, self._it = self.epoch + 1, (0, 0), None
                self.epoch_tokens = self.train_tokens = 0
            if self._it is None:
                self._it = iter(self.source.windows(self.pos))
            for doc, piece, w in self._it:
                if self.max_tokens and self.epoch_tokens + len(w) > self.max_tokens:
                    break
                self.pos = (doc, piece + 1)
                self.epoch_tokens += len(w)  # every token read counts towards the cap, held-out ones too
                if not is_held_out(doc, self.fraction, self.split_seed):
                    self.train_tokens += len(w)
                    return w
        raise AssertionError("unreachable")

    def global_windows(self) -> list[np.ndarray]:
        while len(self.buffer) < self.buffer_size:
            self.buffer.append(self._next_window())
        out = []
        for _ in range(self.batch_size):
            i = int(self.rng.integers(len(self.buffer)))
            out.append(self.buffer[i])
            self.buffer[i] = self._next_window()
        return out

    def next_batch(self, device="cpu"):
        """-> h (b, L, H) float32 (computed now by the backbone), ids (b, L), mask (b, L), global tokens."""
        win = self.global_windows()
        ids, mask = pad_windows(win[self.rank::self.world], device)
        return backbone_states(self.backbone, ids, mask), ids, mask, sum(len(w) for w in win)

    def state_dict(self) -> dict:
        lengths = [len(w) for w in self.buffer]
        return {"epoch": self.epoch, "pos": list(self.pos), "epoch_tokens": self.epoch_tokens,
                "train_tokens": self.train_tokens,
                "rng": self.rng.bit_generator.state, "buffer_lengths": lengths,
                "buffer": np.concatenate(self.buffer).tolist() if self.buffer else []}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.epoch_tokens = int(state["epoch"]), tuple(state["pos"]), int(state["epoch_tokens"])
        self.train_tokens = int(state["train_tokens"])
        self.rng.bit_generator.state = state["rng"]
        flat = np.asarray(state["buffer"], dtype=np.int32)
        cuts = np.cumsum([0] + list(state["buffer_lengths"]))
        self.buffer = [flat[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        self._it = None


def scan_corpus(source: TokenSource, fraction: float, seed: int, vocab: int, max_tokens: int = 0,
                eval_tokens: int = 16384) -> dict:
    """One pass over the corpus (tokenising only): training windows and tokens, the tokens seen in training
    (the stage-1 shortlist), and the first held-out windows (up to ``eval_tokens`` tokens) for evaluation."""
    seen = np.zeros(vocab, dtype=bool)
    n_win = n_tok = n_docs = held_tok = 0
    held: list[np.ndarray] = []
    last_doc = -1
    read = 0
    for doc, _, w in source.windows():
        if max_tokens and read + len(w) > max_tokens:  # the same cut as StreamedWindows
            break
        read += len(w)
        if doc != last_doc:
            n_docs, last_doc = n_docs + 1, doc
        if is_held_out(doc, fraction, seed):
            if held_tok < eval_tokens:
                held.append(w)
                held_tok += len(w)
            continue
        n_win, n_tok = n_win + 1, n_tok + len(w)
        seen[w] = True
    return {"train_windows": n_win, "train_tokens": n_tok, "documents": n_docs, "held_out_windows": held,
            "held_out_tokens": held_tok, "seen": seen}
