"""Quality-diversity protocol of the CoLA card (../shared/seeds/000, DESIGN.md section 4).

N prefixes from held-out text, M samples each (one group per prefix); the continuations are embedded with a
sentence encoder (``minilm`` by default, any sentence-transformers id); similarity = mean pairwise cosine
inside groups averaged over groups, QD = 1 / similarity (:func:`reinlm.textstats.quality_diversity`).
Similarity alone rewards gibberish, so each row also gives the perplexity of its samples under the frozen
language model the latent model starts from (``frozen_lm_logprobs``: the backbone; on BWArea, which has none,
its world model marginalised over its policy's actions) and distinct-2. Rows:

- ``latent_policy``: actions sampled from the BC policy (tau 1), world-model tokens greedy (``--wm-tokens
  sample``: sampled at temperature 1);
- ``latent_random``: uniformly random actions, world-model tokens as above (the CoLA card's row);
- ``token_sampling``: the frozen language model sampling tokens at temperature 1 (``lm_stepper``: the backbone;
  on BWArea its policy's action then the world model's token, both at temperature 1);
- ``random_tokens``: uniformly random token ids.

Only the continuation is embedded (the prefix is shared by a group and would inflate its similarity).
Legend: N = prefixes, M = samples per prefix, P = prefix length, R = new tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reinlm.config.schema import Config, check_device, opt
from reinlm.errors import ReinlmError
from reinlm.latent.hidden_cache import HiddenCache, left_pad
from reinlm.latent.model import LatentActionModel
from reinlm.rollout.decode import decode
from reinlm.rollout.sampling import Chooser
from reinlm.textstats import distinct_n, quality_diversity

ROWS = ("latent_policy", "latent_random", "token_sampling", "random_tokens")


@dataclass
class QDConfig(Config):
    """Flags of ``reinlm latent qd``."""

    latent: str = opt("runs/latent", help="latent model directory (from `reinlm latent pretrain`)")
    num_prefixes: int = opt(16, help="N: prefixes, one group each", lo=1)
    samples: int = opt(8, help="M: samples per prefix", lo=2)
    prefix_tokens: int = opt(16, help="prefix length P in tokens (cut from held-out sequences)", lo=1)
    new_tokens: int = opt(24, help="R: tokens generated per sample", lo=1)
    prefixes: str = opt("", help="prompt SPEC to use as prefixes instead of the held-out cache (e.g. builtin:neutral)")
    encoder: str = opt("minilm", help="sentence encoder: minilm or any sentence-transformers id / path")
    action_tau: float = opt(1.0, help="temperature of the policy's actions in the latent_policy row", lo=0, lo_open=True)
    wm_tokens: str = opt("greedy", help="token under the chosen action in the latent rows: greedy (the CoLA "
                                        "protocol: all randomness is in the actions) or sample (temperature 1)", choices=("greedy", "sample"))
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto", check=check_device)
    seed: int = opt(0, help="random seed", lo=0)


def check_held_out(latent_dir: Path) -> None:
    """Refuse (exit 2) a latent directory with no held-out text of its pretraining (an imported CoLA or BWArea
    model): the prefixes must then come from ``--prefixes``."""
    if not (latent_dir / "held_out.npz").is_file() and not (latent_dir / "pretrain_config.json").is_file():
        raise ReinlmError(f"prefixes: {str(latent_dir)!r} holds no held-out text of its pretraining (held_out.npz, "
                          f"written by `reinlm latent pretrain`; an imported model has none); pass --prefixes "
                          f"SPEC (e.g. builtin:neutral).")


def held_out_prefixes(latent_dir: Path, n: int, prefix_tokens: int) -> list[list[int]]:
    """Token-id prefixes from the held-out split of the latent model's pretraining (``held_out.npz``, written by
    every pretraining run, or else the held-out sequences of its cache)."""
    if (latent_dir / "held_out.npz").is_file():
        z = np.load(latent_dir / "held_out.npz")
        seqs = [z["tokens"][a:b] for a, b in zip(z["offsets"][:-1], z["offsets"][1:])]
        return [[int(t) for t in s[:prefix_tokens]] for s in seqs if len(s) >= prefix_tokens][:n]
    cfg = json.loads((latent_dir / "pretrain_config.json").read_text())
    cache = HiddenCache.open(Path(cfg.get("cache_dir") or latent_dir / "cache"))
    _, held = cache.split(cfg["held_out_fraction"], cfg["seed"])
    out = []
    for s in held:
        a, b = int(cache.offsets[s]), int(cache.offsets[s + 1])
        if b - a >= prefix_tokens:
            out.append([int(t) for t in cache.tokens[a:a + prefix_tokens]])
        if len(out) == n:
            break
    return out


@torch.no_grad()
def sample_row(model: LatentActionModel, row: str, ids: torch.Tensor, mask: torch.Tensor, R: int,
               g: torch.Generator, wm_sample: bool = False) -> torch.Tensor:
    """(B, P) prompts -> (B, R) continuation ids (EOS / padding included) for one QD row; ``wm_sample`` samples
    the world model's token (temperature 1) in the latent rows instead of taking its argmax."""
    tok = model.tokenizer
    if row == "latent_policy":
        return model.generate(ids, mask, max_new_tokens=R, do_sample=wm_sample, generator=g)[:, ids.shape[1]:]
    if row == "latent_random":
        return model.generate(ids, mask, max_new_tokens=R, action_mode="random", do_sample=wm_sample,
                              generator=g)[:, ids.shape[1]:]
    if row == "token_sampling":  # the frozen LM, temperature 1, no stop (the NLL cuts at the first EOS)
        out = decode(model.lm_stepper(Chooser("sample")), ids, mask, max_new_tokens=R, stop_ids=None,
                     pad_id=tok.pad_token_id or 0, generator=g)
        return out.tokens  # (B, R)
    if row == "random_tokens":
        special = set(tok.all_special_ids)
        allowed = torch.tensor([i for i in range(model.config.vocab_size) if i not in special])
        return allowed[torch.randint(0, len(allowed), (ids.shape[0], R), generator=g)]
    raise ValueError(row)


