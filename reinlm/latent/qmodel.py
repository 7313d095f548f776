"""A Q-model over latent actions, trained offline by double DQN on scored rollouts (CoLA's search critic).

CoLA (LAMDA-RL/CoLA, ``postrain/``) trains a Q-network that reads the text so far and outputs one value per
latent action; its Monte-Carlo tree search (:mod:`reinlm.latent.search`) extends a node greedily while the
Q-model's temporal-difference error stays small. Here the Q-network is a copy of the latent model's policy
network (by default initialised from it) with a zero output layer, reading what the policy reads
(``head_input``): over a frozen backbone its states h (a few small blocks per step, the backbone never re-run);
on BWArea the token ids (the copy owns its embeddings, as BWArea's policy does).

A rollout of R steps: state s_t = the text up to response token t-1 (the input at position P-1+t),
action a_t, reward r_t = 0 except r_{R-1} = the sequence reward. Double DQN (van Hasselt et al. 2016):

    y_t = r_t + gamma * m_{t+1} * Q_target(s_{t+1}, argmax_a Q(s_{t+1}, a)),     m_R = 0
    loss = sum_t m_t (Q(s_t, a_t) - y_t)^2 / sum_t m_t

with ``m_t`` = 1 on real steps; the target network is copied from Q every ``target_every`` optimiser steps.
Legend: N = rollouts, B = rollouts per batch, T = positions, R = response steps, H = hidden, K = actions;
"(T, *)" is what the policy reads per position: (T, H) backbone states or (T,) token ids (BWArea).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from reinlm.config.schema import Config, opt
from reinlm.errors import ReinlmError
from reinlm.rollout.token import decode_completions
from reinlm.utils.atomic import atomic_dir
from reinlm.utils.jsonio import append_jsonl, write_json

log = logging.getLogger(__name__)

Q_CONFIG = "q_config.json"
Q_WEIGHTS = "q.safetensors"


# ---------------------------------------------------------------------------------------------- the math

def double_dqn_targets(q_next_online: torch.Tensor, q_next_target: torch.Tensor, rewards: torch.Tensor,
                       mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """y_t = r_t + gamma * m_{t+1} * Q_target(s_{t+1}, argmax_a Q(s_{t+1}, a)); (B, R) (no gradient).

    ``q_next_online`` / ``q_next_target`` (B, R, K): Q(s_{t+1}, .) of the online and target networks, where
    row t holds the values of the state *after* step t (its content at the last real step is ignored);
    ``rewards`` / ``mask`` (B, R).
    """
    with torch.no_grad():
        best = q_next_online.argmax(-1, keepdim=True)  # (B, R, 1) action chosen by the online network
        boot = q_next_target.gather(-1, best).squeeze(-1)  # (B, R) evaluated by the target network
        next_mask = torch.zeros_like(mask, dtype=boot.dtype)
        next_mask[:, :-1] = mask[:, 1:].to(boot.dtype)  # m_{t+1}; m_R = 0 (the episode ends)
        return rewards.to(boot.dtype) + gamma * next_mask * boot


def double_dqn_loss(q: torch.Tensor, q_target: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                    mask: torch.Tensor, gamma: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared TD error of the taken actions over real steps.

    ``q`` (B, R+1, K): the online Q-values of states s_0..s_R (gradient flows through rows 0..R-1);
    ``q_target`` (B, R+1, K): the target network's, same states; ``actions`` / ``rewards`` / ``mask`` (B, R).
    """
    q_sa = q[:, :-1].gather(-1, actions[..., None].clamp(min=0)).squeeze(-1)  # (B, R) Q(s_t, a_t)
    y = double_dqn_targets(q[:, 1:].detach(), q_target[:, 1:], rewards, mask, gamma)  # (B, R)
    m = mask.to(q_sa.dtype)
    td = (q_sa - y) * m
    loss = td.pow(2).sum() / m.sum().clamp(min=1)
    return loss, {"loss/td": float(loss.detach()), "q/mean": float((q_sa.detach() * m).sum() / m.sum().clamp(min=1))}


def terminal_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence scores (B,) placed at each row's last real step: (B, R) zeros elsewhere."""
    r = torch.zeros(mask.shape, dtype=torch.float32, device=scores.device)
    last = (mask.long().cumsum(-1).argmax(-1))  # (B,) index of the last real step
    r[torch.arange(len(scores), device=scores.device), last] = scores.float()
    return r * mask.float()


