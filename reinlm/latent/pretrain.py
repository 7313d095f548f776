"""Latent pretraining: stage 1 (IDM + world model), stage 2 (behaviour cloning), on cached or streamed states.

Follows the CoLA / BWArea recipe (DESIGN.md section 4) on a frozen backbone:

- stage 1: the IDM picks an action for step t from the state that has seen token t+1 (Gumbel-softmax,
  straight-through one-hot, tau = 2); the world model predicts token t+1 from (h_t, action). Loss =
  next-token cross-entropy - ``entropy_coef`` x H(IDM per step) (CoLA's 0.001) - ``marginal_entropy_coef``
  x H(batch-mean IDM distribution), the second keeping many codes in use;
- stage 2: the policy learns the frozen IDM's argmax actions by cross-entropy.

Where the backbone states come from (``--hidden-cache``): a disk cache built once (small corpora; ``self:N``
gets the states of its sampling pass for free), or computed on the fly for every batch from a streamed corpus
(any size; the window is the backbone's context). Data parallel: run under ``torchrun`` (CPU, gloo) or
``accelerate launch`` (GPUs); every process takes its share of each global batch (data.py), the losses are
normalised by the global token count and the marginal-entropy term uses the global batch's mean
distribution, so W processes compute the gradient one process computes on the full batch.

Each stage writes ``DIR/<stage>/checkpoint/`` every ``--save-every`` steps (heads, optimiser, schedule, data
position) and ``DIR/<stage>/result.json`` at its end; a re-run resumes mid-stage from the checkpoint, exactly
(the Gumbel noise of step s is drawn from a generator seeded by (seed, stage, s)), and skips finished stages.
``DIR`` ends as a latent model directory plus ``summary.json``. Legend: B = windows per global batch,
b = this process's share, L = window length, H = hidden, K = actions, V' = training shortlist of the vocabulary.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reinlm.config.build import config_to_dict
from reinlm.config.schema import Config, check_device, opt
from reinlm.errors import ReinlmError
from reinlm.latent.config import LatentConfig
from reinlm.latent.corpus import StoredTokenSource, TokenSource, parse_corpus_spec
from reinlm.latent.heldout import SUMS, batch_sums
from reinlm.latent.hidden_cache import HiddenCache, build_cache
from reinlm.latent.model import LatentActionModel
from reinlm.latent.stage import Progress, Stage
from reinlm.rollout.fast import pack_linears, packing_supported
from reinlm.schedules import lr_multiplier
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.devices import native_bfloat16
from reinlm.utils.distributed import destroy_process_group_at_exit
from reinlm.utils.jsonio import append_jsonl, read_jsonl, write_json
from reinlm.utils.rng import seed_everything, step_seed

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig(Config):
    """Every ``reinlm latent pretrain`` flag (head sizes come from :class:`LatentConfig`)."""

    backbone: str = opt("smollm2-135m", help="frozen backbone: embedded alias, local path or Hugging Face id")
    corpus: str = opt("self:200000", help="corpus SPEC: self:N, text file/folder, .jsonl, dataset dir, hf:NAME")
    out: str = opt("runs/latent", help="output directory (a latent model directory + summary.json)")
    hidden_cache: Literal["auto", "on", "off"] = opt(
        "auto", help="keep the backbone's states in a disk cache (on), compute them on the fly for every batch "
                     "from the streamed corpus (off), or cache when it fits in --cache-max-gb (auto)")
    cache_max_gb: float = opt(8.0, help="largest hidden-state cache --hidden-cache auto builds (GB; float16)", lo=0.0)
    cache_dir: str = opt("", help="hidden-state cache directory (default: OUT/cache); reused when it matches")
    text_column: str = opt("text", help="text column of a .jsonl / dataset corpus")
    corpus_tokens: int = opt(0, help="use the first N tokens of the corpus only, held-out ones included (0 = all; "
                                     "set it for an hf: stream of unknown size)", lo=0)
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto (under torchrun / accelerate: each process's own)",
                     check=check_device)
    dtype: str = opt("auto", help="backbone dtype: auto (bfloat16 where the device computes it natively, else "
                                  "float32), float32, bfloat16, float16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    autocast: Literal["auto", "off", "bfloat16"] = opt(
        "auto", help="run the heads' forward and backward under bfloat16 autocast (weights and optimiser stay "
                     "float32): auto = where the device computes bfloat16 natively (about 2x faster on an "
                     "AVX512-BF16 CPU), off = float32")
    seed: int = opt(0, help="random seed", lo=0)
    held_out_fraction: float = opt(0.05, help="share of sequences (documents when streamed) held out for evaluation",
                                  lo=0.0, hi=0.5, lo_open=True)
    sample_batch: int = opt(128, help="sequences per batch when sampling self:N (rows that reach EOS leave the "
                                      "batch) / computing cached hidden states", lo=1)
    sample_new_tokens: int = opt(128, help="new tokens per sampled sequence for self:N", lo=1)
    sample_temperature: float = opt(1.0, help="sampling temperature of the backbone for self:N", lo=0.0,
                                    lo_open=True)
    max_len: int = opt(256, help="chunk length (tokens) of text corpora in the hidden-state cache", lo=2)
    window: int = opt(64, help="training window length L (tokens); streamed: also the backbone's context", lo=2)
    batch_windows: int = opt(16, help="windows per optimisation step (global: split over the processes)", lo=1)
    shuffle_buffer: int = opt(4096, help="windows in the shuffle buffer of a streamed corpus", lo=1)
    lr: float = opt(1e-3, help="AdamW learning rate of the heads (cosine decay, 3%% warm-up)", lo=0.0, lo_open=True)
    weight_decay: float = opt(0.01, help="AdamW weight decay", lo=0.0)
    stage1_epochs: float = opt(1.0, help="passes over the training windows in stage 1 (IDM + world model)",
                               lo=0.0, lo_open=True)
    stage2_epochs: float = opt(2.0, help="passes over the training windows in stage 2 (behaviour cloning)",
                               lo=0.0, lo_open=True)
    stage1_steps: int = opt(0, help="optimisation steps of stage 1 (0 = from --stage1-epochs)", lo=0)
    stage2_steps: int = opt(0, help="optimisation steps of stage 2 (0 = from --stage2-epochs)", lo=0)
    gumbel_tau: float = opt(2.0, help="Gumbel-softmax temperature of the IDM in stage 1", lo=0.0, lo_open=True)
    entropy_coef: float = opt(-0.05, help="weight of the per-step IDM entropy in the bonus; negative = a penalty that "
                              "makes each step's action confident (with the marginal bonus below this maximises "
                              "the mutual information between actions and text); CoLA's card uses +0.001")
    marginal_entropy_coef: float = opt(0.1, help="bonus on the entropy of the batch-mean IDM distribution "
                                                 "(keeps codes alive)")
    train_vocab: str = opt("corpus", help="stage-1 softmax over: corpus (tokens seen in training, faster) or full",
                           choices=("corpus", "full"))
    eval_tokens: int = opt(16384, help="held-out tokens used for the summary figures (at most)", lo=1)
    log_every: int = opt(20, help="steps between metric lines in STAGE/metrics.jsonl", lo=1)
    save_every: int = opt(200, help="steps between checkpoints of a stage (0 = none; resume then restarts it)", lo=0)
    stop_after_steps: int = opt(0, help="stop after this many optimisation steps in this run, with a checkpoint "
                                        "(0 = run to the end); the same command resumes", lo=0)
    progress: bool = opt(True, help="a progress bar (false: one plain line every --log-every steps)")
    threads: int = opt(0, help="torch CPU threads (0 = leave as is)", lo=0)


class Interrupted(Exception):
    """``--stop-after-steps`` reached: a checkpoint was written; the same command resumes."""


def _lr_lambda(total: int):
    """Cosine decay over the stage's steps with a 3% linear warm-up inside it."""
    return lr_multiplier(total, max(1, int(0.03 * total)), "cosine", warmup_inside=True)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions along the last axis: (..., K) -> (...)."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def gumbel_noise(shape, seed: int) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U) of ``shape`` from a generator seeded with ``seed``."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed)).clamp(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def straight_through_gumbel_with(logits: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """Gumbel-softmax with given noise (Jang et al. 2017): forward = one-hot of argmax(logits + g), backward =
    the gradient of softmax((logits + g) / tau). (..., K) -> (..., K)."""
    soft = ((logits.float() + noise) / tau).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class Reducer:
    """Sums over the processes (identity in one process)."""

    def __init__(self, accelerator=None):
        self.acc = accelerator
        self.world = accelerator.num_processes if accelerator is not None else 1

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t.contiguous(), reduction="sum") if self.world > 1 else t


def stage1_loss(model: LatentActionModel, h, ids, mask, cfg: PretrainConfig, w_short, lookup, noise,
                reduce: Reducer):
    """Loss (this process's part) and global stats of one stage-1 batch. h (b, L, H), ids / mask (b, L),
    noise (>= b, >= L-1, K) Gumbel noise (row i for window i of this process's batch).

    With N valid steps in the global batch, per-step CE c_i, IDM distributions p_i and m = (1/N) sum p_i:
    L = (1/N) sum c_i - entropy_coef (1/N) sum H(p_i) - marginal_entropy_coef H(m). This process returns
    W x its share of the sums over N, and for H(m) the surrogate (1/N) sum_i p_i . g with g = dH/dm at the
    global m (fixed): averaging W processes' gradients (DDP) gives exactly dL/dtheta.
    """
    logits = model.idm_logits_from_hidden(h, mask)  # (b, L-1, K)
    b, T1 = logits.shape[:2]  # b < batch_windows / W when the corpus has fewer windows than one batch
    onehot = straight_through_gumbel_with(logits, noise[:b, :T1].to(logits.device), cfg.gumbel_tau)
    state = model.world_model_state_from_hidden(h[:, :-1], onehot)  # (b, L-1, H)
    valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (b, L-1) both positions real
    target = ids[:, 1:][valid]
    if w_short is not None:
        tok_logits = state[valid].to(w_short.dtype) @ w_short.t()  # (n, V')
        ce_sum = F.cross_entropy(tok_logits.float(), lookup[target], reduction="sum")
    else:
        ce_sum = F.cross_entropy(model.token_logits(state[valid]), target, reduction="sum")
    probs = logits.softmax(-1)[valid]  # (n, K)
    hs_sum = entropy(probs).sum()
    p_sum = probs.sum(0)  # (K,)
    K = probs.shape[-1]
    codes = torch.bincount(logits.argmax(-1)[valid], minlength=K).float()
    g = reduce(torch.cat([torch.stack([valid.sum().float(), ce_sum.detach(), hs_sum.detach()]), p_sum.detach(),
                          codes]))
    N, m = g[0].clamp_min(1.0), g[3:3 + K] / g[0].clamp_min(1.0)
    dH = -(m.clamp_min(1e-12).log() + 1)  # dH(m)/dm at the global mean
    loss = reduce.world * (ce_sum - cfg.entropy_coef * hs_sum - cfg.marginal_entropy_coef * (p_sum * dH).sum()) / N
    h_marg = float(entropy(m))
    ce, hs = float(g[1] / N), float(g[2] / N)
    stats = {"loss/total": ce - cfg.entropy_coef * hs - cfg.marginal_entropy_coef * h_marg, "loss/ce": ce,
             "idm/entropy": hs, "idm/marginal_entropy": h_marg, "idm/codes_used_batch": int((g[3 + K:] > 0).sum())}
    return loss, stats


def stage2_loss(model: LatentActionModel, h, ids, mask, reduce: Reducer):
    """Behaviour cloning: policy CE against the frozen IDM's argmax action of each step, normalised over the
    global batch (this process's part, scaled by W as in :func:`stage1_loss`)."""
    with torch.no_grad():
        target = model.idm_logits_from_hidden(h, mask).argmax(-1)  # (b, L-1)
    logits = model.policy_logits_from_hidden(h, mask)[:, :-1]  # (b, L-1, K) step t from x_<=t
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    ce_sum = F.cross_entropy(logits[valid], target[valid], reduction="sum")
    hits = (logits[valid].argmax(-1) == target[valid]).float().sum()
    g = reduce(torch.stack([valid.sum().float(), ce_sum.detach(), hits]))
    N = g[0].clamp_min(1.0)
    return reduce.world * ce_sum / N, {"loss/total": float(g[1] / N), "loss/bc": float(g[1] / N),
                                       "bc/top1_batch": float(g[2] / N)}


class _Step(nn.Module):
    """The trainable heads of a stage and its loss: what DDP wraps (its forward runs the stage's loss)."""

    def __init__(self, heads: dict[str, nn.Module], loss_fn: Callable):
        super().__init__()
        self.heads = nn.ModuleDict(heads)
        self.loss_fn = loss_fn

    def forward(self, *args):
        return self.loss_fn(*args)


class StageRunner:
    """One pretraining stage (:class:`reinlm.latent.stage.Stage`) with checkpoints every ``save_every`` steps,
    exact resume, ``--stop-after-steps`` and data parallelism (the heads' loss wrapped for DDP)."""

    def __init__(self, ctx: "_Context", name: str, index: int, stage_dir: Path, heads: dict[str, nn.Module],
                 loss_fn: Callable, data, total: int):
        self.ctx, self.name, self.index, self.dir = ctx, name, index, stage_dir
        self.heads, self.loss_fn, self.data, self.total = heads, loss_fn, data, total
        self.params = [p for m in heads.values() for p in m.parameters()]

    def _save(self, step: int, stage: Stage) -> None:
        """Checkpoint after ``step`` steps (main process; every process holds the same state)."""
        if self.ctx.is_main:
            with atomic_dir(self.dir / "checkpoint") as tmp:
                torch.save({"step": step, "heads": {k: m.state_dict() for k, m in self.heads.items()},
                            **stage.state_dict(), "data": self.data.state_dict(), "tokens": stage.tokens},
                           tmp / "state.pt")
        self.ctx.barrier()

    def run(self) -> None:
        cfg, ctx = self.ctx.cfg, self.ctx
        stage = Stage(self.params, self.total, cfg.lr, cfg.weight_decay, _lr_lambda(self.total))
        start = 0
        ckpt = self.dir / "checkpoint" / "state.pt"
        metrics = self.dir / "metrics.jsonl"
        if ckpt.is_file():
            state = torch.load(ckpt, map_location=ctx.device, weights_only=False)
            for k, m in self.heads.items():
                m.load_state_dict(state["heads"][k])
            stage.load_state_dict(state)
            self.data.load_state_dict(state["data"])
            start, stage.tokens = int(state["step"]), int(state["tokens"])
            if ctx.is_main:
                log.info("%s: resumed from step %d", self.name, start)
                if metrics.is_file():  # drop lines written after the checkpoint by the interrupted run
                    rows = [r for r in read_jsonl(metrics) if r["step"] < start]
                    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif ctx.is_main:
            metrics.unlink(missing_ok=True)
        step_mod = _Step(self.heads, self.loss_fn)
        wrapped = ctx.accelerator.prepare_model(step_mod) if ctx.world > 1 else step_mod

        def before(s: int) -> None:
            if ctx.budget == 0:  # --stop-after-steps reached: keep the state after s steps
                self._save(s, stage)
                raise Interrupted(f"{self.name}: stopped at step {s} of {self.total} (--stop-after-steps); "
                                  f"checkpoint in {self.dir / 'checkpoint'}; run the same command to resume.")

        def step(s: int):
            h, ids, mask, tokens = self.data.next_batch(ctx.device)
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
                loss, stats = wrapped(h, ids, mask, s)
            return loss, stats, tokens

        def after(s: int, stats: dict, tok_s: float) -> None:
            if ctx.is_main and (s % cfg.log_every == 0 or s == self.total - 1):
                append_jsonl(metrics, {"step": s, **stats, "perf/tokens_per_s": tok_s})
            if ctx.budget is not None:
                ctx.budget -= 1
            if cfg.save_every and (s + 1) % cfg.save_every == 0 and s + 1 < self.total:
                self._save(s + 1, stage)

        prog = Progress(self.name, self.total, start, ctx.is_main, cfg.progress, cfg.log_every)
        stage.run(step, prog, start, before=before, after=after)


@dataclass
class _Context:
    cfg: PretrainConfig
    accelerator: object
    device: torch.device
    rank: int
    world: int
    is_main: bool
    budget: int | None = None  # optimisation steps left in this run (--stop-after-steps), None = no limit
    autocast: bool = False  # bfloat16 autocast of the heads' forward/backward

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: LatentActionModel, batches, max_tokens: int, policy: bool = False, seed: int = 0,
             lm_nll: bool = True) -> dict:
    """Held-out figures (full vocabulary) over ``batches`` of (h, ids, mask): backbone NLL, world-model NLL
    with IDM actions, codes used; with ``policy`` also BC top-1/top-5 accuracy and NLL under policy-sampled
    actions (tau 1). ``lm_nll=False`` skips the two NLLs that do not depend on the policy."""
    g = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(SUMS, 0.0)
    counts = np.zeros(model.config.num_actions, dtype=np.int64)
    n = 0
    for h, ids, mask in batches:
        if n >= max_tokens:
            break
        idm = batch_sums(model, h, ids, mask, sums, policy=policy, lm_nll=lm_nll, generator=g)
        counts += np.bincount(idm.cpu().numpy(), minlength=len(counts))
        n += int(idm.numel())
    n = max(n, 1)
    p = counts / max(counts.sum(), 1)
    out = {"eval_tokens": n, "codes_used": int((counts > 0).sum()),
           "code_perplexity": float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))}
    if lm_nll:
        out.update(nll_backbone=sums["nll_backbone"] / n, nll_world_model_idm=sums["nll_world_model_idm"] / n)
    if policy:
        out.update(bc_top1_accuracy=sums["top1"] / n, bc_top5_accuracy=sums["top5"] / n,
                   nll_world_model_policy=sums["nll_world_model_policy"] / n)
    return out


