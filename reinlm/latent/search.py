"""Monte-Carlo tree search over latent actions, guided by the policy and a Q-model (CoLA's search).

CoLA (LAMDA-RL/CoLA, ``postrain/``; docs/latent.md "Search over latent actions") searches the space of
latent actions instead of tokens: a node is a piece of text, its children start with the policy's most
likely actions not yet tried there, and a node's text is extended greedily as long as the Q-model is sure
of the next step (its temporal-difference error stays small), so the tree branches where the outcome is
uncertain. Each round:

1. **select** a node that still has untried actions, by ``V + c_puct * pi * sqrt(N_parent) / (N + 1)``
   (V = mean backed-up reward, pi = the node's prior: the mean policy probability of its actions,
   N = visits). ``frontier`` (CoLA's code) scores every such node of the tree and takes the best;
   ``descent`` walks down from the root through the best-scoring children (AlphaZero's PUCT walk);
2. **expand** it: its missing children (``branching_root`` at the root, ``branching`` below) take the
   top untried actions; each child's text then grows with the policy's greedy action while
   ``(Q(s, a) - gamma * max_a' Q(s', a'))^2 < td_threshold`` (without a Q-model: ``segment_tokens`` tokens);
3. **evaluate** each new child: a rollout (actions sampled from the policy, or greedy) completes its text to
   EOS or ``max_depth`` tokens, and the reward scores the completed text;
4. **back up** that reward: every node on the path gains a visit and the reward (V = mean).

The answer is the best-scoring completed text found (a terminal node or the end of a leaf's rollout), with
its actions. The **budget** counts world-model token forwards (one per token generated for one text,
rollouts included): an expansion starts only when its worst case fits in what is left, so the search never
spends more. Best-of-N sampling with the policy at the same spend is the baseline (:func:`best_of_n`).

Decoding: both run on the shared decode engine (:func:`reinlm.rollout.decode.decode`): an expansion is one
prefill of the node's text and one batch row per new child (:class:`ExpansionStepper`, the latent family's own
stepper, ``lam.make_stepper``, with the expansion's action rule, checking the Q-model's TD error as it feeds each
token); best-of-N uses the family's ``generate``. Both latent families search: over a frozen backbone the policy
and the Q-model read the backbone's states, on BWArea the token ids (its parts own their embeddings).
Legend: b = rows (children being grown), T = positions, H = hidden, K = actions, V = vocabulary.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import torch

from reinlm.config.schema import Config, opt
from reinlm.errors import ConfigError, ReinlmError
from reinlm.rollout.decode import decode
from reinlm.rollout.sampling import Chooser


@dataclass
class SearchConfig(Config):
    """Every ``reinlm search`` flag (defaults: CoLA's, except ``max_depth`` / ``budget`` sized for a CPU)."""

    latent: str = opt("", help="latent model directory (from `reinlm latent pretrain`)", required=True, metavar="DIR")
    reward: str = opt("", help="reward SPEC that scores completed texts (e.g. sentiment, contains_words:good); "
                      "required without --environment", metavar="SPEC")
    environment: str = opt("", help="search across the turns of this environment's episodes instead of one text "
                           "(builtin:NAME, path.py:Class, ...; its return is the reward; docs/environments.md)",
                           metavar="SPEC")
    episodes: int = opt(1, lo=1, help="with --environment: episodes to search (environment seeds --seed, --seed + 1, ...)")
    max_turns: int = opt(2, lo=1, help="with --environment: model turns per episode")
    turn_tokens: int = opt(16, lo=1, help="with --environment: tokens the model may write in one turn")
    q: str = opt("", help="Q-model directory from `reinlm latent train-q` (without one, nodes are segment_tokens long)")
    prompt: str = opt("", help="the prompt (also the positional argument)", flag=False)
    prompts: str = opt("", help="prompt SPEC: search each of these prompts instead of one (e.g. builtin:reviews)")
    prompt_column: str = opt("prompt", help="prompt column of a .jsonl / dataset prompt file")
    held_out_fraction: float = opt(0.0, lo=0.0, hi=0.9, help="with --prompts: search only the held-out split (seeded like "
                                             "`reinlm train` and `reinlm latent train-q`: the same split)")
    num_prompts: int = opt(0, lo=0, help="with --prompts: search at most this many (0 = all)")
    budget: int = opt(2048, lo=0, help="most world-model token forwards per prompt (0 = no limit; else at "
                                                 "least --max-depth, one rollout's worst case)")
    c_puct: float = opt(0.7, lo=0.0, help="exploration weight of the selection score (CoLA: 0.7)")
    branching_root: int = opt(5, lo=1, help="children of the root (CoLA: 5)")
    branching: int = opt(4, lo=1, help="children of every other node (CoLA: 4)")
    rounds: int = opt(32, lo=1, help="selection/expansion rounds (CoLA: 32)")
    max_depth: int = opt(32, lo=1, help="most response tokens of any text (CoLA: 64)")
    td_threshold: float = opt(0.01, lo=0.0, help="extend a node greedily while the squared TD error stays below this "
                                         "(CoLA: 0.01)")
    max_segment: int = opt(16, lo=1, help="most tokens a node's greedy extension adds")
    segment_tokens: int = opt(4, lo=1, help="tokens per node when there is no Q-model")
    selection: Literal["frontier", "descent"] = opt("frontier", help="frontier: the best-scoring expandable node "
                                                                     "of the whole tree (CoLA's code); descent: "
                                                                     "walk down through the best children")
    rollout_actions: Literal["sample", "greedy"] = opt("sample", help="actions of the leaf rollouts: sampled from "
                                                                      "the policy at --temperature, or greedy")
    temperature: float = opt(1.0, lo=0.0, lo_open=True, help="temperature of the policy's sampled actions (rollouts and best-of-N)")
    compare: Literal["none", "best-of-n"] = opt("none", help="best-of-n: also run best-of-N sampling with the "
                                                             "policy at the same world-model token forwards")
    seed: int = opt(0, help="random seed")
    device: str = opt("cpu", help="cpu, cuda, cuda:N or auto")
    threads: int = opt(0, lo=0, help="torch CPU threads (0 = leave as is)")

    def __post_init__(self):
        super().__post_init__()
        if not self.reward and not self.environment:
            raise ConfigError("reward: got none; allowed: a reward SPEC (--reward), or --environment SPEC (the "
                              "episode's return is the reward).", field="reward")
        if 0 < self.budget < self.max_depth:  # the first expansion alone may cost max_depth: it would never start
            raise ConfigError(f"budget: got {self.budget}, fewer world-model forwards than one rollout can cost "
                              f"(max_depth = {self.max_depth}); allowed: 0 (no limit) or at least {self.max_depth}.")


# ---------------------------------------------------------------------------------------------- the tree

@dataclass(eq=False)
class Node:
    """A node: the response ``tokens`` / ``actions`` from the root to its end, its prior ``prior`` (mean policy
    probability of the actions it added), visit count and summed backed-up reward."""

    tokens: list[int]
    actions: list[int]
    prior: float
    width: int  # how many children it gets
    parent: "Node | None" = None
    terminal: bool = False  # its text ended (EOS) or reached max_depth
    children: list["Node"] = field(default_factory=list)
    tried: set[int] = field(default_factory=set)  # first actions of its children
    visits: int = 0
    value_sum: float = 0.0

    @property
    def value(self) -> float:
        """V: mean backed-up reward (0 before any visit)."""
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def depth(self) -> int:
        return len(self.tokens)

    @property
    def expandable(self) -> bool:
        return not self.terminal and len(self.children) < self.width


def puct_score(value: float, prior: float, parent_visits: int, visits: int, c_puct: float) -> float:
    """CoLA's selection score V + c_puct * pi * sqrt(N_parent) / (N + 1)."""
    return value + c_puct * prior * math.sqrt(parent_visits) / (visits + 1)


def _score(node: Node, c_puct: float) -> float:
    parent_visits = node.parent.visits if node.parent is not None else node.visits
    return puct_score(node.value, node.prior, parent_visits, node.visits, c_puct)


def select_frontier(root: Node, c_puct: float) -> Node | None:
    """CoLA's selection: every expandable node of the tree (breadth-first order) scored with its parent's
    visits; the best one (the first on ties), or None when nothing is left to expand."""
    best, best_s = None, -math.inf
    queue = deque([root])
    while queue:
        node = queue.popleft()
        if node.expandable:
            s = _score(node, c_puct)
            if s > best_s:
                best, best_s = node, s
        queue.extend(node.children)
    return best


def _open(node: Node) -> bool:
    """Whether the subtree under ``node`` still has an expandable node."""
    return node.expandable or (not node.terminal and any(_open(c) for c in node.children))


def select_descent(root: Node, c_puct: float) -> Node | None:
    """PUCT walk: from the root, while the node is fully expanded, go to the best-scoring child whose subtree
    can still grow; return the first node with untried actions (None when the tree is exhausted)."""
    if not _open(root):
        return None
    node = root
    while not node.expandable:
        node = max((c for c in node.children if _open(c)), key=lambda c: _score(c, c_puct))
    return node


SELECTORS = {"frontier": select_frontier, "descent": select_descent}


def backup(leaf: Node, reward: float) -> None:
    """Add one visit and ``reward`` to ``leaf`` and every ancestor (V becomes the mean reward below)."""
    node = leaf
    while node is not None:
        node.visits += 1
        node.value_sum += reward
        node = node.parent


def tree_nodes(root: Node) -> list[Node]:
    out, queue = [], deque([root])
    while queue:
        n = queue.popleft()
        out.append(n)
        queue.extend(n.children)
    return out


@dataclass
class Budget:
    """World-model token forwards allowed (``limit`` 0 = no limit) and spent."""

    limit: int
    spent: int = 0

    @property
    def remaining(self) -> float:
        return math.inf if self.limit == 0 else self.limit - self.spent

    def charge(self, n: int) -> None:
        if self.limit and self.spent + n > self.limit:
            raise AssertionError(f"search budget overrun: {self.spent} + {n} > {self.limit}")  # a bug, never user input
        self.spent += n


@dataclass
class SearchResult:
    """What :meth:`LatentSearch.search` returns."""

    prompt: str
    text: str  # the best completed text (response only)
    actions: list[int]
    reward: float
    stats: dict  # tree statistics
    candidates: list[dict]  # every completed text: reward, text, node depth
    root: Node | None = None  # the tree

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "text": self.text, "actions": self.actions, "reward": self.reward,
                "stats": self.stats}


