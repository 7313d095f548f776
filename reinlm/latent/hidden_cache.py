"""Backbone hidden states computed once and kept on disk as memory-mapped NumPy arrays.

The backbone is frozen, so every pretraining stage (and every re-run) reads the same states h. A cache
directory holds

- ``tokens.npy`` (N,) int32: the token ids of all sequences, concatenated;
- ``hidden.npy`` (N, H) float16: the backbone's final normalised hidden state at each token (absent in a
  tokens-only store: the ``self:N`` samples of a streamed pretraining, whose states are computed on the fly);
- ``offsets.npy`` (S+1,) int64: sequence s is ``[offsets[s], offsets[s+1])``;
- ``meta.json``: backbone, corpus spec, sizes, tokens/s of the pass. Written last, so a directory without
  it is an interrupted build and is rebuilt.

For ``self:N`` the backbone samples continuations of the built-in prompts with a KV cache in large batches,
and the states come from the same forward passes (no second pass). Legend: B = batch, T = positions,
H = hidden size, N = cached tokens, S = sequences, L = window length.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from reinlm.errors import ReinlmError
from reinlm.latent.backbone import backbone_forward
from reinlm.latent.corpus import TokenSource, builtin_prompts, parse_corpus_spec
from reinlm.rollout.decode import LMStepper, decode
from reinlm.rollout.sampling import Chooser
from reinlm.utils.jsonio import write_json

META = "meta.json"
PARTIAL = "partial.json"  # progress of an unfinished text-cache build (removed when meta.json is written)


@dataclass
class HiddenCache:
    """An opened cache: memory-mapped ``tokens`` (N,), ``hidden`` (N, H), ``offsets`` (S+1,)."""

    path: Path
    tokens: np.ndarray
    hidden: np.ndarray | None
    offsets: np.ndarray
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> "HiddenCache":
        path = Path(path)
        meta = json.loads((path / META).read_text())
        n = meta["n_tokens"]
        hidden = np.load(path / "hidden.npy", mmap_mode="r")[:n] if (path / "hidden.npy").is_file() else None
        return cls(path, np.load(path / "tokens.npy", mmap_mode="r")[:n], hidden, np.load(path / "offsets.npy"), meta)

    @property
    def n_sequences(self) -> int:
        return len(self.offsets) - 1

    def split(self, held_out_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Sequence indices (train, held_out): a seeded shuffle of whole sequences (no window straddles)."""
        order = np.random.default_rng(seed).permutation(self.n_sequences)
        n_held = max(1, int(round(held_out_fraction * self.n_sequences))) if self.n_sequences > 1 else 0
        return np.sort(order[n_held:]), np.sort(order[:n_held])

    def windows(self, seqs: np.ndarray, length: int) -> np.ndarray:
        """Non-overlapping windows (W, 2) = (start, end) of at most ``length`` tokens (at least 2) in ``seqs``."""
        out = []
        for s in seqs:
            a, b = int(self.offsets[s]), int(self.offsets[s + 1])
            for start in range(a, b - 1, length):
                out.append((start, min(start + length, b)))
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)

    def batch(self, windows: np.ndarray, device="cpu"):
        """Windows -> h (B, L, H) float32, ids (B, L) long, mask (B, L) long (right-padded)."""
        L = int((windows[:, 1] - windows[:, 0]).max())
        B, H = len(windows), self.hidden.shape[1]
        h = np.zeros((B, L, H), dtype=np.float32)
        ids = np.zeros((B, L), dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.int64)
        for i, (a, b) in enumerate(windows):
            h[i, : b - a] = self.hidden[a:b]
            ids[i, : b - a] = self.tokens[a:b]
            mask[i, : b - a] = 1
        return (torch.from_numpy(h).to(device), torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))


