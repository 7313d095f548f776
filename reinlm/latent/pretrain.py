"""Latent pretraining: hidden-state cache, stage 1 (IDM + world model), stage 2 (behaviour cloning).

Follows the CoLA / BWArea recipe (DESIGN.md section 4) on a frozen backbone:

- stage 1: the IDM picks an action for step t from the state that has seen token t+1 (Gumbel-softmax,
  straight-through one-hot, tau = 2); the world model predicts token t+1 from (h_t, action). Loss =
  next-token cross-entropy - ``entropy_coef`` x H(IDM per step) (CoLA's 0.001) - ``marginal_entropy_coef``
  x H(batch-mean IDM distribution), the second keeping many codes in use;
- stage 2: the policy learns the frozen IDM's argmax actions by cross-entropy.

Each stage writes ``DIR/<stage>/result.json`` (and stage 1 its heads) and is skipped when that file exists,
so an interrupted run resumes where it stopped. ``DIR`` ends as a latent model directory plus
``summary.json``. Legend: B = windows per batch, L = window length, H = hidden, K = actions,
V' = training shortlist of the vocabulary.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from reinlm.config import check_range, config_to_dict, opt
from reinlm.errors import ReinlmError
from reinlm.latent.config import LatentConfig
from reinlm.latent.hidden_cache import HiddenCache, build_cache
from reinlm.latent.model import LatentActionModel
from reinlm.latent.modules import straight_through_gumbel
from reinlm.utils import append_jsonl, seed_everything, write_json

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Every ``reinlm latent pretrain`` flag (head sizes come from :class:`LatentConfig`)."""

    backbone: str = opt("smollm2-135m", help="frozen backbone: embedded alias, local path or Hugging Face id")
    corpus: str = opt("self:200000", help="corpus SPEC: self:N, text file/folder, .jsonl, dataset dir, hf:NAME")
    out: str = opt("runs/latent", help="output directory (a latent model directory + summary.json)")
    cache_dir: str = opt("", help="hidden-state cache directory (default: OUT/cache); reused when it matches")
    text_column: str = opt("text", help="text column of a .jsonl / dataset corpus")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    dtype: str = opt("float32", help="backbone dtype: float32, bfloat16, float16")
    seed: int = opt(0, help="random seed")
    held_out_fraction: float = opt(0.05, help="share of cached sequences held out for evaluation")
    sample_batch: int = opt(128, help="sequences per batch when sampling self:N (rows that reach EOS leave the "
                                      "batch) / computing hidden states")
    sample_new_tokens: int = opt(128, help="new tokens per sampled sequence for self:N")
    sample_temperature: float = opt(1.0, help="sampling temperature of the backbone for self:N")
    max_len: int = opt(256, help="chunk length (tokens) of text corpora")
    window: int = opt(64, help="training window length L (tokens)")
    batch_windows: int = opt(16, help="windows per optimisation step")
    lr: float = opt(1e-3, help="AdamW learning rate of the heads (cosine decay, 3%% warm-up)")
    weight_decay: float = opt(0.01, help="AdamW weight decay")
    stage1_epochs: float = opt(1.0, help="passes over the training windows in stage 1 (IDM + world model)")
    stage2_epochs: float = opt(2.0, help="passes over the training windows in stage 2 (behaviour cloning)")
    gumbel_tau: float = opt(2.0, help="Gumbel-softmax temperature of the IDM in stage 1")
    entropy_coef: float = opt(-0.05, help="weight of the per-step IDM entropy in the bonus; negative = a penalty that "
                              "makes each step's action confident (with the marginal bonus below this maximises "
                              "the mutual information between actions and text); CoLA's card uses +0.001")
    marginal_entropy_coef: float = opt(0.1, help="bonus on the entropy of the batch-mean IDM distribution "
                                                 "(keeps codes alive)")
    train_vocab: str = opt("corpus", help="stage-1 softmax over: corpus (tokens seen in training, faster) or full")
    eval_tokens: int = opt(16384, help="held-out tokens used for the summary figures (at most)")
    log_every: int = opt(20, help="steps between metric lines in STAGE/metrics.jsonl")
    threads: int = opt(0, help="torch CPU threads (0 = leave as is)")

    def __post_init__(self):
        check_range("held_out_fraction", self.held_out_fraction, 0.0, 0.5, lo_open=True)
        check_range("window", self.window, 2)
        check_range("gumbel_tau", self.gumbel_tau, 0.0, lo_open=True)
        if self.train_vocab not in ("corpus", "full"):
            raise ReinlmError(f"train_vocab: got {self.train_vocab!r}; allowed: corpus, full.")


