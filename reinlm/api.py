"""The Python API: ``reinlm.Trainer``, ``reinlm.TrainConfig`` and the one-call ``reinlm.train(...)``.

Everything ``reinlm train`` does, from Python, with Python objects where the CLI takes names (docs/python-api.md):

- ``prompts``: a prompt SPEC string (``builtin:reviews``, a file, ``hf:NAME[:CONFIG][:SPLIT]``), a
  ``datasets.Dataset``, a list of dicts (rows), a list of strings, a dict of columns or a pandas DataFrame
  (TRL's ``train_dataset`` is accepted as a name for it);
- ``reward``: a reward SPEC string, a callable with TRL's signature, a list of callables (and SPEC strings)
  with ``reward_weights``, or a :class:`~reinlm.rewards.RewardSet` (TRL's ``reward_funcs`` is accepted too);
- ``config``: a :class:`TrainConfig`, a dict of its fields, or keyword arguments (``steps=10``); TRL's
  ``args`` is accepted as a name for it.

``config.yaml`` records what was really used: rewards as SPECs that rebuild them (``module:qualname``,
``/path/file.py:function``, a registered SPEC), prompts given as Python objects by a copy written to
``RUN_DIR/prompts.jsonl``; ``inputs.json`` adds fingerprints. So ``reinlm train --resume RUN_DIR`` continues a
run started from Python, and a resume that would train on other prompts or rewards is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from reinlm.config.build import build_config, config_to_dict
from reinlm.config.yamlfile import load_yaml
from reinlm.data import load_prompts
from reinlm.envs.spec import from_python
from reinlm.errors import ConfigError
from reinlm.rewards import RewardSet, parse_reward_spec
from reinlm.rewards.base import reward_name
from reinlm.rewards.combine import RewardComponent
from reinlm.rewards.refs import reward_set_spec
from reinlm.trainer.config import TrainConfig
from reinlm.trainer.episodes import synthetic_rows
from reinlm.trainer.loop import Trainer as _LoopTrainer, previous_run_outputs
from reinlm.utils.atomic import atomic_write_text

log = logging.getLogger("reinlm")
PROMPTS_FILE = "prompts.jsonl"  # where a run started from Python objects keeps its prompts


def make_config(config: TrainConfig | dict | str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A validated :class:`TrainConfig` from a config (a TrainConfig, a dict of its fields, or the path of a YAML
    file as ``reinlm train --config`` reads it) plus keyword overrides.

    Keys are read as in a YAML config: flat names of nested settings (``kl_coef``), TRL's names
    (``learning_rate``), and an unknown key is an error naming the closest valid one.
    """
    if isinstance(config, (str, Path)):
        values: dict[str, Any] = load_yaml(config)
        return build_config(TrainConfig, None, [values, overrides] if overrides else [values])
    if config is None:
        values = {}
    elif isinstance(config, TrainConfig):
        values = config_to_dict(config)
    elif isinstance(config, dict):
        values = dict(config)
    else:
        raise ConfigError(f"config: got a {type(config).__name__}; allowed: a reinlm.TrainConfig, a dict of its "
                          f"fields, or the path of a YAML config file.")
    return build_config(TrainConfig, None, [values, overrides], source="the Python API")