# ---------------------------------------------------------------------------------------------- data setup

@dataclass
class _Data:
    """What the stages read: a provider factory, the held-out batches, the shortlist and corpus facts."""

    make: Callable[[float, int, int], object]  # (epochs, steps, stage) -> provider
    held_out: Callable[[], object]  # -> iterator of (h, ids, mask)
    seen: np.ndarray | None  # (V,) bool: tokens in the training windows
    facts: dict
    held_out_sequences: list[np.ndarray]


def _resolve_dtype(cfg: PretrainConfig, device) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype

    return "bfloat16" if native_bfloat16(device) else "float32"


def _cache_data(ctx: _Context, backbone, tok, out: Path) -> _Data:
    """Hidden-state cache mode: build (main process) or reuse the cache, then windows into it."""
    from reinlm.latent.data import CachedWindows

    cfg = ctx.cfg
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    if ctx.is_main:
        build_cache(backbone, tok, cfg.backbone, cfg.corpus, cache_dir, text_column=cfg.text_column,
                    max_len=cfg.max_len, batch_size=cfg.sample_batch, new_tokens=cfg.sample_new_tokens,
                    temperature=cfg.sample_temperature, seed=cfg.seed, max_tokens=cfg.corpus_tokens)
    ctx.barrier()
    cache = HiddenCache.open(cache_dir)
    train_seqs, held_seqs = cache.split(cfg.held_out_fraction, cfg.seed)
    train_w, held_w = cache.windows(train_seqs, cfg.window), cache.windows(held_seqs, cfg.window)
    if len(train_w) == 0 or len(held_w) == 0:
        raise ReinlmError(f"corpus: {cfg.corpus!r} is too small for a training and a held-out split "
                          f"({cache.n_sequences} sequences); use a larger corpus.")
    seen = np.zeros(int(backbone.get_output_embeddings().weight.shape[0]), dtype=bool)
    for a, b in train_w:
        seen[cache.tokens[a:b]] = True

    def make(epochs: float, steps: int, stage: int):
        return CachedWindows(cache, train_w, cfg.batch_windows, epochs, cfg.seed, ctx.rank, ctx.world, steps)

    def held_out():
        for i in range(0, len(held_w), 16):
            yield cache.batch(held_w[i:i + 16], ctx.device)

    held_seq_tokens = [np.asarray(cache.tokens[cache.offsets[s]:cache.offsets[s + 1]]) for s in held_seqs[:256]]
    facts = {"mode": "cache", "cached_tokens": int(cache.meta["n_tokens"]), "held_out_sequences": int(len(held_seqs)),
             "train_windows": int(len(train_w)), "cache_build_seconds": round(cache.meta.get("seconds", 0.0), 1),
             "cache_tokens_per_s": cache.meta.get("tokens_per_s")}
    return _Data(make, held_out, seen, facts, held_seq_tokens)


