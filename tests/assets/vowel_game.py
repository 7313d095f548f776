"""A three-turn text game a tiny random model can score on (tests of the search across turns): turn t's reward is
t times the share of vowels among the letters the model wrote, so a turn's worth depends on the game's state."""

import threading


class VowelGame:
    def reset(self, seed=0, **row):
        self.seed, self.turn = seed, 0
        return f"Game {seed}: write words full of vowels."

    def step(self, text):
        self.turn += 1
        letters = [c for c in text.lower() if c.isalpha()]
        reward = self.turn * sum(c in "aeiou" for c in letters) / max(len(letters), 1)
        return f"Turn {self.turn} scored {reward:.2f}.", reward, self.turn >= 3, {}


class SnapshotVowelGame(VowelGame):
    """The same game with snapshot() / restore(); it holds a lock, so it cannot be deep-copied."""

    def __init__(self):
        self.lock = threading.Lock()

    def snapshot(self):
        return {"seed": self.seed, "turn": self.turn}

    def restore(self, state):
        self.seed, self.turn = state["seed"], state["turn"]