def _lr_lambda(total: int):
    warm = max(1, int(0.03 * total))
    return lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1)))


def _batches(windows: np.ndarray, batch: int, epochs: float, rng: np.random.Generator):
    total = max(1, int(math.ceil(epochs * len(windows) / batch)))
    order = np.concatenate([rng.permutation(len(windows)) for _ in range(int(math.ceil(epochs)) + 1)])
    for s in range(total):
        yield s, total, windows[order[s * batch:(s + 1) * batch]]


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions along the last axis: (..., K) -> (...)."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def _shortlist(cache: HiddenCache, train_windows: np.ndarray, model: LatentActionModel, mode: str):
    V = model.config.vocab_size
    if mode == "full":
        return None, None
    seen = np.zeros(V, dtype=bool)
    for a, b in train_windows:
        seen[cache.tokens[a:b]] = True
    ids = torch.from_numpy(np.flatnonzero(seen))
    lookup = torch.full((V,), -1, dtype=torch.long)
    lookup[ids] = torch.arange(len(ids))
    return ids, lookup


def stage1_step(model: LatentActionModel, h, ids, mask, cfg: PretrainConfig, w_short, lookup):
    """Loss and stats of one stage-1 batch. h (B, L, H), ids / mask (B, L)."""
    logits = model.idm_logits_from_hidden(h, mask)  # (B, L-1, K)
    onehot = straight_through_gumbel(logits, cfg.gumbel_tau)  # (B, L-1, K)
    state = model.world_model_state_from_hidden(h[:, :-1], onehot)  # (B, L-1, H)
    valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (B, L-1) both positions real
    target = ids[:, 1:]
    if w_short is not None:
        tok_logits = state[valid] @ w_short.t()  # (N, V')
        ce = F.cross_entropy(tok_logits, lookup[target[valid]])
    else:
        ce = F.cross_entropy(model.token_logits(state[valid]), target[valid])
    probs = logits.softmax(-1)[valid]  # (N, K)
    h_step = entropy(probs).mean()
    h_marg = entropy(probs.mean(0))
    loss = ce - cfg.entropy_coef * h_step - cfg.marginal_entropy_coef * h_marg
    codes = int(logits.argmax(-1)[valid].unique().numel())
    return loss, {"loss/ce": ce.item(), "idm/entropy": h_step.item(), "idm/marginal_entropy": h_marg.item(),
                  "idm/codes_used_batch": codes}


def stage2_step(model: LatentActionModel, h, ids, mask):
    """Behaviour cloning: policy CE against the frozen IDM's argmax action of each step."""
    with torch.no_grad():
        target = model.idm_logits_from_hidden(h, mask).argmax(-1)  # (B, L-1)
    logits = model.policy_logits_from_hidden(h, mask)[:, :-1]  # (B, L-1, K) step t from x_<=t
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    loss = F.cross_entropy(logits[valid], target[valid])
    acc = (logits[valid].argmax(-1) == target[valid]).float().mean()
    return loss, {"loss/bc": loss.item(), "bc/top1_batch": acc.item()}


def _train(model, params, cache, windows, cfg: PretrainConfig, epochs: float, step_fn, stage_dir: Path, name: str):
    opt_ = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = _batches(windows, cfg.batch_windows, epochs, rng)
    sched = None
    start, seen = time.time(), 0
    bar = None
    for s, total, win in gen:
        if sched is None:
            sched = torch.optim.lr_scheduler.LambdaLR(opt_, _lr_lambda(total))
            bar = tqdm(total=total, desc=name, unit="step")
        h, ids, mask = cache.batch(win, model.device)
        loss, stats = step_fn(h, ids, mask)
        opt_.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt_.step()
        sched.step()
        seen += int(mask.sum())
        tok_s = seen / max(time.time() - start, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:.0f}")
        if s % cfg.log_every == 0 or s == total - 1:
            append_jsonl(stage_dir / "metrics.jsonl", {"step": s, **stats, "perf/tokens_per_s": tok_s})
    if bar is not None:
        bar.close()


