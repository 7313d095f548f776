"""Tree search over latent actions across environment turns (``reinlm search --environment SPEC --latent DIR``).

The search of :mod:`reinlm.latent.search` (CoLA's: PUCT selection, children from the policy's most likely untried
actions, rollouts, backed-up means) over *turns* of an episode instead of segments of one text:

- a node is the episode after one more model turn: its transcript ids and its environment in that state (each
  child's environment is forked from its parent's: ``snapshot()`` / ``restore(state)`` on a fresh instance when the
  environment has them, else a deep copy, :func:`~reinlm.envs.protocol.fork_env`);
- **expand**: a node's new children start their turn with the policy's top untried actions at the end of the
  node's transcript (one per child), then take the policy's greedy action for the rest of the turn
  (:class:`~reinlm.latent.search.ExpansionStepper` on the decode engine, one row per child); each child's text
  goes to its environment (reward, observation, done);
- **evaluate**: a rollout plays each new child's episode to its end (actions sampled from the policy at
  ``--temperature``, :func:`~reinlm.latent.turns.latent_turn_stepper`); its return (the sum of every turn's
  reward from the first) is backed up the path;
- the answer is the best episode found (an episode that ended at a node, or a rollout's end): its turns and return.

**Budget**: world-model token forwards, one per model token generated (the turns of the children and of the
rollouts); an expansion starts only when its worst case (every child and its rollout writing every token the
episode has left) fits. Best-of-N (:func:`best_of_n_episodes`) plays whole episodes with the policy at the same
spend. Legend: k = children of one expansion.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from reinlm.envs.protocol import fork_env
from reinlm.envs.spec import EnvSpec
from reinlm.errors import ReinlmError
from reinlm.latent.search import SELECTORS, Budget, ExpansionStepper, Node, SearchConfig, backup, tree_nodes
from reinlm.latent.turns import latent_turn_stepper
from reinlm.rollout.multiturn import Episode, EpisodeLimits, TurnFormat, play_turns, start_episodes
from reinlm.rollout.sampling import SamplingConfig

__all__ = ["TurnNode", "EnvSearch", "best_of_n_episodes", "search_environment"]


@dataclass(eq=False)
class TurnNode(Node):
    """A :class:`~reinlm.latent.search.Node` whose text is one model turn; ``episode``: the episode after it."""

    episode: Episode | None = None


def fork_episode(ep: Episode, make: Any) -> Episode:
    """A copy of ``ep`` whose lists and environment are its own (the environment forked, :func:`fork_env`)."""
    out = copy.copy(ep)
    for f in ("ids", "model_mask", "logprobs", "turns", "rewards", "turn_actions", "texts", "observations"):
        setattr(out, f, list(getattr(ep, f)))
    out.env = fork_env(ep.env, make)
    return out


def episode_summary(ep: Episode) -> dict:
    """What the report keeps of an episode: its return, each turn's text and reward, its model tokens."""
    return {"return": ep.ret, "turns": list(ep.texts), "turn_rewards": list(ep.rewards),
            "model_tokens": ep.model_tokens, "valid": ep.valid}