# ---------------------------------------------------------------------------------------------- one expansion

class ExpansionChooser:
    """The action rule of one expansion, given to the family's stepper as its action chooser: at step 0 row i
    takes ``first[i]``; later the policy's greedy action while its node is still growing (``boundary[i] == 0``),
    then ``rollout``'s action (sampled with the engine's uniforms, or greedy). It records the action's prior
    pi(a | x) at temperature 1 (``prob``, (b,)) and returns its log as the step's log-prob."""

    mode = "sample"  # the family's stepper runs the policy for it

    def __init__(self, first: torch.Tensor, rollout: Chooser, boundary: torch.Tensor):
        self.first, self.rollout, self.boundary = first, rollout, boundary
        self.t = 0  # the step being chosen (set by ExpansionStepper.choose)
        self.prob: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, u: torch.Tensor | None, rows: torch.Tensor, num_categories: int):
        logits = logits.float()  # (b, K)
        if self.t == 0:
            a = self.first[rows]
        else:
            rolled, _ = self.rollout(logits, u, rows, num_categories)
            a = torch.where(self.boundary[rows.cpu()].to(rows.device) == 0, logits.argmax(-1), rolled)
        self.prob = logits.softmax(-1).gather(-1, a[:, None]).squeeze(-1)  # (b,) prior of the step
        return a, self.prob.clamp_min(1e-12).log()