def _stream_data(ctx: _Context, backbone, tok, out: Path) -> _Data:
    """Streaming mode: states computed on the fly; ``self:N`` samples its tokens once (tokens only)."""
    from reinlm.latent.data import StreamedWindows, backbone_states, pad_windows, scan_corpus

    cfg = ctx.cfg
    spec = parse_corpus_spec(cfg.corpus)
    if spec.kind == "self":
        store = Path(cfg.cache_dir) if cfg.cache_dir else out / "samples"
        if ctx.is_main:
            build_cache(backbone, tok, cfg.backbone, cfg.corpus, store, batch_size=cfg.sample_batch,
                        new_tokens=cfg.sample_new_tokens, temperature=cfg.sample_temperature, seed=cfg.seed,
                        store_hidden=False)
        ctx.barrier()
        st = HiddenCache.open(store)
        source = StoredTokenSource(st.tokens, st.offsets, cfg.window, cfg.corpus)
    else:
        source = TokenSource(cfg.corpus, tok, cfg.window, cfg.text_column)
    V = int(backbone.get_output_embeddings().weight.shape[0])
    scan = scan_corpus(source, cfg.held_out_fraction, cfg.seed, V, cfg.corpus_tokens, cfg.eval_tokens)
    if scan["train_windows"] == 0 or not scan["held_out_windows"]:
        raise ReinlmError(f"corpus: {cfg.corpus!r} is too small for a training and a held-out split "
                          f"({scan['documents']} documents); use a larger corpus.")

    def make(epochs: float, steps: int, stage: int):
        data = StreamedWindows(source, backbone, cfg.batch_windows, cfg.seed + 1000 * stage, cfg.held_out_fraction,
                               cfg.shuffle_buffer, ctx.rank, ctx.world, cfg.corpus_tokens, split_seed=cfg.seed)
        data.total = steps or max(1, int(math.ceil(epochs * scan["train_windows"] / cfg.batch_windows)))
        return data

    held = scan["held_out_windows"]

    def held_out():
        for i in range(0, len(held), 16):
            ids, mask = pad_windows(held[i:i + 16], ctx.device)
            yield backbone_states(backbone, ids, mask), ids, mask

    facts = {"mode": "stream", "train_windows": scan["train_windows"], "train_tokens": scan["train_tokens"],
             "documents": scan["documents"], "held_out_windows": len(held)}
    return _Data(make, held_out, scan["seen"], facts, held)