@torch.no_grad()
def frozen_lm_nll(model: LatentActionModel, ids: torch.Tensor, mask: torch.Tensor, cont: torch.Tensor
                  ) -> tuple[float, int]:
    """Summed NLL of continuations (B, R) given prompts (B, P) under the frozen language model
    (``model.frozen_lm_logprobs`` with the model's own policy), cut at the first EOS; and the token count."""
    eos = model.tokenizer.eos_token_id
    B, R = cont.shape
    cmask = torch.ones_like(cont)
    is_eos = (cont == eos).long()
    after = (is_eos.cumsum(1) - is_eos) > 0  # strictly after the first EOS
    cmask[after] = 0
    full, fmask = torch.cat([ids, cont], 1), torch.cat([mask, cmask], 1)
    logp = model.frozen_lm_logprobs(full, fmask, R, model.policy)  # (B, R) of each continuation token
    return float(-(logp * cmask).sum()), int(cmask.sum())


def qd_rows(model: LatentActionModel, prefixes: list[list[int]], encoder, cfg: QDConfig) -> dict:
    """The protocol on token-id ``prefixes`` (N of them, each cut to P tokens; ``cfg.samples`` = M samples each)
    with ``encoder`` (``.encode(texts) -> (n, D)``); the model's action sampling must be set. Returns
    ``{"rows": {row: {similarity, qd, perplexity, distinct_2, example}}, "config": ..., "num_prefixes": N}``."""
    tok = model.tokenizer
    M = cfg.samples
    ids, mask = left_pad([p for p in prefixes for _ in range(M)], tok.pad_token_id or 0)  # (N*M, P)
    ids, mask = ids.to(model.device), mask.to(model.device)
    rows = {}
    for r_i, row in enumerate(ROWS):  # all N*M samples of a row in one batch
        g = torch.Generator().manual_seed(cfg.seed * 1000 + r_i)
        cont = sample_row(model, row, ids, mask, cfg.new_tokens, g, cfg.wm_tokens == "sample")  # (N*M, R)
        nll, n = frozen_lm_nll(model, ids, mask, cont.to(model.device))
        texts = tok.batch_decode(cont, skip_special_tokens=True)
        emb = np.asarray(encoder.encode(texts))  # (N*M, D)
        qd = quality_diversity([emb[i * M:(i + 1) * M] for i in range(len(prefixes))])
        rows[row] = {"similarity": qd["similarity"], "qd": qd["qd"], "perplexity": math.exp(nll / max(n, 1)),
                     "distinct_2": distinct_n(texts, 2), "example": texts[0]}
    return {"rows": rows, "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "num_prefixes": len(prefixes)}