# ---------------------------------------------------------------------------------------------- the network

class QModel(nn.Module):
    """Q(s, .) over the K actions from what the policy reads (``head_input``): (B, T, *) -> (B, T, K).

    The network has the policy's architecture (whatever the latent model's preset): it is built as a copy of
    the policy module, so a Q-model always belongs to a latent model (``from_pretrained(dir, lam)``)."""

    def __init__(self, net: nn.Module, config: dict):
        super().__init__()
        self.net = net
        self.config = config

    @classmethod
    def from_policy(cls, lam, gamma: float = 0.99, latent: str = "", init_from_policy: bool = True) -> "QModel":
        """A policy-shaped Q-model: the policy's blocks copied (or re-initialised with ``init_from_policy=False``),
        the output layer zero (so every Q-value starts at 0)."""
        net = copy.deepcopy(lam.policy_module()).float().train().requires_grad_(True)
        if not init_from_policy:
            for m in net.modules():
                if m is not net and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        nn.init.zeros_(net.out.weight)
        if net.out.bias is not None:
            nn.init.zeros_(net.out.bias)
        c = lam.config
        config = {"model_type": "reinlm-latent-q", "hidden_size": c.hidden_size, "num_actions": c.num_actions,
                  "gamma": gamma, "latent": latent}
        return cls(net, config).to(lam.device)

    @property
    def gamma(self) -> float:
        return float(self.config["gamma"])

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(h, mask).float()  # (B, T, K)

    def save_pretrained(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        with atomic_dir(out_dir) as tmp:
            write_json(tmp / Q_CONFIG, self.config)
            save_file({k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}, str(tmp / Q_WEIGHTS))
            for name, obj in (extra or {}).items():
                write_json(tmp / name, obj)
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, q_dir: str | Path, lam) -> "QModel":
        """Load a Q-model directory for the latent model ``lam`` (checked: same hidden size, K and architecture)."""
        from safetensors.torch import load_file

        q_dir = Path(q_dir)
        if not (q_dir / Q_CONFIG).is_file() or not (q_dir / Q_WEIGHTS).is_file():
            raise ReinlmError(f"q: {str(q_dir)!r} is not a Q-model directory (it needs {Q_CONFIG} and {Q_WEIGHTS}); "
                              "create one with `reinlm latent train-q --out DIR`.")
        c = json.loads((q_dir / Q_CONFIG).read_text())
        if c.get("model_type") != "reinlm-latent-q":
            raise ReinlmError(f"q: {str(q_dir / Q_CONFIG)!r} has model_type {c.get('model_type')!r}; allowed: "
                              "'reinlm-latent-q'.")
        if (c["hidden_size"], c["num_actions"]) != (lam.config.hidden_size, lam.config.num_actions):
            raise ReinlmError(f"q: {str(q_dir)!r} was trained for hidden size {c['hidden_size']} and K = "
                              f"{c['num_actions']} actions, but the latent model has hidden size "
                              f"{lam.config.hidden_size} and K = {lam.config.num_actions}; train a Q-model for it.")
        q = cls.from_policy(lam, c["gamma"], c.get("latent", ""))
        try:
            q.net.load_state_dict(load_file(str(q_dir / Q_WEIGHTS)))
        except RuntimeError as e:
            raise ReinlmError(f"q: {str(q_dir)!r} does not match the policy architecture of this latent model "
                              f"({str(e).splitlines()[0]}); train a Q-model for it.") from e
        return q.eval()


# ---------------------------------------------------------------------------------------------- rollouts

@dataclass
class Rollout:
    """One scored rollout: ``h`` (T, *) what the policy reads at its real positions (prompt + response, last
    token excluded: backbone states (T, H) or token ids (T,)), ``prompt_len`` p (s_t is at position p-1+t),
    ``actions`` (R,), ``reward``."""

    h: torch.Tensor
    prompt_len: int
    actions: torch.Tensor
    reward: float

    @property
    def steps(self) -> int:
        return len(self.actions)