class ExpansionStepper:
    """A stepper of the decode engine for one expansion, over the latent family's own stepper
    (``lam.make_stepper``: backbone states for the frozen-backbone family, token ids for BWArea): row i takes
    action ``first[i]``, then the policy's greedy action while its node is still growing, then rollout actions
    (:class:`ExpansionChooser`); tokens are the world model's argmax. A node stops growing at the first step
    whose squared TD error (Q(s, a) - gamma max_a' Q(s', a'))^2 reaches ``td_threshold`` (checked when the
    step's token is fed, from what the policy reads: ``policy_inputs``), or after ``max_segment`` tokens;
    without a Q-model after ``segment_tokens``. ``boundary[i]``: the node's length in new tokens (0 while
    still growing). ``history`` (1, T-1): the actions that wrote the node's text (the family's stepper merges
    them where its world model attends to past actions: BWArea)."""

    records_states = True
    n_streams = 2

    def __init__(self, lam, first: torch.Tensor, qmodel, gamma: float, cfg: SearchConfig,
                 history: torch.Tensor | None = None):
        rollout = Chooser("greedy") if cfg.rollout_actions == "greedy" else Chooser("sample", cfg.temperature)
        k = first.shape[0]
        self.boundary = torch.zeros(k, dtype=torch.long)
        self.chooser = ExpansionChooser(first, rollout, self.boundary)
        self.inner = lam.make_stepper(self.chooser, Chooser("greedy", record_logprob=False), history)
        self.q, self.gamma, self.cfg = qmodel, gamma, cfg
        self.q_state = None  # (k, K) Q(s_t, .) of each growing row's current state
        self.q_sa = torch.zeros(k)  # Q(s_t, a_t) of each row's last step

    def context(self):
        return getattr(self.inner, "context", contextlib.nullcontext)()

    def start(self, ids: torch.Tensor, mask: torch.Tensor, G: int, capacity: int) -> None:
        self.inner.start(ids, mask, G, capacity)
        self.P = ids.shape[1]
        if self.q is not None:  # all rows share the node's state
            rows = torch.arange(self.boundary.shape[0], device=ids.device)
            self.q_state = self.q(self.inner.policy_inputs(rows, self.P))[:, -1].cpu()  # (k, K)

    def choose(self, t: int, rows: torch.Tensor, u: torch.Tensor | None):
        self.chooser.t = t
        nxt, lp, extras = self.inner.choose(t, rows, u)
        a = extras["action"]
        if self.q is not None:
            r = rows.cpu()
            self.q_sa[r] = self.q_state[r].gather(-1, a.cpu()[:, None]).squeeze(-1)  # Q(s_t, a_t)
        return nxt, lp, {"action": a, "prob": self.chooser.prob}

    def feed(self, tok: torch.Tensor, rows: torch.Tensor, t: int) -> None:
        self.inner.feed(tok, rows, t)
        cfg, r = self.cfg, rows.cpu()
        growing = self.boundary[r] == 0
        if not bool(growing.any()):
            return
        if self.q is not None:
            g = growing.nonzero().squeeze(1)
            q_next = self.q(self.inner.policy_inputs(rows[g.to(rows.device)], self.P + t + 1))[:, -1].cpu()
            self.q_state[r[g]] = q_next  # Q(s_{t+1}, .)
            td = (self.q_sa[r[g]] - self.gamma * q_next.max(-1).values) ** 2
            stop = torch.zeros_like(growing)
            stop[g] = (td >= cfg.td_threshold) | (t + 1 >= cfg.max_segment)
        else:
            stop = torch.full_like(growing, t + 1 >= cfg.segment_tokens)
        self.boundary[r[growing & stop]] = t + 1

    def keep(self, idx: torch.Tensor) -> None:
        self.inner.keep(idx)

    def finish(self, R: int) -> dict[str, torch.Tensor]:
        return self.inner.finish(R)