@torch.no_grad()
def evaluate(model: LatentActionModel, cache: HiddenCache, windows: np.ndarray, max_tokens: int,
             policy: bool = False, chunk: int = 16, seed: int = 0, lm_nll: bool = True) -> dict:
    """Held-out figures (full vocabulary): backbone NLL, world-model NLL with IDM actions, codes used;
    with ``policy`` also BC top-1/top-5 accuracy and NLL under policy-sampled actions (tau 1). ``lm_nll=False``
    skips the two NLLs that do not depend on the policy (each is a full-vocabulary LM-head pass)."""
    g = torch.Generator().manual_seed(seed)
    sums = {"nll_backbone": 0.0, "nll_world_model_idm": 0.0, "nll_world_model_policy": 0.0, "top1": 0.0, "top5": 0.0}
    counts = np.zeros(model.config.num_actions, dtype=np.int64)
    n = 0
    for i in range(0, len(windows), chunk):
        if n >= max_tokens:
            break
        h, ids, mask = cache.batch(windows[i:i + chunk], model.device)
        valid = (mask[:, :-1] * mask[:, 1:]).bool()
        target = ids[:, 1:][valid]
        hv = h[:, :-1][valid]  # (N, H)
        idm = model.idm_logits_from_hidden(h, mask).argmax(-1)  # (B, L-1)
        if lm_nll:
            sums["nll_backbone"] += F.cross_entropy(model.token_logits(hv), target, reduction="sum").item()
            wm = model.world_model_logits_from_hidden(h[:, :-1], idm)[valid]
            sums["nll_world_model_idm"] += F.cross_entropy(wm, target, reduction="sum").item()
        counts += np.bincount(idm[valid].cpu().numpy(), minlength=len(counts))
        if policy:
            pl = model.policy_logits_from_hidden(h, mask)[:, :-1]  # (B, L-1, K)
            sums["top1"] += (pl[valid].argmax(-1) == idm[valid]).sum().item()
            sums["top5"] += (pl[valid].topk(5, -1).indices == idm[valid][:, None]).any(-1).sum().item()
            a = torch.multinomial(pl.softmax(-1).flatten(0, 1), 1, generator=g).view(pl.shape[:2])
            wp = model.world_model_logits_from_hidden(h[:, :-1], a)[valid]
            sums["nll_world_model_policy"] += F.cross_entropy(wp, target, reduction="sum").item()
        n += int(valid.sum())
    p = counts / max(counts.sum(), 1)
    out = {"eval_tokens": n, "codes_used": int((counts > 0).sum()),
           "code_perplexity": float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))}
    if lm_nll:
        out.update(nll_backbone=sums["nll_backbone"] / n, nll_world_model_idm=sums["nll_world_model_idm"] / n)
    if policy:
        out.update(bc_top1_accuracy=sums["top1"] / n, bc_top5_accuracy=sums["top5"] / n,
                   nll_world_model_policy=sums["nll_world_model_policy"] / n)
    return out


