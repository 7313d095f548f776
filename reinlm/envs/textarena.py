"""TextArena games (``textarena:ENV_ID``) in process, as text environments.

TextArena (``pip install textarena``; the ``envs`` extra) keeps each player's observation as a growing log;
the adapter hands the model only what is new since its last turn. The episode's reward is the game's reward
for the trained seat at the end (``env.close()``), and TextArena's ``invalid_move`` counts in
``env/invalid_move_frac``.

Two-player games need an opponent (``--opponent``): ``random`` plays a random bracketed move (``[Accept]``,
``[Deny]``, ``[N]`` or a word), ``frozen`` a frozen copy of the starting policy, or a named model (the trainer
supplies it as a callable ``fn(observation) -> text``; a reply without a bracketed move is replaced by a random one). The
trained seat alternates with the episode seed: even seeds play seat 0, odd seeds seat 1 (tested).
"""

from __future__ import annotations

import random
import re
from typing import Callable

from reinlm.errors import ReinlmError

__all__ = ["TextArenaEnv", "probe_players", "random_move"]

_WORDS = ("yes", "no", "hello", "apple", "river", "stone", "green")


_BRACKETED = re.compile(r"\[[^\[\]\n]{1,40}\]")


def random_move(rng: random.Random, observation: str = "") -> str:
    """A uniformly random legal-looking TextArena move: one of the bracketed moves the observation mentions
    (games list their moves as ``[0]``, ``[Accept]``, ...; ``[GAME]``/``[Player ...]`` tags excluded), else a
    generic one."""
    seen = [m for m in dict.fromkeys(_BRACKETED.findall(observation))
            if not m.startswith(("[GAME", "[Player", "[PLAYER"))]
    return rng.choice(seen or ["[Accept]", "[Deny]", f"[{rng.randint(0, 9)}]", f"[{rng.choice(_WORDS)}]"])


def _import():
    try:
        import textarena
    except ImportError as e:
        raise ReinlmError("environment: textarena:... needs the textarena package: pip install textarena (or "
                          "`pip install reinlm[envs]`; `make install` includes it).") from e
    return textarena


def probe_players(env_id: str) -> int:
    """The number of players ``env_id`` takes (1 or 2); ``ReinlmError`` for an unknown id or a game that cannot
    start here (e.g. one that needs nltk corpora this machine cannot fetch), with the reason."""
    ta = _import()
    registry = ta.envs.registration.ENV_REGISTRY
    if env_id not in registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(registry), n=3)
        raise ReinlmError(f"environment: textarena:{env_id!r} is not a TextArena game"
                          + (f"; did you mean {', '.join(close)}?" if close else "; `reinlm env list` lists some.")
                          )
    last = None
    for n in (1, 2):
        try:
            env = ta.make(env_id)
            env.reset(num_players=n, seed=0)
            return n
        except Exception as e:  # noqa: BLE001 (a wrong player count, or missing data)
            last = e
            if "player" not in str(e).lower():
                break
    raise ReinlmError(f"environment: textarena:{env_id} cannot start on this machine: {type(last).__name__}: "
                      f"{str(last)[:300]} (games that download data, e.g. nltk corpora, need network access "
                      "this machine does not have).")


class TextArenaEnv:
    """One TextArena game as a text environment (module docstring).

    Args:
        env_id: the TextArena id, e.g. ``GuessTheNumber-v0``.
        players: 1 or 2 (:func:`probe_players`).
        opponent: for two-player games, ``fn(observation) -> move`` or ``"random"``.
    """

    def __init__(self, env_id: str, players: int = 1, opponent: Callable[[str], str] | str | None = None):
        self.env_id, self.players = env_id, players
        self.opponent = opponent
        self.env = _import().make(env_id)

    def _new_obs(self, pid: int, obs) -> str:
        text = obs if isinstance(obs, str) else str(obs)
        self._full[pid], self._pid_now = text, pid
        seen = self._seen.get(pid, "")
        self._seen[pid] = text
        return text[len(seen):] if seen and text.startswith(seen) else text

    def _opponent_move(self, obs: str) -> str:
        full = self._full.get(self._pid_now, obs)
        if self.opponent is None or self.opponent == "random":
            return random_move(self._rng, full)
        move = self.opponent(obs)
        # a frozen policy's reply without a bracketed move would forfeit the game before the trained seat plays:
        # it is replaced by a random legal-looking move (counted nowhere: the opponent never trains)
        return move if _BRACKETED.search(move or "") else random_move(self._rng, full)

    def _advance(self) -> tuple[bool, str]:
        """Play the opponent until it is the trained seat's turn (or the game ends) -> (done, observation)."""
        while True:
            pid, obs = self.env.get_observation()
            if pid == self.seat:
                return False, self._new_obs(pid, obs)
            done, _ = self.env.step(action=self._opponent_move(self._new_obs(pid, obs)))
            if done:
                return True, ""

    def reset(self, seed: int = 0, **row) -> str:
        self._rng = random.Random(seed)
        self._seen: dict[int, str] = {}
        self._full: dict[int, str] = {}
        self._pid_now = 0
        self.env.reset(num_players=self.players, seed=seed)
        self.seat = seed % self.players
        done, obs = self._advance()
        if done:
            raise RuntimeError("the game ended before the trained seat's first turn")
        return obs

    def step(self, text: str):
        done, _ = self.env.step(action=text)
        obs = ""
        if not done:
            done, obs = self._advance()
        if not done:
            return obs, 0.0, False, {}
        rewards, info = self.env.close()
        mine = (info or {}).get(self.seat, {}) if isinstance(info, dict) else {}
        return obs, float((rewards or {}).get(self.seat, 0.0)), True, {"invalid_move": bool(mine.get("invalid_move"))}
