"""Rewards for tests: cheap, dense, learnable by a tiny random model within a few steps."""


def space_share(prompts, completions, **columns):
    """Share of characters that are spaces: ~0.3-0.5 for a random SmolLM2-vocabulary model, learnable."""
    return [c.count(" ") / max(1, len(c)) for c in completions]


def always_none(prompts, completions, **columns):
    """A broken reward: None for every sample."""
    return [None for _ in completions]


def space_share_or_none(prompts, completions, **columns):
    """space_share, but None (cannot score) for completions whose length is a multiple of 3: invalid samples."""
    return [None if len(c) % 3 == 0 else c.count(" ") / max(1, len(c)) for c in completions]