def build_reward_set(reward: Any, weights: Sequence[float] | None, on_error: str):
    """A :class:`RewardSet` from a SPEC string, a callable, a list of them, or a RewardSet."""
    if isinstance(reward, RewardSet):
        if weights is not None:
            raise ConfigError("reward_weights: given with a RewardSet, which holds its own weights; allowed: "
                              "reward_weights with a list of reward functions.")
        return reward
    if isinstance(reward, str):
        if weights is not None:
            raise ConfigError("reward_weights: given with a reward SPEC, which holds its own weights (0.5*sentiment); "
                              "allowed: reward_weights with a list of reward functions.")
        return parse_reward_spec(reward, on_error=on_error)
    items = list(reward) if isinstance(reward, (list, tuple)) else [reward]
    if not items:
        raise ConfigError("reward: got an empty list; allowed: at least one reward function or SPEC.")
    weights = [1.0] * len(items) if weights is None else list(weights)
    if len(weights) != len(items):
        raise ConfigError(f"reward_weights: got {len(weights)} weights for {len(items)} rewards; allowed: one weight "
                          f"per reward.")
    comps = []
    for item, w in zip(items, weights):
        if isinstance(item, str):  # a SPEC among functions: its terms, scaled by the weight
            for c in parse_reward_spec(item, on_error=on_error).components:
                comps.append(RewardComponent(c.name, c.fn, c.weight * float(w), c.spec))
        elif callable(item):
            comps.append(RewardComponent(reward_name(item), item, float(w)))
        else:
            raise ConfigError(f"reward: got a {type(item).__name__}; allowed: a reward function (TRL's signature), "
                              f"a reward SPEC string, or a list of them.")
    return RewardSet(comps, on_error=on_error)


