"""The texts an evaluation scores: sampled from a model (HF id/path, run directory, latent model) or read
from a ``.jsonl`` file of existing generations.

Either way the result is a :class:`Generations`: one entry per sample with its prompt, completion, the
index of its prompt (``group_ids``; samples of one prompt share it) and any extra columns (``reference``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reinlm.errors import ReinlmError
from reinlm.latent.model import LatentActionModel
from reinlm.rollout.token import SamplingConfig, decode_completions, encode_prompts, generate_rollouts
from reinlm.utils.devices import resolve_device
from reinlm.utils.jsonio import read_jsonl_objects

GENERATIONS_FORMAT = ('a JSONL file with one object per line holding "prompt" and "completion" (strings) and '
                      'optionally "reference" or other columns')


@dataclass
class Generations:
    """B samples: ``prompts[i]`` / ``completions[i]`` of prompt ``group_ids[i]``; ``columns`` has B values each."""

    prompts: list[str]
    completions: list[str]
    group_ids: list[int]
    columns: dict[str, list] = field(default_factory=dict)
    raw_prompts: list | None = None  # the prompts as the data holds them (message lists for chat data), B values

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def n_prompts(self) -> int:
        return len(set(self.group_ids))


def read_generations(path: str | Path) -> Generations:
    """Read a generations file; samples with the same prompt text form one group (in order of appearance)."""
    path = Path(path)
    if not path.is_file():
        raise ReinlmError(f"generations: {str(path)!r} does not exist; allowed: {GENERATIONS_FORMAT}.")
    rows: list[dict[str, Any]] = []
    for lineno, row in read_jsonl_objects(path, "generations", GENERATIONS_FORMAT):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise ReinlmError(f"generations: line {lineno} of {str(path)!r} lacks a string \"prompt\" or "
                              f"\"completion\"; allowed: {GENERATIONS_FORMAT}.")
        rows.append(row)
    if not rows:
        raise ReinlmError(f"generations: {str(path)!r} is empty (no JSON lines); allowed: {GENERATIONS_FORMAT}.")
    index: dict[str, int] = {}
    group_ids = [index.setdefault(r["prompt"], len(index)) for r in rows]
    extra = [k for k in rows[0] if k not in ("prompt", "completion", "group") and all(k in r for r in rows)]
    return Generations(prompts=[r["prompt"] for r in rows], completions=[r["completion"] for r in rows],
                       group_ids=group_ids, columns={k: [r[k] for r in rows] for k in extra})


@dataclass
class ModelSource:
    """Where samples come from: a causal LM (``model``), or a latent-action model (``latent``)."""

    model: str | None  # HF id / local dir / alias (a run directory resolved to RUN_DIR/final)
    latent: str | None  # latent-action model directory
    default_reference: str | None  # the starting model / backbone, for perplexity and KL
    run_dir: Path | None = None


def is_run_dir(path: str | Path) -> bool:
    """A training run directory: has ``config.yaml`` or ``metrics.jsonl`` (see docs/architecture.md)."""
    p = Path(path)
    return p.is_dir() and ((p / "config.yaml").is_file() or (p / "metrics.jsonl").is_file())


def resolve_source(model: str | None, latent: str | None) -> ModelSource:
    """Map ``--model`` / ``--latent`` to what generates and which reference model applies by default.

    A run directory means its ``final/`` model; its ``config.yaml`` names the starting model (the default
    reference). A latent run (``space: latent``) evaluates ``final/`` as a latent model.
    """
    if model and is_run_dir(model):
        run = Path(model)
        final = run / "final"
        if not final.is_dir():
            raise ReinlmError(f"model: the run directory {str(run)!r} has no final/ model yet (training not finished); "
                              f"allowed: a finished run directory, a checkpoint's model directory, or a model id/path.")
        cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        cfg = cfg or {}
        if cfg.get("space") == "latent":
            return ModelSource(model=None, latent=str(final), default_reference=cfg.get("model"), run_dir=run)
        return ModelSource(model=str(final), latent=None, default_reference=cfg.get("model"), run_dir=run)
    if latent:
        return ModelSource(model=None, latent=latent, default_reference=model or latent_backbone(latent))
    return ModelSource(model=model, latent=None, default_reference=model)


def prompt_columns(columns: dict[str, list], n_prompts: int, samples_per_prompt: int) -> dict[str, list]:
    """Repeat each per-prompt column value ``samples_per_prompt`` times (prompt-major, like the samples)."""
    return {k: [v[i] for i in range(n_prompts) for _ in range(samples_per_prompt)] for k, v in columns.items()}


def sample_from_lm(model, tokenizer, prompts: list[str], samples_per_prompt: int, *, max_new_tokens: int,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   batch_prompts: int = 4) -> Generations:
    """Sample ``samples_per_prompt`` completions per prompt with the rollout engine, seeded per prompt.

    Prompt i draws from its own generator seeded ``seed * 100003 + i``, so its samples do not depend on the
    batching (the trainer does the same).
    """
    import torch

    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens)
    completions: list[str] = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = prompts[start:start + batch_prompts]
        gens = [torch.Generator(device="cpu").manual_seed(seed * 100003 + start + j) for j in range(len(chunk))]
        batch = generate_rollouts(model, tokenizer, chunk, samples_per_prompt, sampling, generator=gens)
        completions += list(batch.completions)
    group_ids = [i for i in range(len(prompts)) for _ in range(samples_per_prompt)]
    return Generations(prompts=[prompts[g] for g in group_ids], completions=completions, group_ids=group_ids)


def latent_backbone(latent_dir: str | Path) -> str | None:
    """The backbone named in a latent model directory's ``config.json`` (None if unreadable)."""
    try:
        return json.loads((Path(latent_dir) / "config.json").read_text()).get("backbone")
    except (OSError, ValueError):
        return None


def sample_from_latent(latent_dir: str, prompts: list, samples_per_prompt: int, *, max_new_tokens: int,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                       device: str = "cpu", batch_prompts: int = 4, chat_template: bool = False) -> Generations:
    """Sample with a latent-action model: the policy draws actions (at ``temperature``; 0 = greedy), the
    world model emits tokens greedily. Prompt i draws from its own generator seeded ``seed * 100003 + i``
    (as ``sample_from_lm`` and the trainer), so its samples do not depend on the batching."""
    import torch

    model = LatentActionModel.from_pretrained(latent_dir, device=str(resolve_device(device)))
    model.set_action_sampling(greedy=temperature <= 0, tau=temperature if temperature > 0 else 1.0,
                              top_k=top_k, top_p=top_p)
    tok = model.tokenizer
    from reinlm.data import render_prompts

    prompts = render_prompts(prompts, tok, chat_template)  # conversations (and chat_template): the backbone's template
    completions: list[str] = []
    for start in range(0, len(prompts), batch_prompts):  # one decode-engine run per chunk of prompts
        chunk = prompts[start:start + batch_prompts]
        gens = [torch.Generator(device="cpu").manual_seed(seed * 100003 + start + j) for j in range(len(chunk))]
        ids, mask = encode_prompts(tok, chunk, tok.pad_token_id or 0, add_special_tokens=False)
        out = model.generate(ids.to(model.device), mask.to(model.device), max_new_tokens=max_new_tokens,
                             num_return_sequences=samples_per_prompt, generator=gens, return_dict=True)
        completions += decode_completions(tok, out.response_ids, out.response_mask)
    group_ids = [i for i in range(len(prompts)) for _ in range(samples_per_prompt)]
    return Generations(prompts=[prompts[g] for g in group_ids], completions=completions, group_ids=group_ids)
