"""reinlm: steer language models with reinforcement learning, in token space and in a latent action space."""

__version__ = "0.1.0"