# ---------------------------------------------------------------------------------------------- pipeline

def _accelerator(cfg: PretrainConfig):
    from accelerate import Accelerator

    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu)
    if accelerator.num_processes > 1:
        destroy_process_group_at_exit()
    return accelerator


def pretrain(cfg: PretrainConfig, latent: LatentConfig | None = None) -> Path:
    """Run (or resume) the whole pipeline; returns ``cfg.out`` holding the model and ``summary.json``.

    Raises :class:`Interrupted` when ``stop_after_steps`` stops it early (a checkpoint is written)."""
    ctx, out = _start(cfg)
    t0 = time.time()
    dtype, backbone, tok = _load_backbone(ctx)
    H = int((getattr(backbone.config, "text_config", None) or backbone.config).hidden_size)
    mode = _data_mode(cfg, H)
    data = _cache_data(ctx, backbone, tok, out) if mode == "on" else _stream_data(ctx, backbone, tok, out)
    data_seconds = round(time.time() - t0, 1)
    if ctx.is_main:
        _save_held_out(out / "held_out.npz", data.held_out_sequences)
    latent = _heads_config(cfg, latent)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LatentActionModel(latent, backbone, tok)
    reduce = Reducer(ctx.accelerator)
    model, s1 = _stage1(ctx, model, data, reduce, out / "stage1", backbone, tok)
    s2 = _stage2(ctx, model, data, reduce, out / "stage2", out)
    summary = {
        "backbone": cfg.backbone, "backbone_dtype": dtype, "autocast": ctx.autocast, "corpus": cfg.corpus, "num_actions": latent.num_actions,
        "processes": ctx.world, **data.facts,
        "codes_used": s1["codes_used"], "code_perplexity": s1["code_perplexity"],
        "nll_backbone": s1["nll_backbone"], "nll_world_model_idm": s1["nll_world_model_idm"],
        "bc_top1_accuracy": s2["bc_top1_accuracy"], "bc_top5_accuracy": s2["bc_top5_accuracy"],
        "nll_world_model_policy": s2["nll_world_model_policy"], "eval_tokens": s1["eval_tokens"],
        "seconds": {"data": data_seconds, "stage1": s1["seconds"], "stage2": s2["seconds"]},
    }
    if ctx.is_main:
        write_json(out / "summary.json", summary)
        for stage in (out / "stage1", out / "stage2"):  # finished stages need no checkpoint
            shutil.rmtree(stage / "checkpoint", ignore_errors=True)
    ctx.barrier()
    return out