class EnvSearch:
    """MCTS over a latent model's actions across the turns of one environment's episodes (module docstring).

    Args:
        lam: a latent model over a frozen backbone (eval mode).
        spec: the :class:`~reinlm.envs.spec.EnvSpec` (``spec.make({})`` builds an environment).
        cfg: the :class:`~reinlm.latent.search.SearchConfig` (rounds, branching, c_puct, budget, temperature,
            selection, seed; ``max_turns`` / ``turn_tokens`` limit an episode).
    """

    def __init__(self, lam: Any, spec: EnvSpec, cfg: SearchConfig):
        self.lam, self.spec, self.cfg = lam, spec, cfg
        self.tok = lam.tokenizer
        self.fmt = TurnFormat(self.tok)
        self.eos = lam.eos_token_ids()
        self.limits = EpisodeLimits(max_turns=cfg.max_turns, turn_tokens=cfg.turn_tokens,
                                    max_completion_length=cfg.max_turns * cfg.turn_tokens, env_timeout=None,
                                    context=lam.context_length)
        self.sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.turn_tokens)
        # a child's turn: its first action given, then the policy's greedy actions to the end of the turn
        self.turn_cfg = dataclasses.replace(cfg, segment_tokens=1, max_segment=1, q="")
        self._draws = 0

    def _make(self) -> Any:
        return self.spec.make({})

    def _gens(self, n: int) -> list[torch.Generator]:
        self._draws += 1
        return [torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self._draws * 101 + i) for i in range(n)]

    def _left(self, ep: Episode) -> int:
        """Most model tokens ``ep`` can still write (its remaining turns, each up to turn_tokens)."""
        return min((self.limits.max_turns - len(ep.turns)) * self.limits.turn_tokens,
                   self.limits.max_completion_length - ep.model_tokens)

    def start(self, seed: int) -> Episode:
        """The episode of environment seed ``seed`` after its reset (``ReinlmError`` when the reset failed)."""
        ep = start_episodes(self.fmt, [self._make()], [{}], [seed], 1, None)[0]
        if not ep.valid:
            raise ReinlmError(f"environment: {self.spec.spec}: reset failed: {ep.fault}")
        return ep

    @torch.no_grad()
    def _expand(self, node: TurnNode, k: int, budget: Budget) -> list[tuple[TurnNode, Episode]]:
        """``k`` new children of ``node`` (one turn each) and the rollout of each to its episode's end."""
        lam, ep0 = self.lam, node.episode
        assert ep0 is not None
        ids = torch.tensor([ep0.ids], device=lam.device)
        probs0 = lam.policy_logits_from_hidden(lam.head_input(ids))[0, -1].float().softmax(-1)  # (K,)
        order = [a for a in probs0.argsort(descending=True).tolist() if a not in node.tried][:k]
        if not order:
            return []
        kids = [fork_episode(ep0, self._make) for _ in order]
        first = torch.tensor(order, device=lam.device)
        before = sum(e.model_tokens for e in kids)
        play_turns(lam, self.tok, kids, self.sampling, self.limits, self._gens(len(kids)), self.fmt,
                   make_stepper=lambda: ExpansionStepper(lam, first, None, 1.0, self.turn_cfg), eos=self.eos, turns=1)
        ends = [fork_episode(e, self._make) if not e.done else e for e in kids]
        live = [e for e in ends if not e.done]
        play_turns(lam, self.tok, live, self.sampling, self.limits, self._gens(len(live)), self.fmt,
                   make_stepper=latent_turn_stepper(lam, self.cfg.temperature), eos=self.eos)
        budget.charge(sum(e.model_tokens for e in ends) - before)
        out = []
        for a, kid, end in zip(order, kids, ends):
            s, e = kid.turns[-1]
            probs = [math.exp(lp) for lp in kid.logprobs[s:e]]
            child = TurnNode(tokens=kid.ids[s:e], actions=kid.turn_actions[-1], prior=sum(probs) / max(len(probs), 1),
                             width=self.cfg.branching, parent=node, terminal=kid.done, episode=kid)
            node.children.append(child)
            node.tried.add(a)
            out.append((child, end))
        return out

    def search(self, seed: int) -> dict:
        """Search the episode of environment seed ``seed`` -> ``{"best": episode summary, "stats": ...}``."""
        cfg = self.cfg
        t0 = time.time()
        root = TurnNode(tokens=[], actions=[], prior=1.0, width=cfg.branching_root, episode=self.start(seed))
        budget, select = Budget(cfg.budget), SELECTORS[cfg.selection]
        best: Episode | None = None
        rollouts, rounds, stop = 0, 0, "rounds"
        for _ in range(cfg.rounds):
            node = select(root, cfg.c_puct)
            if node is None:
                stop = "tree exhausted"
                break
            assert isinstance(node, TurnNode) and node.episode is not None
            k = int(min(node.width - len(node.children), budget.remaining // max(self._left(node.episode), 1)))
            if k == 0:
                stop = "budget"
                break
            rounds += 1
            for child, end in self._expand(node, k, budget):
                value = end.ret if end.valid else float("-inf")
                backup(child, value)
                rollouts += 1
                if end.valid and (best is None or end.ret > best.ret):
                    best = end
        nodes = tree_nodes(root)
        stats = {"rounds": rounds, "stopped_by": stop, "nodes": len(nodes), "rollouts": rollouts,
                 "wm_forwards": budget.spent, "budget": cfg.budget,
                 "max_turn_depth": max((len(n.episode.turns) for n in nodes if isinstance(n, TurnNode) and n.episode),
                                       default=0),
                 "root_value": root.value, "seconds": round(time.time() - t0, 2)}
        return {"seed": seed, "best": episode_summary(best) if best is not None else None, "stats": stats}


@torch.no_grad()
def best_of_n_episodes(searcher: EnvSearch, seed: int, forwards: int, chunk: int = 8) -> dict:
    """Best-of-N: whole episodes of environment seed ``seed`` played by the policy (actions sampled at the
    temperature), in chunks while a chunk's worst case fits in ``forwards`` world-model token forwards; the best
    return. Spend: ``forwards - worst < spend <= forwards`` (worst = one episode's most model tokens)."""
    s = searcher
    worst = s.limits.max_completion_length
    spent, found, c = 0, [], 0
    while True:
        n = min(chunk, (forwards - spent) // worst)
        if n <= 0:
            break
        eps = [s.start(seed) for _ in range(n)]
        gens = [torch.Generator().manual_seed(s.cfg.seed * 7919 + c * 131 + i) for i in range(n)]
        play_turns(s.lam, s.tok, eps, s.sampling, s.limits, gens, s.fmt,
                   make_stepper=latent_turn_stepper(s.lam, s.cfg.temperature), eos=s.eos)
        spent += sum(e.model_tokens for e in eps)
        found += [e for e in eps if e.valid]
        c += 1
    best = max(found, key=lambda e: e.ret) if found else None
    return {"n": len(found), "wm_forwards": spent, "best": episode_summary(best) if best is not None else None,
            "mean_return": sum(e.ret for e in found) / len(found) if found else float("nan")}


def search_environment(lam: Any, spec: EnvSpec, cfg: SearchConfig) -> dict:
    """Search ``cfg.episodes`` episodes (environment seeds ``cfg.seed``, ``cfg.seed + 1``, ...), each beside
    best-of-N at the same spend with ``cfg.compare == "best-of-n"`` -> the report
    ``{"settings", "episodes": [{"search", "best_of_n"?}], "summary"?}``."""
    searcher = EnvSearch(lam, spec, cfg)
    rows = []
    for i in range(cfg.episodes):
        res = searcher.search(cfg.seed + i)
        row: dict = {"search": res}
        if cfg.compare == "best-of-n":
            t = time.time()
            row["best_of_n"] = best_of_n_episodes(searcher, cfg.seed + i, res["stats"]["wm_forwards"])
            row["best_of_n"]["seconds"] = round(time.time() - t, 2)
        rows.append(row)
    report: dict = {"settings": {k: getattr(cfg, k) for k in ("latent", "environment", "budget", "c_puct",
                                                               "branching_root", "branching", "rounds", "max_turns",
                                                               "turn_tokens", "selection", "temperature", "seed")},
                    "episodes": rows}
    if cfg.compare == "best-of-n":
        ret = [r["search"]["best"]["return"] if r["search"]["best"] else float("nan") for r in rows]
        bon = [r["best_of_n"]["best"]["return"] if r["best_of_n"]["best"] else float("nan") for r in rows]
        report["summary"] = {"episodes": len(rows), "search_mean_return": sum(ret) / len(ret),
                             "best_of_n_mean_return": sum(bon) / len(bon),
                             "search_wins": sum(x > y for x, y in zip(ret, bon)),
                             "ties": sum(x == y for x, y in zip(ret, bon)),
                             "best_of_n_wins": sum(x < y for x, y in zip(ret, bon)),
                             "search_wm_forwards_mean": sum(r["search"]["stats"]["wm_forwards"] for r in rows) / len(rows),
                             "best_of_n_wm_forwards_mean": sum(r["best_of_n"]["wm_forwards"] for r in rows) / len(rows)}
    return report
