"""Action-guided fine-tuning of a latent-action model on a task corpus (CoLA, "FTA").

The CoLA paper adapts a pretrained latent-action model to a task corpus in two ways
(LAMDA-RL/CoLA, ``postrain/``; docs/latent.md "Action-guided fine-tuning"):

- **FTA-I**: each step's action is the frozen inverse dynamics model's argmax (the action that "explains"
  the next token of the task text); the language model is trained to predict the task text under those
  actions;
- **FTA-P**: each step's action is sampled from the frozen (pre-fine-tuning) policy instead.

Then the policy is re-cloned: behaviour cloning of the IDM's argmax actions on the same task text.

Which weights stage 1 trains is chosen by ``train`` (the IDM is never trained: it labels the actions):

=============  ==============================================  ===========================================
``train``      stage 1 trains                                  output directory
=============  ==============================================  ===========================================
world_model    the world model (codebook + merge blocks)       shares the backbone named in config.json
backbone       every backbone weight (CoLA's choice)           carries its own backbone in ``OUT/backbone``
both           both of the above                               carries its own backbone
=============  ==============================================  ===========================================

Stage 2 trains only the policy. With ``world_model`` the backbone's states never change, so they are
computed once and kept in memory. Loss of stage 1 (per task token, full vocabulary):
``-log p_WM(x_{t+1} | h_t, a_t)``; stage 2: ``-log pi(a*_t | x_<=t)`` with ``a*_t`` the IDM's argmax on the
current states.

Both latent families fine-tune through the same steps (the family supplies ``head_input``,
``world_model_parameters``, ``step_world_logits``, ``lm_nll_sum``). On BWArea (no frozen backbone: only
``train=world_model``) stage 1 trains the world stack and the code book's ``unpress`` (the IDM and the code
book's entries stay bit-identical) with BWArea's two-stream training forward: the history merged with the IDM's
actions, step t's own state with the mode's action a_t. Legend: B = documents per batch, L = document length
(tokens), H = hidden size, K = actions, V = vocabulary.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from reinlm.config.build import config_to_dict
from reinlm.config.schema import Config, opt
from reinlm.errors import ReinlmError
from reinlm.latent.backbone import backbone_forward
from reinlm.latent.heldout import SUMS, batch_sums
from reinlm.latent.bwarea import BWAreaModel
from reinlm.latent.model import LatentActionModel, latent_family
from reinlm.latent.modules import sample_actions
from reinlm.latent.stage import Progress, Stage
from reinlm.schedules import lr_multiplier
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.jsonio import append_jsonl, read_jsonl_objects, write_json
from reinlm.utils.rng import seed_everything

log = logging.getLogger(__name__)

MODES = ("fta-i", "fta-p")
PARTS = ("world_model", "backbone", "both")


@dataclass
class FinetuneConfig(Config):
    """Every ``reinlm latent finetune`` flag."""

    latent: str = opt("", help="latent model directory to fine-tune (from `reinlm latent pretrain`)", required=True,
                      metavar="DIR")
    data: str = opt("", help="task corpus: a .jsonl file (one document per line, column --text-column) or a "
                             "text file with one document per non-empty line", required=True, metavar="FILE")
    out: str = opt("runs/latent-fta", help="output latent model directory (+ finetune.json, metrics.jsonl)")
    mode: Literal["fta-i", "fta-p"] = opt("fta-i", help="actions of stage 1: fta-i = the frozen IDM's argmax, "
                                                         "fta-p = sampled from the frozen policy")
    train: Literal["world_model", "backbone", "both"] = opt(
        "world_model", help="what stage 1 trains: world_model (frozen backbone, the output shares it), backbone "
                            "(CoLA's choice; the output carries its own backbone) or both")
    text_column: str = opt("text", help="text column of a .jsonl corpus")
    held_out_fraction: float = opt(0.1, lo=0.0, hi=0.5, lo_open=True, help="share of the documents held out for the before/after figures")
    held_out_data: str = opt("", help="a separate held-out corpus (same formats) instead of holding out a share of "
                                      "--data (e.g. documents from other prompts, so nothing leaks across)")
    max_len: int = opt(128, lo=2, help="documents are cut to this many tokens")
    eval_train_docs: int = opt(64, lo=0, help="training documents in the before/after figures (0 = all; each "
                                              "evaluation runs the full-vocabulary LM head three times per token)")
    epochs: float = opt(3.0, lo=0.0, help="passes over the training documents in stage 1 (the language model)")
    bc_epochs: float = opt(3.0, lo=0.0, help="passes in stage 2 (re-cloning the policy to the IDM's actions; 0 = skip)")
    batch_size: int = opt(16, lo=1, help="documents per optimisation step")
    lr: float = opt(1e-4, lo=0.0, lo_open=True, help="AdamW learning rate of the world model and the policy (cosine decay)")
    backbone_lr: float = opt(1e-5, lo=0.0, lo_open=True, help="AdamW learning rate of the backbone (train backbone / both)")
    weight_decay: float = opt(0.0, lo=0.0, help="AdamW weight decay")
    policy_tau: float = opt(1.0, lo=0.0, lo_open=True, help="fta-p: temperature of the frozen policy's action samples")
    seed: int = opt(0, help="random seed (held-out split, batch order, fta-p action samples)")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    threads: int = opt(0, lo=0, help="torch CPU threads (0 = leave as is)")
    progress: bool = opt(True, help="show progress bars")


    @property
    def trains_backbone(self) -> bool:
        return self.train in ("backbone", "both")

    @property
    def trains_world_model(self) -> bool:
        return self.train in ("world_model", "both")


# ---------------------------------------------------------------------------------------------- data

def read_documents(path: str, text_column: str = "text") -> list[str]:
    """The documents of a task corpus: a .jsonl file (column ``text_column``) or one per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise ReinlmError(f"data: {path!r} is not a file; allowed: a .jsonl file with a {text_column!r} column, or a "
                          "text file with one document per line.")
    if p.suffix == ".jsonl":
        docs = []
        for lineno, row in read_jsonl_objects(p, "data", f"one JSON object per line with a {text_column!r} field"):
            if not isinstance(row.get(text_column), str):
                raise ReinlmError(f"data: {path!r} line {lineno} has no text field {text_column!r} (fields: "
                                  f"{', '.join(row) or 'none'}); pass --text-column.")
            docs.append(row[text_column])
    else:
        try:
            docs = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ReinlmError(f"data: {path!r} is not UTF-8 text (byte {e.start}); allowed: a UTF-8 text or "
                              ".jsonl file.") from e
    docs = [d for d in docs if d.strip()]
    if len(docs) < 2:
        raise ReinlmError(f"data: {path!r} holds {len(docs)} document(s); allowed: at least 2 (some are held out).")
    return docs