def _start(cfg: PretrainConfig) -> tuple[_Context, Path]:
    """Threads, the accelerator and this process's context (the batch must split over the processes), the seed,
    the output directory and its ``pretrain_config.json``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = _accelerator(cfg)
    ctx = _Context(cfg, acc, acc.device if acc.num_processes > 1 or cfg.device != "cpu" else torch.device("cpu"),
                   acc.process_index, acc.num_processes, acc.is_main_process,
                   budget=cfg.stop_after_steps or None)
    if cfg.batch_windows % ctx.world:
        raise ReinlmError(f"batch_windows: got {cfg.batch_windows} with {ctx.world} processes; allowed: a multiple "
                          f"of the number of processes.")
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        write_json(out / "pretrain_config.json", config_to_dict(cfg))
    return ctx, out


def _load_backbone(ctx: _Context) -> tuple[str, object, object]:
    """The frozen backbone in the resolved dtype (packed bfloat16 linears on a CPU that has them), the autocast
    decision; -> (dtype, backbone, tokenizer)."""
    from reinlm.hub import load_causal_lm

    cfg = ctx.cfg
    dtype = _resolve_dtype(cfg, ctx.device)
    ctx.autocast = cfg.autocast == "bfloat16" or (cfg.autocast == "auto" and native_bfloat16(ctx.device))
    backbone, tok = load_causal_lm(cfg.backbone, device=str(ctx.device), dtype=dtype)
    if dtype == "bfloat16" and ctx.device.type == "cpu":
        if packing_supported():  # oneDNN-packed bfloat16 linears: bit-identical, faster (rollout/fast.py)
            pack_linears(backbone)
    return dtype, backbone, tok


def _data_mode(cfg: PretrainConfig, H: int) -> str:
    """``--hidden-cache`` resolved: ``on`` (a disk cache) or ``off`` (streamed); ``auto`` caches when the corpus's
    float16 states (its tokens, or ~4 bytes of text per token, x 1.1 x H x 2 bytes) fit in ``--cache-max-gb``."""
    spec = parse_corpus_spec(cfg.corpus)
    mode = cfg.hidden_cache
    if mode == "auto":
        n = spec.n_tokens if spec.kind == "self" else (cfg.corpus_tokens or None)
        if n is None and Path(cfg.corpus).expanduser().exists():
            p = Path(cfg.corpus).expanduser()
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
            n = size // 4  # about 4 bytes of text a token
        mode = "on" if n is not None and n * 1.1 * H * 2 <= cfg.cache_max_gb * 1e9 else "off"
    return mode


def _heads_config(cfg: PretrainConfig, latent: LatentConfig | None) -> LatentConfig:
    """The heads' config on this backbone (float32 heads only: AdamW on bfloat16 weights loses small updates)."""
    latent = latent or LatentConfig()
    latent.backbone = cfg.backbone
    if latent.heads_dtype != "float32":
        raise ReinlmError(f"heads_dtype: got {latent.heads_dtype!r} for pretraining; allowed: float32 (AdamW on "
                          f"bfloat16 weights loses small updates; bfloat16 heads are for loading large models).")
    return latent