def collate(rollouts: list[Rollout], device="cpu"):
    """Right-padded batch: h (B, T, *), hmask (B, T), state index (B, R+1), actions (B, R), rewards (B, R),
    mask (B, R). Row b's state s_t is at position ``index[b, t]`` (s_R, past the end, repeats the last state
    and is masked out)."""
    B = len(rollouts)
    T = max(r.h.shape[0] for r in rollouts)
    R = max(r.steps for r in rollouts)
    h = torch.zeros((B, T, *rollouts[0].h.shape[1:]), dtype=rollouts[0].h.dtype)
    hmask = torch.zeros(B, T, dtype=torch.long)
    index = torch.zeros(B, R + 1, dtype=torch.long)
    actions = torch.zeros(B, R, dtype=torch.long)
    mask = torch.zeros(B, R, dtype=torch.long)
    scores = torch.zeros(B)
    for b, r in enumerate(rollouts):
        t = r.h.shape[0]
        h[b, :t], hmask[b, :t] = r.h, 1
        index[b] = (r.prompt_len - 1 + torch.arange(R + 1)).clamp(max=t - 1)
        actions[b, : r.steps], mask[b, : r.steps] = r.actions, 1
        scores[b] = r.reward
    rewards = terminal_rewards(scores, mask)
    return tuple(x.to(device) for x in (h, hmask, index, actions, rewards, mask))


def q_at_states(qnet: nn.Module, h: torch.Tensor, hmask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Q-values of the states s_0..s_R: (B, T, *) -> (B, R+1, K)."""
    q_all = qnet(h, hmask)  # (B, T, K)
    return q_all.gather(1, index[..., None].expand(-1, -1, q_all.shape[-1]))


@torch.no_grad()
def sample_rollouts(lam, prompts: list[str], samples_per_prompt: int, max_new_tokens: int, temperature: float,
                    seed: int, batch_prompts: int = 8, progress: bool = True) -> tuple[list[Rollout], list[dict]]:
    """Sample G rollouts per prompt with the policy (actions at ``temperature``, greedy world-model tokens).

    Returns the rollouts (reward 0 until scored) and one JSON row per rollout (prompt, completion, response_ids,
    actions) for ``rollouts.jsonl``.
    """
    tok = lam.tokenizer
    lam.set_action_sampling(greedy=False, tau=temperature, top_k=0, top_p=1.0)
    out_r, out_rows = [], []
    bar = tqdm(total=len(prompts) * samples_per_prompt, desc="rollouts", unit="rollout", disable=not progress)
    for i in range(0, len(prompts), batch_prompts):
        chunk = prompts[i:i + batch_prompts]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        gens = [torch.Generator(device=lam.device).manual_seed(seed * 100003 + i + j) for j in range(len(chunk))]
        g = lam.generate(enc["input_ids"].to(lam.device), enc["attention_mask"].to(lam.device),
                         max_new_tokens=max_new_tokens, generator=gens, return_dict=True,
                         num_return_sequences=samples_per_prompt)
        P = g.prompt_length
        completions = decode_completions(tok, g.response_ids, g.response_mask)
        for b in range(g.sequences.shape[0]):
            p_len = int(g.attention_mask[b, :P].sum())
            R = int(g.response_mask[b].sum())
            if R == 0:
                continue
            h = g.hidden[b, P - p_len: P - 1 + R].cpu()  # (p + R - 1, *) what the policy read
            acts = g.actions[b, :R].cpu()
            out_r.append(Rollout(h, p_len, acts, 0.0))
            out_rows.append({"prompt": chunk[b // samples_per_prompt], "completion": completions[b],
                             "response_ids": g.response_ids[b, :R].tolist(), "actions": acts.tolist()})
        bar.update(g.sequences.shape[0])
    bar.close()
    return out_r, out_rows


@torch.no_grad()
def rollouts_from_rows(lam, rows: list[tuple[int, dict]], path: str) -> list[Rollout]:
    """Rollouts from JSONL rows ``{"prompt", "response_ids" or "completion", "reward", "actions"?}``; missing
    actions are labelled by the IDM's argmax (so token-space samples can train a Q-model too)."""
    tok = lam.tokenizer
    out = []
    for lineno, row in rows:
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("reward"), (int, float)) or \
                isinstance(row.get("reward"), bool) or not math.isfinite(float(row["reward"])):
            raise ReinlmError(f"rollouts: {path!r} line {lineno} needs a string 'prompt' and a finite number 'reward' "
                              "(plus 'response_ids' or 'completion', and optionally 'actions').")
        p_ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        if isinstance(row.get("response_ids"), list):
            r_ids = [int(x) for x in row["response_ids"]]
        elif isinstance(row.get("completion"), str):
            r_ids = tok(row["completion"], add_special_tokens=False)["input_ids"]
        else:
            raise ReinlmError(f"rollouts: {path!r} line {lineno} has neither 'response_ids' nor 'completion'.")
        if not p_ids or not r_ids:
            raise ReinlmError(f"rollouts: {path!r} line {lineno} has an empty prompt or response.")
        ids = torch.tensor([p_ids + r_ids], device=lam.device)
        h = lam.head_input(ids)  # (1, p + R, *)
        p, R = len(p_ids), len(r_ids)
        if row.get("actions") is not None:
            acts = torch.tensor([int(a) for a in row["actions"]])
            K = lam.config.num_actions
            if len(acts) != R or (len(acts) and (int(acts.min()) < 0 or int(acts.max()) >= K)):
                raise ReinlmError(f"rollouts: {path!r} line {lineno} has {len(acts)} actions for {R} response tokens "
                                  f"(values must be in 0..{K - 1}); allowed: one action per response token.")
        else:
            acts = lam.idm_logits_from_hidden(h)[0, p - 1: p - 1 + R].argmax(-1).cpu()  # step p-1+t explains token p+t
        out.append(Rollout(h[0, : p + R - 1].cpu(), p, acts, float(row["reward"])))
    return out