@dataclass
class TaskTokens:
    """Tokenised documents, right-padded: ids (N, L) long, mask (N, L) long."""

    ids: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def rows(self, idx) -> "TaskTokens":
        return TaskTokens(self.ids[idx], self.mask[idx])


def tokenize_documents(tokenizer, docs: list[str], max_len: int) -> TaskTokens:
    """Documents -> :class:`TaskTokens` (cut to ``max_len`` tokens; documents under 2 tokens are dropped)."""
    enc = [tokenizer(d, add_special_tokens=False)["input_ids"][:max_len] for d in docs]
    enc = [e for e in enc if len(e) >= 2]
    if len(enc) < 2:
        raise ReinlmError("data: fewer than 2 documents have at least 2 tokens; give longer documents.")
    L = max(len(e) for e in enc)
    ids = torch.zeros(len(enc), L, dtype=torch.long)
    mask = torch.zeros(len(enc), L, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return TaskTokens(ids, mask)


def split_documents(n: int, held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) document indices; at least one of each."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(n - 1, max(1, int(round(held_out_fraction * n))))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


# ---------------------------------------------------------------------------------------------- pieces

def hidden_states(lam, ids: torch.Tensor, mask: torch.Tensor, grad: bool) -> torch.Tensor:
    """What the heads read (``head_input``: the backbone's states h (B, L, H) float32, or BWArea's token ids
    (B, L)); with ``grad`` (a trained backbone) the backbone's graph is kept."""
    if not grad:
        return lam.head_input(ids, mask)
    return backbone_forward(lam.backbone, ids, mask)[0].float()


def step_actions(lam, h: torch.Tensor, mask: torch.Tensor, mode: str, frozen_policy=None, tau: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The action of each step t = 0..L-2 (B, L-1): the IDM's argmax (fta-i) or a sample of ``frozen_policy``
    at temperature ``tau`` (fta-p). No gradient flows into the actions."""
    with torch.no_grad():
        h = h.detach()
        if mode == "fta-i":
            return lam.idm_logits_from_hidden(h, mask).argmax(-1)  # (B, L-1)
        logits = frozen_policy(h, mask)[:, :-1]  # (B, L-1, K) step t from x_<=t
        return sample_actions(logits, tau=tau, generator=generator)  # (B, L-1)


def lm_loss(lam, h: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of the world model under ``actions`` (B, L-1), full vocabulary: the family's
    ``step_world_logits`` (over a frozen backbone: merged into each state; BWArea: its two-stream training
    forward, the history merged with the IDM's actions)."""
    valid = (mask[:, :-1] * mask[:, 1:]).bool()  # (B, L-1)
    logits = lam.step_world_logits(h, ids, mask, actions)  # (B, L-1, V)
    return F.cross_entropy(logits[valid], ids[:, 1:][valid])


def bc_loss(lam, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Behaviour cloning: policy cross-entropy against the IDM's argmax of each step; (loss, top-1 accuracy)."""
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    with torch.no_grad():
        target = lam.idm_logits_from_hidden(h, mask).argmax(-1)[valid]
    logits = lam.policy_logits_from_hidden(h, mask)[:, :-1][valid]  # (N, K)
    return F.cross_entropy(logits, target), float((logits.argmax(-1) == target).float().mean())


@torch.no_grad()
def evaluate_task(lam, data: TaskTokens, batch_size: int = 16, seed: int = 0, tau: float = 1.0) -> dict[str, float]:
    """Task figures on ``data`` (full vocabulary, per token): the frozen LM's NLL (``nll_backbone``: the
    backbone; on BWArea the model marginalised over its policy, which fine-tuning changes), world-model NLL
    under the IDM's argmax actions and under actions sampled from the policy (temperature ``tau``), BC
    top-1/top-5 accuracy of the policy against the IDM's argmax, codes used."""
    g = torch.Generator().manual_seed(seed)
    s = dict.fromkeys(SUMS, 0.0)
    codes: set[int] = set()
    n = 0
    dev = lam.device
    for i in range(0, len(data), batch_size):
        ids, mask = data.ids[i:i + batch_size].to(dev), data.mask[i:i + batch_size].to(dev)
        idm = batch_sums(lam, hidden_states(lam, ids, mask, grad=False), ids, mask, s, tau=tau, generator=g)
        codes.update(idm.unique().tolist())
        n += int(idm.numel())
    return {"tokens": n, "nll_backbone": s["nll_backbone"] / n, "nll_world_model_idm": s["nll_world_model_idm"] / n,
            "nll_world_model_policy": s["nll_world_model_policy"] / n, "bc_top1_accuracy": s["top1"] / n,
            "bc_top5_accuracy": s["top5"] / n, "codes_used": len(codes)}


def _run_stage(name: str, params: list[torch.nn.Parameter] | list[dict], n_docs: int, epochs: float,
               cfg: FinetuneConfig, step_fn, metrics_path: Path, lr: float, salt: int, loss_key: str) -> int:
    """``epochs`` passes of AdamW (:class:`reinlm.latent.stage.Stage`, cosine schedule, no warm-up) over shuffled
    document batches; ``step_fn(idx) -> (loss, stats, tokens)``, ``stats[loss_key]`` shown in the progress."""
    total = int(math.ceil(epochs * n_docs / cfg.batch_size))
    if total == 0:
        return 0
    stage = Stage(params, total, lr, cfg.weight_decay, lr_multiplier(total, 0, "cosine"))
    rng = np.random.default_rng([cfg.seed, salt])
    order = np.concatenate([rng.permutation(n_docs) for _ in range(int(math.ceil(epochs)) + 1)])

    def after(s: int, stats: dict, tok_s: float) -> None:
        append_jsonl(metrics_path, {"stage": name, "step": s, **stats})

    return stage.run(lambda s: step_fn(order[s * cfg.batch_size:(s + 1) * cfg.batch_size]),
                     Progress(name, total, 0, cfg.progress, bar=True, every=1), loss_key=loss_key, after=after)


class _TaskStates:
    """The training documents' head inputs, per batch of document indices: computed once with ``cache`` (they
    cannot change: a frozen backbone, or BWArea's token ids), else on the fly (``grad``: the backbone's graph
    kept)."""

    def __init__(self, lam, train: TaskTokens, bs: int, cache: bool):
        self.lam, self.train, self.dev = lam, train, lam.device
        self.cached = None
        if cache:
            self.cached = torch.cat([hidden_states(lam, train.ids[i:i + bs].to(self.dev),
                                                   train.mask[i:i + bs].to(self.dev), grad=False)
                                     for i in range(0, len(train), bs)])  # (N, L, *)

    def __call__(self, idx, grad: bool):
        """-> (head inputs (b, L', *), ids (b, L'), mask (b, L')), cut to the batch's longest document L'."""
        ids, mask = self.train.ids[idx].to(self.dev), self.train.mask[idx].to(self.dev)
        L = int(mask.sum(-1).max())
        ids, mask = ids[:, :L], mask[:, :L]
        if self.cached is not None:
            return self.cached[idx][:, :L], ids, mask
        return hidden_states(self.lam, ids, mask, grad=grad), ids, mask


# ---------------------------------------------------------------------------------------------- pipeline

def finetune(cfg: FinetuneConfig, lam=None) -> Path:
    """Fine-tune ``cfg.latent`` on ``cfg.data`` (stage 1 per ``cfg.mode`` / ``cfg.train``, then re-clone the policy)
    and write a latent model directory to ``cfg.out``; returns it. ``lam``: an already loaded model to use."""
    bwarea = isinstance(lam, BWAreaModel) if lam is not None else latent_family(cfg.latent) == "bwarea"
    if bwarea and cfg.trains_backbone:
        raise ReinlmError(f"train: got {cfg.train!r} for a BWArea model; allowed: world_model (BWArea has no frozen "
                          f"backbone: its world model owns its embeddings and layers, and world_model trains them "
                          f"all).")
    lam, train, held = _load_task(cfg, lam)
    out = Path(cfg.out)
    work = out.with_name(f".{out.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    metrics_path = work / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    t0 = time.time()
    lam.eval()
    train_eval = train.rows(slice(0, cfg.eval_train_docs or None))
    before = {"held_out": evaluate_task(lam, held, seed=cfg.seed), "train": evaluate_task(lam, train_eval, seed=cfg.seed)}
    log.info("before: held-out NLL(WM, IDM actions) %.3f, BC top-1 %.3f",
             before["held_out"]["nll_world_model_idm"], before["held_out"]["bc_top1_accuracy"])
    states = _TaskStates(lam, train, cfg.batch_size, cache=not cfg.trains_backbone)
    s1 = _stage1(lam, cfg, states, len(train), metrics_path)
    if cfg.trains_backbone:  # stage 1 changed the states: stage 2 computes them on the fly (no gradient)
        states = _TaskStates(lam, train, cfg.batch_size, cache=False)
    s2 = _stage2(lam, cfg, states, len(train), metrics_path)
    after = {"held_out": evaluate_task(lam, held, seed=cfg.seed), "train": evaluate_task(lam, train_eval, seed=cfg.seed)}
    result = {
        "mode": cfg.mode, "train": cfg.train, "documents": {"train": len(train), "held_out": len(held)},
        "steps": {"stage1": s1, "stage2": s2}, "before": before, "after": after,
        "trained": trained_parts(cfg, lam), "seconds": round(time.time() - t0, 1),
    }
    save_finetuned(lam, cfg, out, result, metrics_path)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _load_task(cfg: FinetuneConfig, lam=None) -> tuple:
    """Read and tokenise the corpus (and the separate held-out corpus), load the model (unless given) and split
    the documents: -> (model, train, held-out) as :class:`TaskTokens`."""
    docs = read_documents(cfg.data, cfg.text_column)
    held_docs = read_documents(cfg.held_out_data, cfg.text_column) if cfg.held_out_data else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    lam = lam or LatentActionModel.from_pretrained(cfg.latent, device=cfg.device)
    if lam.tokenizer is None:
        raise ReinlmError(f"latent: the model {cfg.latent!r} has no tokenizer.")
    data = tokenize_documents(lam.tokenizer, docs, cfg.max_len)
    if held_docs is not None:
        return lam, data, tokenize_documents(lam.tokenizer, held_docs, cfg.max_len)
    train_idx, held_idx = split_documents(len(data), cfg.held_out_fraction, cfg.seed)
    return lam, data.rows(train_idx), data.rows(held_idx)


def _stage1(lam, cfg: FinetuneConfig, states: _TaskStates, n_docs: int, metrics_path: Path) -> int:
    """Stage 1: the language model (the family's world model, and/or the backbone) under the mode's actions;
    fta-p samples them from the policy, which stage 1 does not train (so it is the pre-fine-tuning policy).
    Returns the optimisation steps."""
    gen = torch.Generator(device=lam.device).manual_seed(cfg.seed)
    lam.requires_grad_(False)
    groups = []
    if cfg.trains_world_model:
        params = lam.world_model_parameters()
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": params, "lr": cfg.lr})
    if cfg.trains_backbone:
        lam.backbone.requires_grad_(True)
        groups.append({"params": list(lam.backbone.parameters()), "lr": cfg.backbone_lr})
    frozen_policy = lam.policy if cfg.mode == "fta-p" else None

    def step(idx):
        h, ids, mask = states(idx, grad=cfg.trains_backbone)
        a = step_actions(lam, h, mask, cfg.mode, frozen_policy, cfg.policy_tau, gen)
        loss = lm_loss(lam, h, ids, mask, a)
        return loss, {"loss/lm": loss.item()}, int(mask.sum())

    steps = _run_stage("stage 1: language model", groups, n_docs, cfg.epochs, cfg, step, metrics_path, cfg.lr,
                       salt=1, loss_key="loss/lm")
    lam.requires_grad_(False)
    lam.eval()
    return steps


def _stage2(lam, cfg: FinetuneConfig, states: _TaskStates, n_docs: int, metrics_path: Path) -> int:
    """Stage 2: re-clone the policy to the IDM's argmax actions on the (possibly new) states; returns the steps."""
    lam.policy.requires_grad_(True)
    lam.policy.train()

    def step(idx):
        h, _, mask = states(idx, grad=False)
        loss, acc = bc_loss(lam, h, mask)
        return loss, {"loss/bc": loss.item(), "bc/top1_batch": acc}, int(mask.sum())

    steps = _run_stage("stage 2: re-clone the policy", list(lam.policy.parameters()), n_docs, cfg.bc_epochs, cfg,
                       step, metrics_path, cfg.lr, salt=2, loss_key="loss/bc")
    lam.policy.requires_grad_(False)
    lam.eval()
    return steps


def trained_parts(cfg: FinetuneConfig, lam=None) -> list[str]:
    """Names of the parts the run trains (prefixes of the model's ``named_parameters``; the world model's are the
    family's ``world_model_parts``)."""
    world = list(getattr(lam, "world_model_parts", ("world_model",)))
    parts = []
    if cfg.epochs > 0:
        parts += world if cfg.train == "world_model" else (["backbone"] if cfg.train == "backbone"
                                                            else world + ["backbone"])
    if cfg.bc_epochs > 0:
        parts.append("policy")
    return parts


def save_finetuned(lam, cfg: FinetuneConfig, out: Path, result: dict, metrics_path: Path) -> None:
    """Write the latent model directory atomically: the family's files (``save_pretrained``: config.json, the
    weights, the tokenizer's files), finetune.json, metrics.jsonl, finetune_config.json, and ``backbone/``
    (model + tokenizer) when the backbone was trained."""
    with atomic_dir(out) as tmp:
        if cfg.trains_backbone and cfg.epochs > 0:
            lam.backbone.save_pretrained(tmp / "backbone")
            lam.tokenizer.save_pretrained(tmp / "backbone")
            lam.config.backbone = "./backbone"  # resolved against the model directory when loaded
        heads = tmp / ".heads"
        lam.save_pretrained(heads)
        for f in heads.iterdir():
            f.replace(tmp / f.name)
        shutil.rmtree(heads, ignore_errors=True)
        write_json(tmp / "finetune.json", result)
        write_json(tmp / "finetune_config.json", config_to_dict(cfg))
        if metrics_path.is_file():
            shutil.move(str(metrics_path), tmp / "metrics.jsonl")