def cache_matches(path: Path, backbone: str, corpus: str, max_tokens: int = 0, hidden: bool = True) -> bool:
    """Whether ``path`` holds a finished cache of this backbone and corpus (and token cap), with states when
    ``hidden`` (a cache with states also serves as a tokens-only store)."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return (meta.get("backbone") == backbone and meta.get("corpus") == corpus
            and int(meta.get("max_tokens", 0)) == int(max_tokens) and (meta.get("hidden", True) or not hidden))


class _Writer:
    """Appends sequences to preallocated memory-mapped arrays."""

    def __init__(self, path: Path, capacity: int, hidden_size: int, store_hidden: bool = True,
                 offsets: list[int] | None = None):
        """``offsets``: continue a build whose arrays (of this capacity) hold these sequences already."""
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.hidden_size = path, hidden_size
        mode = "r+" if offsets else "w+"
        open_ = np.lib.format.open_memmap
        self.tokens = open_(path / "tokens.npy", mode=mode, dtype=np.int32, shape=(capacity,))
        self.hidden = open_(path / "hidden.npy", mode=mode, dtype=np.float16,
                            shape=(capacity, hidden_size)) if store_hidden else None
        self.offsets = list(offsets) if offsets else [0]

    def checkpoint(self, state: dict) -> None:
        """Flush the arrays and record how far the build got (``PARTIAL``), so a rebuild continues there."""
        self.tokens.flush()
        if self.hidden is not None:
            self.hidden.flush()
        write_json(self.path / PARTIAL, {**state, "offsets": self.offsets})

    @property
    def n(self) -> int:
        return self.offsets[-1]

    def add(self, ids: torch.Tensor, h: torch.Tensor) -> None:
        """One sequence: ids (T,), h (T, H)."""
        a, T = self.n, len(ids)
        T = min(T, len(self.tokens) - a)
        if T < 2:
            return
        self.tokens[a:a + T] = np.asarray(ids[:T].cpu() if torch.is_tensor(ids) else ids[:T])
        if self.hidden is not None:
            self.hidden[a:a + T] = h[:T].float().cpu().numpy().astype(np.float16)
        self.offsets.append(a + T)

    def finish(self, meta: dict) -> None:
        self.tokens.flush()
        if self.hidden is not None:
            self.hidden.flush()
        np.save(self.path / "offsets.npy", np.asarray(self.offsets, dtype=np.int64))
        write_json(self.path / META, {**meta, "n_tokens": self.n, "n_sequences": len(self.offsets) - 1,
                                      "hidden_size": int(self.hidden_size), "hidden": self.hidden is not None})
        (self.path / PARTIAL).unlink(missing_ok=True)


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> left-padded ids (B, T) and attention mask (B, T), T = longest."""
    T = max(len(c) for c in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, c in enumerate(seqs):
        ids[j, T - len(c):] = torch.as_tensor(c)
        mask[j, T - len(c):] = 1
    return ids, mask


@torch.no_grad()
def build_text_cache(model, tokenizer, spec: str, out: Path, meta: dict, max_len: int = 256, batch_size: int = 8,
                     max_tokens: int = 0, text_column: str = "text", checkpoint_every: int = 32,
                     checkpoint_seconds: float = 120.0) -> HiddenCache:
    """Stream the documents of the text corpus ``spec``, cut each into chunks of ``max_len`` tokens (at least 2)
    and cache the backbone states of each chunk (batches of ``batch_size`` chunks); at most ``max_tokens``
    tokens when > 0. The documents are never all in memory.

    Every ``checkpoint_every`` batches, or ``checkpoint_seconds`` after the last checkpoint when that comes first
    (a slow machine loses at most that much work), the arrays are flushed and ``partial.json`` records the sequences
    written and the reader's position: an interrupted build of the same backbone, corpus, chunk length and
    token cap continues there (the result equals a build that was never interrupted).
    """
    source = TokenSource(spec, tokenizer, max_len, text_column)
    meta = {**meta, "max_len": int(max_len)}
    partial = json.loads((out / PARTIAL).read_text()) if (out / PARTIAL).is_file() else None
    if partial is not None and partial.get("meta") != meta:
        partial = None
    if partial is not None:
        total, pos = int(partial["total"]), tuple(partial["pos"])
    else:
        total = max_tokens or sum(len(w) for _, _, w in source.windows())  # a tokenise-only pass sizes the arrays
        pos = (0, 0)
    if total == 0:
        raise ReinlmError(f"corpus: {meta['corpus']!r} yields no chunk of 2 or more tokens.")
    writer = _Writer(out, total, model.config.hidden_size, offsets=partial["offsets"] if partial else None)
    pad = tokenizer.pad_token_id or 0
    dev = next(model.parameters()).device
    start, done_before = time.time(), writer.n
    last_checkpoint = start

    def flush(group):
        group = [c for c in group if len(c) >= 2]
        if not group:
            return
        ids, mask = left_pad([list(c) for c in group], pad)  # left padding, like every prompt batch in reinlm
        L = ids.shape[1]
        h, _ = backbone_forward(model, ids.to(dev), mask.to(dev))
        for j, c in enumerate(group):
            writer.add(ids[j, L - len(c):], h[j, L - len(c):])

    group, pending, batches = [], 0, 0
    with tqdm(total=total, initial=writer.n, desc="hidden states", unit="tok", unit_scale=True) as bar:
        for doc, piece, w in source.windows(pos):
            if writer.n + pending >= total:
                break
            w = w[: total - writer.n - pending]
            group.append(w)
            pending += len(w)
            if len(group) == batch_size:
                before = writer.n
                flush(group)
                group, pending, batches = [], 0, batches + 1
                bar.update(writer.n - before)
                due = checkpoint_every and batches % checkpoint_every == 0
                if due or time.time() - last_checkpoint >= checkpoint_seconds:
                    writer.checkpoint({"meta": meta, "total": total, "pos": [doc, piece + 1]})
                    last_checkpoint = time.time()
        before = writer.n
        flush(group)
        bar.update(writer.n - before)
    elapsed = time.time() - start
    writer.finish({**meta, "tokens_per_s": (writer.n - done_before) / max(elapsed, 1e-9), "seconds": elapsed})
    return HiddenCache.open(out)


@torch.no_grad()
def build_self_cache(model, tokenizer, prompts: list[str], n_tokens: int, out: Path, meta: dict,
                     batch_size: int = 128, new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int = 0, store_hidden: bool = True) -> HiddenCache:
    """Sample ``n_tokens`` new tokens from the backbone on ``prompts`` and cache tokens + states.

    One run of the decode engine (:func:`reinlm.rollout.decode.decode`, the backbone-only stepper) per batch
    of ``batch_size`` prompts (drawn with replacement, seeded): the forward pass that feeds token t also
    yields h_t, so no second pass is needed. A row that samples EOS is fed once more (its EOS state is what
    the IDM needs to explain the EOS) and then dropped from the KV cache, so the batch shrinks instead of
    computing padding (the engine's stopping convention). Each stored sequence is prompt + continuation up
    to and including EOS; a row that hits ``new_tokens`` drops its last sampled token (never fed, no state).
    """
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    enc_prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    per_round = batch_size * (max(len(p) for p in enc_prompts) + new_tokens)  # most tokens one round stores
    cap = 4 * (n_tokens + per_round)  # prompts are stored too; the sparse file only grows as it is written
    writer = _Writer(out, cap, model.config.hidden_size, store_hidden)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id or 0
    chooser = Chooser("sample", float(temperature), 0, float(top_p))
    generated, start = 0, time.time()
    with tqdm(total=n_tokens, desc="self-sampling + hidden states", unit="tok", unit_scale=True) as bar:
        while generated < n_tokens and writer.n + per_round <= cap:
            rows = min(batch_size, math.ceil((n_tokens - generated) / new_tokens) + 1)  # a short last round
            pick = torch.randint(0, len(enc_prompts), (rows,), generator=g).tolist()
            group = [enc_prompts[i] for i in pick]
            ids, mask = left_pad(group, pad)
            P = ids.shape[1]
            R = min(new_tokens, n_tokens - generated + 1)

            def progress(t, live, _done=generated):
                bar.set_postfix(tok_s=f"{(_done + t * live) / max(time.time() - start, 1e-9):.0f}", rows=live)

            res = decode(LMStepper(model, chooser, record_hidden=True), ids.to(dev), mask.to(dev),
                         max_new_tokens=R, stop_ids=[] if eos is None else [eos], pad_id=pad, generator=g,
                         on_step=progress)
            toks = torch.cat([ids.to(dev), res.tokens], 1)  # (B, P+R')
            hidden = res.states["hidden"]  # (B, P+R', H)
            # tokens whose state was computed: a row that stopped before the last step was fed its EOS too
            fed = torch.where(res.lengths < R, res.lengths, torch.full_like(res.lengths, R - 1))
            before = generated
            for j, c in enumerate(group):
                keep = slice(P - len(c), P + int(fed[j]))
                writer.add(toks[j, keep], hidden[j, keep])
                generated += int(fed[j])
            bar.update(min(generated, n_tokens) - min(before, n_tokens))
    elapsed = time.time() - start
    writer.finish({**meta, "tokens_per_s": generated / max(elapsed, 1e-9), "seconds": elapsed,
                   "generated_tokens": generated, "sample_batch": batch_size, "sample_new_tokens": new_tokens})
    return HiddenCache.open(out)


def build_cache(model, tokenizer, backbone: str, corpus: str, out: str | Path, *, text_column: str = "text",
                max_len: int = 256, batch_size: int = 32, new_tokens: int = 128, temperature: float = 1.0,
                prompts: str = "builtin:neutral", seed: int = 0, force: bool = False, max_tokens: int = 0,
                store_hidden: bool = True) -> HiddenCache:
    """Open the cache at ``out`` when it was built for the same backbone and corpus, else (re)build it.

    ``store_hidden=False`` (``self:N`` only): keep the sampled tokens, not their states (a streamed run)."""
    out = Path(out)
    if not force and cache_matches(out, backbone, corpus, max_tokens, store_hidden):
        return HiddenCache.open(out)
    resumable = not force and (out / PARTIAL).is_file() and not parse_corpus_spec(corpus).kind == "self"
    if out.exists() and not resumable:  # (build_text_cache checks that a partial build is of this corpus)
        shutil.rmtree(out)
    spec = parse_corpus_spec(corpus)
    meta = {"backbone": backbone, "corpus": corpus, "max_tokens": int(max_tokens)}
    if spec.kind == "self":
        return build_self_cache(model, tokenizer, builtin_prompts(prompts), spec.n_tokens, out, meta,
                                batch_size=batch_size, new_tokens=new_tokens, temperature=temperature, seed=seed,
                                store_hidden=store_hidden)
    return build_text_cache(model, tokenizer, corpus, out, meta, max_len=max_len,
                            batch_size=max(1, batch_size // 4), max_tokens=max_tokens, text_column=text_column)