def _stage1(ctx: _Context, model: LatentActionModel, data: _Data, reduce: Reducer, s1_dir: Path, backbone,
            tok) -> tuple[LatentActionModel, dict]:
    """Stage 1 (IDM + world model) unless ``s1_dir/result.json`` says it finished (then its model is loaded);
    -> (the model, the stage's result: held-out figures and seconds)."""
    cfg = ctx.cfg
    if (s1_dir / "result.json").is_file():
        log.info("stage 1: found %s, skipping", s1_dir / "result.json")
        model = LatentActionModel.from_pretrained(s1_dir / "model", backbone=(backbone, tok))
    else:
        t = time.time()
        s1_dir.mkdir(parents=True, exist_ok=True)
        short = lookup = w_short = None
        if cfg.train_vocab == "corpus" and data.seen is not None:
            short = torch.from_numpy(np.flatnonzero(data.seen))
            lookup = torch.full((len(data.seen),), -1, dtype=torch.long)
            lookup[short] = torch.arange(len(short))
            w_short = model.lm_head.weight[short.to(model.lm_head.weight.device)].float()
            lookup = lookup.to(ctx.device)
        provider = data.make(cfg.stage1_epochs, cfg.stage1_steps, 1)
        total = provider.total
        K = model.config.num_actions

        def loss1(h, ids, mask, step):
            noise = gumbel_noise((cfg.batch_windows, cfg.window - 1, K), step_seed(cfg.seed, 1, step))
            return stage1_loss(model, h, ids, mask, cfg, w_short, lookup, noise[ctx.rank::ctx.world], reduce)

        model.train()
        StageRunner(ctx, "stage 1: IDM + world model", 1, s1_dir, {"idm": model.idm, "world_model": model.world_model},
                    loss1, provider, total).run()
        model.eval()
        if ctx.is_main:
            res = evaluate(model, data.held_out(), cfg.eval_tokens, seed=cfg.seed)
            res.update(seconds=round(time.time() - t, 1), steps=total,
                       train_vocab=len(short) if short is not None else model.config.vocab_size)
            model.save_pretrained(s1_dir / "model")
            write_json(s1_dir / "result.json", res)
        ctx.barrier()
    return model, json.loads((s1_dir / "result.json").read_text())