# ---------------------------------------------------------------------------------------------- training

@dataclass
class QTrainConfig(Config):
    """Every ``reinlm latent train-q`` flag."""

    latent: str = opt("", help="latent model directory (its policy samples the rollouts; its states feed the Q-model)",
                      required=True, metavar="DIR")
    out: str = opt("runs/latent-q", help="output Q-model directory (+ rollouts.jsonl, q_result.json, metrics.jsonl)")
    reward: str = opt("", help="reward SPEC scoring sampled rollouts (e.g. sentiment, contains_words:good,great)")
    prompts: str = opt("builtin:neutral", help="prompt SPEC to sample rollouts from")
    prompt_column: str = opt("prompt", help="prompt column of a .jsonl / dataset prompt file")
    prompts_held_out_fraction: float = opt(0.0, lo=0.0, hi=0.9, help="hold out this share of the prompts (seeded as `reinlm train`: "
                                                     "the same split) and sample only from the rest")
    rollouts: str = opt("", help="JSONL of scored rollouts to train on instead of sampling: prompt, reward, "
                                 "response_ids or completion, and optionally actions (else the IDM labels them)")
    num_prompts: int = opt(64, lo=1, help="prompts to sample rollouts from (the first N of the training prompts)")
    samples_per_prompt: int = opt(8, lo=1, help="rollouts per prompt")
    max_new_tokens: int = opt(24, lo=1, help="tokens per rollout")
    temperature: float = opt(1.0, lo=0.0, lo_open=True, help="temperature of the policy's actions while sampling rollouts")
    gamma: float = opt(0.99, lo=0.0, hi=1.0, help="discount of the double-DQN target")
    epochs: float = opt(20.0, lo=0.0, lo_open=True, help="passes over the rollouts")
    batch_size: int = opt(32, lo=1, help="rollouts per optimisation step")
    lr: float = opt(1e-4, lo=0.0, lo_open=True, help="AdamW learning rate")
    target_every: int = opt(50, lo=1, help="copy the online network into the target network every N steps (CoLA: 50)")
    held_out_fraction: float = opt(0.1, lo=0.0, hi=0.5, help="share of the rollouts held out for the TD loss / correlation figures")
    init_from_policy: bool = opt(True, help="start from the policy's blocks (zero output layer); false = random init")
    seed: int = opt(0, help="random seed")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    threads: int = opt(0, lo=0, help="torch CPU threads (0 = leave as is)")
    progress: bool = opt(True, help="show progress bars")



