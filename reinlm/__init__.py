"""reinlm: steer language models with reinforcement learning, in token space and in a latent action space.

The Python API (docs/python-api.md)::

    import reinlm
    run_dir = reinlm.train(model="smollm2-135m", reward=my_reward, prompts=rows, steps=10, out="runs/x")

    from reinlm import Trainer, TrainConfig
    trainer = Trainer(TrainConfig(steps=10, out="runs/x"), reward=[f, g], reward_weights=[1.0, 0.5], prompts=dataset)
    trainer.train()

Names are imported on first use, so ``import reinlm`` stays cheap (torch loads with the trainer).
"""

__version__ = "0.1.0"

_LAZY = {
    "Trainer": ("reinlm.api", "Trainer"),
    "TrainConfig": ("reinlm.trainer.config", "TrainConfig"),
    "train": ("reinlm.api", "train"),
    "load_prompts": ("reinlm.data", "load_prompts"),
    "PromptSet": ("reinlm.data", "PromptSet"),
    "parse_reward_spec": ("reinlm.rewards", "parse_reward_spec"),
    "RewardSet": ("reinlm.rewards", "RewardSet"),
    "reward_function": ("reinlm.rewards", "reward_function"),
    "ReinlmError": ("reinlm.errors", "ReinlmError"),
    "ConfigError": ("reinlm.errors", "ConfigError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reinlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