def _stage2(ctx: _Context, model: LatentActionModel, data: _Data, reduce: Reducer, s2_dir: Path, out: Path) -> dict:
    """Stage 2 (behaviour cloning) unless it finished and the model files are in ``out``; writes them there;
    -> the stage's result."""
    cfg = ctx.cfg
    if (s2_dir / "result.json").is_file() and (out / "heads.safetensors").is_file():
        log.info("stage 2: found %s, skipping", s2_dir / "result.json")
    else:
        t = time.time()
        s2_dir.mkdir(parents=True, exist_ok=True)
        provider = data.make(cfg.stage2_epochs, cfg.stage2_steps, 2)
        model.train()
        StageRunner(ctx, "stage 2: behaviour cloning", 2, s2_dir, {"policy": model.policy},
                    lambda h, ids, mask, step: stage2_loss(model, h, ids, mask, reduce), provider,
                    provider.total).run()
        model.eval()
        if ctx.is_main:
            res = evaluate(model, data.held_out(), cfg.eval_tokens, policy=True, seed=cfg.seed, lm_nll=False)
            res.update(seconds=round(time.time() - t, 1), steps=provider.total)
            _save_model_files(model, out)
            write_json(s2_dir / "result.json", res)
        ctx.barrier()
    return json.loads((s2_dir / "result.json").read_text())


def _save_held_out(path: Path, seqs: list[np.ndarray]) -> None:
    """Held-out token sequences (for QD prefixes once the cache is deleted): tokens (N,) int32, offsets (S+1,)."""
    seqs = [np.asarray(s, dtype=np.int32) for s in seqs]
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, tokens=np.concatenate(seqs) if seqs else np.zeros(0, np.int32), offsets=offsets)
    tmp.replace(path)


def _save_model_files(model: LatentActionModel, out: Path) -> None:
    """Write config.json + heads.safetensors into ``out`` itself (beside cache/ and the stage dirs)."""
    tmp = out / ".model.tmp"
    model.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
