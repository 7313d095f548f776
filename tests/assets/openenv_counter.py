"""An OpenEnv environment in the shape of OpenEnv's template (openenv init): pydantic Action / Observation models and
an Environment subclass with reset() / step(action) / state. Imports openenv-core when it is installed; otherwise the
same models on pydantic's BaseModel (the fields OpenEnv's base classes define), so the adapter's test runs either way.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from pydantic import BaseModel, Field

try:  # openenv-core installed: the real base classes
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    REAL_OPENENV = True
except ImportError:  # the fields of OpenEnv's base classes (openenv-core 0.3.0, env_server/types.py)
    REAL_OPENENV = False

    class Action(BaseModel):
        metadata: Dict[str, Any] = Field(default_factory=dict)

    class Observation(BaseModel):
        done: bool = False
        reward: bool | int | float | None = None
        metadata: Dict[str, Any] = Field(default_factory=dict)

    class State(BaseModel):
        episode_id: Optional[str] = None
        step_count: int = 0

    class Environment:
        pass


class CountAction(Action):
    """The model's message."""

    message: str = Field(..., description="what the agent says")


class CountObservation(Observation):
    """The environment's answer."""

    text: str = Field(default="", description="what the environment says")


class WordCounter(Environment):
    """Say exactly ``target`` words: reward 1 when a message has that many words (the episode ends), else -0.1 and
    a hint; the target (2..5) comes from the seed."""

    def __init__(self):
        self._state = State(episode_id="0", step_count=0)
        self.target = 3

    def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None, **kwargs) -> CountObservation:
        self.target = 2 + (seed or 0) % 4
        self._state = State(episode_id=episode_id or str(seed), step_count=0)
        return CountObservation(text=f"Say exactly {self.target} words.", done=False, reward=0.0)

    def step(self, action: CountAction, timeout_s: Optional[float] = None, **kwargs) -> CountObservation:
        self._state.step_count += 1
        n = len(action.message.split())
        if n == self.target:
            return CountObservation(text="Right.", done=True, reward=1.0)
        hint = "fewer" if n > self.target else "more"
        return CountObservation(text=f"You said {n} words; say {hint}.", done=False, reward=-0.1)

    @property
    def state(self) -> State:
        return self._state


class TwoStrings(Action):
    """An action the adapter cannot fill from one text."""

    a: str = ""
    b: str = ""


class AmbiguousEnv(WordCounter):
    def step(self, action: TwoStrings, timeout_s: Optional[float] = None, **kwargs) -> CountObservation:
        return super().step(CountAction(message=action.a))