@torch.no_grad()
def evaluate_q(qnet: QModel, target: nn.Module, rollouts: list[Rollout], gamma: float, batch_size: int = 64) -> dict:
    """TD loss of ``rollouts`` and the Pearson correlation of Q(s_t, a_t) with the final reward at the first and
    last step (how well the Q-model predicts the outcome early and late)."""
    if not rollouts:
        return {}
    tot, n, first, last, rew = 0.0, 0, [], [], []
    dev = next(qnet.parameters()).device
    for i in range(0, len(rollouts), batch_size):
        chunk = rollouts[i:i + batch_size]
        h, hmask, index, actions, rewards, mask = collate(chunk, dev)
        q, qt = q_at_states(qnet, h, hmask, index), q_at_states(target, h, hmask, index)
        loss, _ = double_dqn_loss(q, qt, actions, rewards, mask, gamma)
        m = int(mask.sum())
        tot, n = tot + float(loss) * m, n + m
        q_sa = q[:, :-1].gather(-1, actions[..., None]).squeeze(-1)  # (B, R)
        lasts = mask.long().cumsum(-1).argmax(-1)
        first += q_sa[:, 0].tolist()
        last += q_sa[torch.arange(len(chunk)), lasts].tolist()
        rew += [r.reward for r in chunk]

    def corr(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else None  # undefined

    return {"td_loss": tot / max(n, 1), "corr_first_step": corr(first, rew), "corr_last_step": corr(last, rew),
            "rollouts": len(rollouts), "reward_mean": float(np.mean(rew))}


def fit_q(qnet: QModel, rollouts: list[Rollout], cfg: QTrainConfig, metrics_path: Path | None = None) -> nn.Module:
    """Double-DQN over ``rollouts``; returns the final target network."""
    dev = next(qnet.parameters()).device
    target = copy.deepcopy(qnet).eval().requires_grad_(False)
    opt_ = torch.optim.AdamW(qnet.parameters(), lr=cfg.lr, weight_decay=0.0)
    total = int(math.ceil(cfg.epochs * len(rollouts) / cfg.batch_size))
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(len(rollouts)) for _ in range(int(math.ceil(cfg.epochs)) + 1)])
    bar = tqdm(total=total, desc="double DQN", unit="step", disable=not cfg.progress)
    qnet.train()
    for s in range(total):
        chunk = [rollouts[i] for i in order[s * cfg.batch_size:(s + 1) * cfg.batch_size]]
        h, hmask, index, actions, rewards, mask = collate(chunk, dev)
        q = q_at_states(qnet, h, hmask, index)
        with torch.no_grad():
            qt = q_at_states(target, h, hmask, index)
        loss, stats = double_dqn_loss(q, qt, actions, rewards, mask, cfg.gamma)
        opt_.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(qnet.parameters(), 1.0)
        opt_.step()
        if (s + 1) % cfg.target_every == 0:
            target.load_state_dict(qnet.state_dict())
        bar.update(1)
        bar.set_postfix(td=f"{stats['loss/td']:.4f}")
        if metrics_path is not None and (s % 10 == 0 or s == total - 1):
            append_jsonl(metrics_path, {"step": s, **stats})
    bar.close()
    qnet.eval()
    return target


def train_on_rollouts(lam, rollouts: list[Rollout], cfg: QTrainConfig, metrics_path: Path | None = None
                      ) -> tuple[QModel, dict]:
    """Hold out ``cfg.held_out_fraction`` of the scored ``rollouts`` (seeded), fit a Q-model (from ``lam``'s policy
    with ``cfg.init_from_policy``) on the rest; returns the Q-model and ``{"rollouts", "gamma", "held_out_before",
    "held_out_after", "train_after"}`` (TD loss and reward correlations, :func:`evaluate_q`)."""
    order = np.random.default_rng(cfg.seed).permutation(len(rollouts))
    n_held = int(round(cfg.held_out_fraction * len(rollouts))) if len(rollouts) > 1 else 0
    held = [rollouts[i] for i in order[:n_held]]
    train = [rollouts[i] for i in order[n_held:]]
    qnet = QModel.from_policy(lam, cfg.gamma, str(cfg.latent), cfg.init_from_policy)
    before = evaluate_q(qnet, qnet, held, cfg.gamma)
    target = fit_q(qnet, train, cfg, metrics_path)
    return qnet, {"rollouts": {"train": len(train), "held_out": len(held)}, "gamma": cfg.gamma,
                  "held_out_before": before, "held_out_after": evaluate_q(qnet, target, held, cfg.gamma),
                  "train_after": evaluate_q(qnet, target, train[:256], cfg.gamma)}


def score_rollouts(reward_set, rollouts: list[Rollout], rows: list[dict], prompts: list[str], columns: dict) -> None:
    """Score sampled rollouts in place (``Rollout.reward`` and ``row["reward"]``); ``columns``: the prompt set's
    dataset columns, one value per prompt of ``prompts``."""
    by_prompt = {p: i for i, p in enumerate(prompts)}
    cols = {k: [v[by_prompt[r["prompt"]]] for r in rows] for k, v in columns.items()}
    scores = reward_set.score([r["prompt"] for r in rows], [r["completion"] for r in rows], cols)
    for r, row, s in zip(rollouts, rows, scores.total.tolist()):
        r.reward = float(s)
        row["reward"] = float(s)