class Trainer(_LoopTrainer):
    """RL training from Python: a :class:`TrainConfig` plus prompts and rewards as Python objects.

    >>> trainer = Trainer(TrainConfig(steps=3, out="runs/api"), reward=my_reward, prompts=my_dataset)  # doctest: +SKIP
    >>> run_dir = trainer.train()                                                                     # doctest: +SKIP

    Arguments (TRL's names in brackets): ``config`` [``args``], ``reward`` [``reward_funcs``] with
    ``reward_weights``, ``prompts`` [``train_dataset``], ``model`` (a name, or a loaded
    ``PreTrainedModel`` with its ``tokenizer``), ``teacher`` [``teacher_model``] (on-policy distillation: a name,
    or a loaded model with the student's tokenizer), and any :class:`TrainConfig` field as a keyword argument.
    """

    def __init__(self, config: TrainConfig | dict | str | Path | None = None, *, reward: Any = None,
                 prompts: Any = None,
                 reward_weights: Sequence[float] | None = None, model: Any = None, tokenizer: Any = None,
                 args: TrainConfig | dict | None = None, reward_funcs: Any = None, train_dataset: Any = None,
                 environment_factory: Any = None, tools: Any = None, rollout_func: Any = None,
                 teacher_model: Any = None, **overrides: Any):
        config = _one_of("config", config, "args", args)
        teacher = _one_of("teacher", overrides.pop("teacher", None), "teacher_model", teacher_model)
        teacher_obj = None  # on-policy distillation: a loaded teacher model (TRL's teacher_model=), or its name
        if teacher is not None and not isinstance(teacher, (str, Path)):
            overrides.setdefault("teacher", str(getattr(teacher, "name_or_path", "") or "python-model"))
            teacher_obj = teacher
        elif teacher is not None:
            overrides["teacher"] = str(teacher)
        reward = _one_of("reward", reward, "reward_funcs", reward_funcs)
        prompts = _one_of("prompts", prompts, "train_dataset", train_dataset)
        if model is not None and not isinstance(model, (str, Path)):
            if tokenizer is None:
                raise ConfigError("tokenizer: a model object needs its tokenizer (tokenizer=...); allowed: a model "
                                  "name, or a model object with its tokenizer.")
            overrides.setdefault("model", str(getattr(model, "name_or_path", "") or "python-model"))
            model_obj = model
        else:
            if model is not None:
                overrides["model"] = str(model)
            model_obj = None
        cfg = make_config(config, **overrides)
        environment = None  # TRL's environment_factory= / tools= (docs/environments.md)
        if rollout_func is not None:
            raise ConfigError("rollout_func: not supported; give environment_factory= (episodes through reinlm's "
                              "decode engine) or a text environment as --environment path.py:Class.")
        if environment_factory is not None or tools:
            environment = from_python(environment_factory, tools, cfg.env.max_tool_calling_iterations)

        # prompts: recorded as given when they have a name, else as a copy in RUN_DIR/prompts.jsonl
        self.prompts_from_python = prompts is not None and not isinstance(prompts, (str, Path))
        source = cfg.prompts if prompts is None else (str(prompts) if isinstance(prompts, Path) else prompts)
        if (environment is not None or cfg.env.environment) and prompts is None and cfg.prompts == "builtin:reviews":
            prompt_set = synthetic_rows(cfg.env.env_rows)
        else:
            prompt_set = load_prompts(source, column=cfg.prompt_column, rename=cfg.rename_columns)
        record: dict[str, Any] = {}
        if self.prompts_from_python:  # the copy holds the renamed columns and a "prompt" column
            out = Path(cfg.out or cfg.default_out).resolve()
            record.update(prompts=str(out / PROMPTS_FILE), prompt_column="prompt", rename_columns="")
        elif prompts is not None:
            record["prompts"] = str(prompts)
        if reward_weights is not None and cfg.reward_weights:
            raise ConfigError("reward_weights: given as an argument and in the config; allowed: one of them.")
        # rewards: recorded as the SPEC that rebuilds them (the config's reward_weights apply on top, in the loop)
        reward_set = build_reward_set(reward if reward is not None else cfg.reward, reward_weights,
                                      cfg.reward_on_error)
        record["reward"] = reward_set_spec(reward_set)
        cfg = make_config(cfg, **record)
        with_env = environment is not None or cfg.env.environment
        super().__init__(cfg, model=model_obj, tokenizer=tokenizer, reward_set=reward_set, prompt_set=prompt_set,
                         environment=environment, env_rewards=reward_set if with_env and reward is not None else None,
                         teacher=teacher_obj)

    def train(self, resume: bool = False, resume_from_checkpoint: bool | str | Path | None = None) -> Path:
        """Run (or, with ``resume=True``, continue) training; returns the run directory.

        ``resume_from_checkpoint`` is TRL's name: True, or the run directory (or one of its checkpoints), resumes
        from the run's newest complete checkpoint. A fresh run started from Python prompts first writes them to
        ``RUN_DIR/prompts.jsonl`` (what config.yaml names); a resume is checked against the run's ``inputs.json``
        by the loop.
        """
        if resume_from_checkpoint not in (None, False):
            if not isinstance(resume_from_checkpoint, bool):
                given = Path(resume_from_checkpoint).resolve()
                run = self.run_dir.resolve()
                if given != run and run not in given.parents:
                    raise ConfigError(f"resume_from_checkpoint: got {str(resume_from_checkpoint)!r}, which is not in "
                                      f"this run's directory {str(self.run_dir)!r}; allowed: True, the run directory "
                                      f"or one of its checkpoints (the run resumes from its newest complete one).")
            resume = True

        if not resume and self.is_main and self.prompts_from_python:
            previous_run_outputs(self.run_dir, self.cfg.overwrite)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_prompts(self.run_dir / PROMPTS_FILE, self.full_prompts)
        return super().train(resume=resume)


def _write_prompts(path: Path, prompt_set) -> None:
    import json

    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in prompt_set.records()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _one_of(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    if value is not None and alias_value is not None:
        raise ConfigError(f"{name}: given both as {name}= and as {alias}= (TRL's name for it); allowed: one of them.")
    return value if value is not None else alias_value


def train(config: TrainConfig | dict | None = None, *, reward: Any = None, prompts: Any = None,
          reward_weights: Sequence[float] | None = None, model: Any = None, tokenizer: Any = None,
          resume: bool = False, **overrides: Any) -> Path:  # config may be a YAML path
    """Train in one call: ``reinlm.train(model="smollm2-135m", reward=fn, prompts=rows, steps=10, out="runs/x")``.

    Arguments as :class:`Trainer`; ``resume=True`` continues the run in ``out`` from its newest checkpoint.
    Returns the run directory.
    """
    trainer = Trainer(config, reward=reward, prompts=prompts, reward_weights=reward_weights, model=model,
                      tokenizer=tokenizer, **overrides)
    return trainer.train(resume=resume)


__all__ = ["Trainer", "TrainConfig", "train", "make_config", "build_reward_set"]