# ---------------------------------------------------------------------------------------------- the search

class LatentSearch:
    """MCTS over a latent model's actions; ``search(prompt)`` -> :class:`SearchResult`."""

    def __init__(self, lam, reward_set, cfg: SearchConfig, qmodel=None):
        self.lam, self.reward_set, self.cfg, self.q = lam, reward_set, cfg, qmodel
        self.gamma = qmodel.gamma if qmodel is not None else 1.0
        tok = lam.tokenizer
        self.eos = tok.eos_token_id if tok is not None else None
        self._prompt_acts: list[int] | None = None

    @torch.no_grad()
    def _expand(self, node: Node, prompt_ids: list[int], k: int, budget: Budget, gen: torch.Generator):
        """Grow ``k`` new children of ``node`` on the decode engine (one row each, from one prefill of the node's
        text) and roll each out to the end.

        Returns ``[(child, rollout_tokens, rollout_actions)]`` (the rollout continues the child's text)."""
        lam, cfg = self.lam, self.cfg
        dev = lam.device
        ids = torch.tensor([prompt_ids + node.tokens], device=dev)  # (1, T)
        probs0 = lam.policy_logits_from_hidden(lam.head_input(ids))[0, -1].float().softmax(-1)  # (K,)
        order = [a for a in probs0.argsort(descending=True).tolist() if a not in node.tried][:k]
        k = len(order)
        if k == 0:
            return []
        S = cfg.max_depth - node.depth
        history = torch.tensor([self._prompt_actions(ids[:, : len(prompt_ids)]) + node.actions], device=dev)
        stepper = ExpansionStepper(lam, torch.tensor(order, device=dev), self.q, self.gamma, cfg, history)
        res = decode(stepper, ids, torch.ones_like(ids), samples_per_prompt=k, max_new_tokens=S,
                     stop_ids=[self.eos] if self.eos is not None else None, pad_id=0, generator=[gen])
        lengths = res.lengths.tolist()
        budget.charge(sum(lengths))  # one world-model forward per generated token (fits: k * S <= remaining)
        out = []
        for i in range(k):
            L = lengths[i]
            toks, acts = res.tokens[i, :L].tolist(), res.extras["action"][i, :L].tolist()
            probs = res.extras["prob"][i, :L].tolist()
            n = int(stepper.boundary[i]) if int(stepper.boundary[i]) > 0 else L  # still growing when it ended
            child = Node(tokens=node.tokens + toks[:n], actions=node.actions + acts[:n], prior=sum(probs[:n]) / n,
                         width=cfg.branching, parent=node, terminal=n == L)
            node.children.append(child)
            node.tried.add(acts[0])
            out.append((child, node.tokens + toks, node.actions + acts))
        return out

    def _prompt_actions(self, prompt: torch.Tensor) -> list[int]:
        """The IDM's argmax actions of the prompt's steps 0..P-2 (what generation merges there); computed once."""
        if self._prompt_acts is None:
            lam = self.lam
            self._prompt_acts = lam.idm_logits_from_hidden(lam.head_input(prompt))[0].argmax(-1).tolist()
        return self._prompt_acts

    def _completion(self, tokens: list[int]) -> str:
        return self.lam.tokenizer.decode(tokens, skip_special_tokens=True)

    @torch.no_grad()
    def search(self, prompt: str, columns: dict | None = None) -> SearchResult:
        """Run the search on one prompt (``columns``: the prompt's extra dataset columns for the reward)."""
        cfg, lam = self.cfg, self.lam
        t0 = time.time()
        prompt_ids = lam.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            raise ReinlmError("prompt: got an empty prompt; allowed: a prompt of at least one token.")
        gen = torch.Generator(device=lam.device).manual_seed(cfg.seed)
        self._prompt_acts = None
        budget = Budget(cfg.budget)
        root = Node(tokens=[], actions=[], prior=1.0, width=cfg.branching_root)
        select = SELECTORS[cfg.selection]
        candidates: list[dict] = []
        rounds = 0
        stop = "rounds"
        for _ in range(cfg.rounds):
            node = select(root, cfg.c_puct)
            if node is None:
                stop = "tree exhausted"
                break
            k = node.width - len(node.children)
            worst = cfg.max_depth - node.depth  # forwards one child can cost, rollout included
            k = int(min(k, budget.remaining // worst))
            if k == 0:
                stop = "budget"
                break
            grown = self._expand(node, prompt_ids, k, budget, gen)
            rounds += 1
            if not grown:
                continue
            texts = [self._completion(toks) for _, toks, _ in grown]
            cols = {c: [v[0]] * len(grown) for c, v in (columns or {}).items()}
            scores = self.reward_set.score([prompt] * len(grown), texts, cols).total.tolist()
            for (child, toks, acts), text, s in zip(grown, texts, scores):
                backup(child, float(s))
                candidates.append({"reward": float(s), "text": text, "actions": acts, "node_depth": child.depth,
                                   "tokens": len(toks)})
        nodes = tree_nodes(root)
        best = max(candidates, key=lambda c: c["reward"]) if candidates else {"reward": float("nan"), "text": "",
                                                                               "actions": []}
        depths = [n.depth for n in nodes[1:]]
        segs = [n.depth - n.parent.depth for n in nodes[1:]]
        stats = {"rounds": rounds, "stopped_by": stop, "nodes": len(nodes), "rollouts": len(candidates),
                 "wm_forwards": budget.spent, "budget": cfg.budget, "max_node_depth": max(depths, default=0),
                 "mean_segment_tokens": sum(segs) / len(segs) if segs else 0.0,
                 "terminal_nodes": sum(n.terminal for n in nodes),
                 "mean_rollout_reward": sum(c["reward"] for c in candidates) / max(len(candidates), 1),
                 "root_value": root.value, "q_model": self.q is not None, "seconds": round(time.time() - t0, 2)}
        return SearchResult(prompt, best["text"], list(best["actions"]), float(best["reward"]), stats, candidates, root)


# ---------------------------------------------------------------------------------------------- the baseline

@torch.no_grad()
def best_of_n(lam, reward_set, prompt: str, forwards: int, max_new_tokens: int, temperature: float = 1.0,
              seed: int = 0, columns: dict | None = None, chunk: int = 32) -> dict:
    """Best-of-N with the policy (actions sampled at ``temperature``, greedy world-model tokens) spending at most
    ``forwards`` world-model token forwards: samples are drawn in chunks while a chunk's worst case
    (rows x ``max_new_tokens``) still fits, so the spend is within one sample's length of ``forwards``:
    ``forwards - max_new_tokens < spend <= forwards``. Fewer ``forwards`` than ``max_new_tokens`` is refused
    (not one sample would fit)."""
    if forwards < max_new_tokens:
        raise ReinlmError(f"best-of-N: got {forwards} world-model forwards, fewer than one sample can cost "
                          f"(max_new_tokens = {max_new_tokens}); allowed: at least {max_new_tokens}.")
    tok = lam.tokenizer
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    ids, mask = enc["input_ids"].to(lam.device), enc["attention_mask"].to(lam.device)
    lam.set_action_sampling(greedy=False, tau=temperature, top_k=0, top_p=1.0)
    spent, texts, actions, c = 0, [], [], 0
    while True:
        n = min(chunk, (forwards - spent) // max_new_tokens)
        if n <= 0:
            break
        gens = [torch.Generator(device=lam.device).manual_seed(seed * 7919 + c)]
        g = lam.generate(ids, mask, max_new_tokens=max_new_tokens, generator=gens, return_dict=True,
                         num_return_sequences=n)
        rmask = g.response_mask
        spent += int(rmask.sum())  # one world-model forward per generated token
        for b in range(n):
            R = int(rmask[b].sum())
            texts.append(tok.decode(g.response_ids[b, :R].tolist(), skip_special_tokens=True))
            actions.append(g.actions[b, :R].tolist())
        c += 1
    if not texts:
        return {"n": 0, "wm_forwards": 0, "reward": float("nan"), "text": "", "actions": [], "mean_reward": float("nan")}
    cols = {k: [v[0]] * len(texts) for k, v in (columns or {}).items()}
    scores = reward_set.score([prompt] * len(texts), texts, cols).total.tolist()
    i = max(range(len(scores)), key=lambda j: scores[j])
    return {"n": len(texts), "wm_forwards": spent, "reward": float(scores[i]), "text": texts[i], "actions": actions[i],
            "mean_reward": sum(scores) / len(scores)}


# ---------------------------------------------------------------------------------------------- many prompts

def search_prompts(lam, reward_set, prompts: list, columns: list[dict], cfg: SearchConfig, qmodel=None) -> dict:
    """Search every prompt (and run best-of-N beside it at the same spend with ``cfg.compare == "best-of-n"``);
    returns the report: ``{"settings", "prompts": [{"search", "best_of_n"?}], "summary"?}``. ``columns[i]``: the
    dataset columns of prompt i (``{column: [value]}``) for the reward."""
    searcher = LatentSearch(lam, reward_set, cfg, qmodel)
    rows = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), desc="search", unit="prompt", disable=len(prompts) < 2)
    for i, (p, c) in enumerate(zip(prompts, columns)):
        res = searcher.search(p, c)
        bar.update(1)
        bar.set_postfix(reward=f"{res.reward:.3f}", forwards=res.stats["wm_forwards"])
        row = {"search": res.to_dict()}
        if cfg.compare == "best-of-n":
            t = time.time()
            spent = res.stats["wm_forwards"]  # < max_depth only when every rollout ended early: shorter samples
            row["best_of_n"] = best_of_n(lam, reward_set, p, spent, min(cfg.max_depth, spent), cfg.temperature,
                                         cfg.seed + i, c)
            row["best_of_n"]["seconds"] = round(time.time() - t, 2)
        rows.append(row)
    bar.close()
    report = {"settings": {k: getattr(cfg, k) for k in ("latent", "q", "reward", "budget", "c_puct", "branching_root",
                                                          "branching", "rounds", "max_depth", "td_threshold",
                                                          "selection", "rollout_actions", "temperature", "seed")},
              "prompts": rows}
    if cfg.compare == "best-of-n":
        report["summary"] = compare_summary(rows)
    return report


def compare_summary(rows: list[dict]) -> dict:
    """Search vs best-of-N over the report's rows: mean best rewards, wins / ties / losses, mean spend and time."""
    s = [r["search"]["reward"] for r in rows]
    b = [r["best_of_n"]["reward"] for r in rows]
    return {
        "prompts": len(rows), "search_mean_best_reward": sum(s) / len(s), "best_of_n_mean_best_reward": sum(b) / len(b),
        "search_wins": sum(x > y for x, y in zip(s, b)), "ties": sum(x == y for x, y in zip(s, b)),
        "best_of_n_wins": sum(x < y for x, y in zip(s, b)),
        "search_wm_forwards_mean": sum(r["search"]["stats"]["wm_forwards"] for r in rows) / len(rows),
        "best_of_n_wm_forwards_mean": sum(r["best_of_n"]["wm_forwards"] for r in rows) / len(rows),
        "search_seconds_mean": sum(r["search"]["stats"]["seconds"] for r in rows) / len(rows),
        "best_of_n_seconds_mean": sum(r["best_of_n"]["seconds"] for r in rows) / len(rows),
    }