def pretrain(cfg: PretrainConfig, latent: LatentConfig | None = None) -> Path:
    """Run (or resume) the whole pipeline; returns ``cfg.out`` holding the model and ``summary.json``."""
    from reinlm.hub import load_causal_lm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "pretrain_config.json", config_to_dict(cfg))
    t0 = time.time()
    backbone, tok = load_causal_lm(cfg.backbone, device=cfg.device, dtype=cfg.dtype)
    cache = build_cache(backbone, tok, cfg.backbone, cfg.corpus, cfg.cache_dir or out / "cache",
                        text_column=cfg.text_column, max_len=cfg.max_len, batch_size=cfg.sample_batch,
                        new_tokens=cfg.sample_new_tokens, temperature=cfg.sample_temperature, seed=cfg.seed)
    seconds = {"cache": round(time.time() - t0, 1)}
    train_seqs, held_seqs = cache.split(cfg.held_out_fraction, cfg.seed)
    train_w, held_w = cache.windows(train_seqs, cfg.window), cache.windows(held_seqs, cfg.window)
    if len(train_w) == 0 or len(held_w) == 0:
        raise ReinlmError(f"corpus: {cfg.corpus!r} is too small for a training and a held-out split "
                          f"({cache.n_sequences} sequences); use a larger corpus.")
    latent = latent or LatentConfig()
    latent.backbone = cfg.backbone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LatentActionModel(latent, backbone, tok)

    s1_dir = out / "stage1"
    if (s1_dir / "result.json").is_file():
        log.info("stage 1: found %s, skipping", s1_dir / "result.json")
        model = LatentActionModel.from_pretrained(s1_dir / "model", backbone=(backbone, tok))
    else:
        t = time.time()
        s1_dir.mkdir(parents=True, exist_ok=True)
        (s1_dir / "metrics.jsonl").unlink(missing_ok=True)
        short, lookup = _shortlist(cache, train_w, model, cfg.train_vocab)
        w_short = model.lm_head.weight[short].float() if short is not None else None
        params = list(model.idm.parameters()) + list(model.world_model.parameters())
        model.train()
        _train(model, params, cache, train_w, cfg, cfg.stage1_epochs,
               lambda h, i, m: stage1_step(model, h, i, m, cfg, w_short, lookup), s1_dir, "stage 1: IDM + world model")
        model.eval()
        res = evaluate(model, cache, held_w, cfg.eval_tokens, seed=cfg.seed)
        res["seconds"] = round(time.time() - t, 1)
        res["train_vocab"] = len(short) if short is not None else model.config.vocab_size
        model.save_pretrained(s1_dir / "model")
        write_json(s1_dir / "result.json", res)
    s1 = json.loads((s1_dir / "result.json").read_text())

    s2_dir = out / "stage2"
    if (s2_dir / "result.json").is_file() and (out / "heads.safetensors").is_file():
        log.info("stage 2: found %s, skipping", s2_dir / "result.json")
    else:
        t = time.time()
        s2_dir.mkdir(parents=True, exist_ok=True)
        (s2_dir / "metrics.jsonl").unlink(missing_ok=True)
        model.train()
        _train(model, list(model.policy.parameters()), cache, train_w, cfg, cfg.stage2_epochs,
               lambda h, i, m: stage2_step(model, h, i, m), s2_dir, "stage 2: behaviour cloning")
        model.eval()
        res = evaluate(model, cache, held_w, cfg.eval_tokens, policy=True, seed=cfg.seed, lm_nll=False)
        res["seconds"] = round(time.time() - t, 1)
        _save_model_files(model, out)
        write_json(s2_dir / "result.json", res)
    s2 = json.loads((s2_dir / "result.json").read_text())

    summary = {
        "backbone": cfg.backbone, "corpus": cfg.corpus, "num_actions": latent.num_actions,
        "cached_tokens": int(cache.meta["n_tokens"]), "held_out_sequences": int(len(held_seqs)),
        "codes_used": s1["codes_used"], "code_perplexity": s1["code_perplexity"],
        "nll_backbone": s1["nll_backbone"], "nll_world_model_idm": s1["nll_world_model_idm"],
        "bc_top1_accuracy": s2["bc_top1_accuracy"], "bc_top5_accuracy": s2["bc_top5_accuracy"],
        "nll_world_model_policy": s2["nll_world_model_policy"], "eval_tokens": s1["eval_tokens"],
        "cache_tokens_per_s": cache.meta.get("tokens_per_s"),
        "seconds": {"cache_build": round(cache.meta.get("seconds", 0.0), 1), "cache_open": seconds["cache"],
                    "stage1": s1["seconds"], "stage2": s2["seconds"]},
    }
    write_json(out / "summary.json", summary)
    return out


def _save_model_files(model: LatentActionModel, out: Path) -> None:
    """Write config.json + heads.safetensors into ``out`` itself (beside cache/ and the stage dirs)."""
    tmp = out / ".model.tmp"
    model.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
