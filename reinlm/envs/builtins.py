"""Built-in environments (``builtin:NAME``): small, seeded, offline games for the seeds' tasks.

The BWArea model card (shared/seeds/001) names negotiation, persuasion and text games as what its policy is
trained for; these are the smallest honest versions of each that SmolLM2-135M can act in on a CPU. Each one
draws its hidden state from the ``seed`` that :func:`reinlm.envs.protocol.call_reset` passes (the run seed, the
step and the group: a group's G episodes see the same game), so episodes replay exactly.

- ``guess``: guess a hidden number in 1..``high`` with "higher"/"lower" feedback; reward 1 on the turn the
  guess is right, minus 0.2 per earlier turn; a reply without a number is an invalid move (reward -0.1).
- ``negotiate``: sell an item to a scripted buyer with a hidden reservation price in [40, 90]; the buyer takes
  any price at or below it, otherwise counters lower; reward = price / 100 on a deal, 0 without one.
- ``persuade``: talk a sceptical listener round; the listener's stance moves by the VADER compound sentiment
  (``vaderSentiment``, shipped lexicon) of each message and every turn's reward is that move; the episode ends
  when the stance passes 1 or after ``max_turns``.
"""

from __future__ import annotations

import random
import re
from typing import Callable

__all__ = ["BUILTINS", "GuessNumber", "Negotiation", "Persuasion", "first_number"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def first_number(text: str) -> float | None:
    """The first number written in ``text`` (digits, optional sign and decimals), None when there is none."""
    m = _NUMBER.search(text)
    return float(m.group()) if m else None


class GuessNumber:
    """Guess the hidden number in 1..high; feedback says higher or lower."""

    description = "guess a hidden number with higher/lower feedback (reward 1 - 0.2 per extra turn)"

    def __init__(self, high: int = 10, max_turns: int = 4):
        self.high, self.max_turns = int(high), int(max_turns)

    def reset(self, seed: int = 0, **row) -> str:
        self.target = random.Random(seed).randint(1, self.high)
        self.turn = 0
        return (f"I am thinking of a whole number between 1 and {self.high}. Guess it: answer with one number. "
                f"You have {self.max_turns} guesses.")

    def step(self, text: str):
        self.turn += 1
        guess = first_number(text)
        last = self.turn >= self.max_turns
        if guess is None:
            return ("Please answer with one number.", -0.1, last, {"invalid_move": True})
        if int(guess) == self.target:
            return ("Correct!", 1.0 - 0.2 * (self.turn - 1), True, {})
        hint = "higher" if guess < self.target else "lower"
        return (f"No, the number is {hint} than {int(guess)}. Guess again.", 0.0, last, {})


class Negotiation:
    """Sell to a scripted buyer whose reservation price is hidden; the deal price is the reward."""

    description = "sell to a scripted buyer with a hidden reservation price (reward = deal price / 100)"

    def __init__(self, max_turns: int = 3):
        self.max_turns = int(max_turns)

    def reset(self, seed: int = 0, **row) -> str:
        rng = random.Random(seed)
        self.reserve = rng.randint(40, 90)  # the most the buyer will pay
        self.opening = rng.randint(20, self.reserve - 10)
        self.turn = 0
        return (f"You are selling a used bicycle. The buyer says: \"I can offer {self.opening} dollars.\" "
                "Answer with your price in dollars.")

    def step(self, text: str):
        self.turn += 1
        price = first_number(text)
        last = self.turn >= self.max_turns
        if price is None:
            return ("The buyer says: \"Name a price, please.\"", 0.0, last, {"invalid_move": True})
        if price <= self.reserve:
            return (f"The buyer says: \"Deal at {price:g} dollars.\"", max(price, 0.0) / 100.0, True,
                    {"deal": price})
        counter = max(self.opening, self.reserve - 5 * (self.max_turns - self.turn))
        return (f"The buyer says: \"{price:g} is too much. I could pay {counter}.\"", 0.0, last, {})


class Persuasion:
    """Move a sceptical listener's stance; VADER sentiment of each message moves it."""

    description = "persuade a sceptical listener (stance moved by the VADER sentiment of each message)"
    topics = ("cycling to work", "learning to cook", "reading before bed", "taking the stairs",
              "drinking more water", "visiting the library", "planting a garden", "walking after dinner")

    def __init__(self, max_turns: int = 3):
        self.max_turns = int(max_turns)
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def reset(self, seed: int = 0, **row) -> str:
        rng = random.Random(seed)
        self.topic = rng.choice(self.topics)
        self.stance = rng.uniform(-0.6, -0.2)  # sceptical
        self.turn = 0
        return (f"Your friend is not convinced about {self.topic}. Persuade them in one or two sentences.")

    def _reply(self) -> str:
        if self.stance > 0.5:
            return "Your friend says: \"You are right, I will try it.\""
        if self.stance > 0:
            return "Your friend says: \"Maybe. Tell me more.\""
        return "Your friend says: \"I am still not sure about it.\""

    def step(self, text: str):
        self.turn += 1
        move = self._vader.polarity_scores(text)["compound"] * 0.5
        self.stance += move
        done = self.stance > 1.0 or self.turn >= self.max_turns
        return (self._reply(), move, done, {"stance": self.stance})


BUILTINS: dict[str, Callable[[], object]] = {
    "guess": GuessNumber,
    "negotiate": Negotiation,
    "persuade": Persuasion,
}
