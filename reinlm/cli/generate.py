"""``reinlm generate``: sample continuations from a model (token space; ``--latent DIR`` for a latent model).

Prompts come from ``--prompt`` (repeatable) and/or ``--prompts SPEC`` (docs/models-and-data.md). Sampling
uses the library's rollout engine (``reinlm.rollout.token.generate_rollouts``), seeded per prompt, so a
prompt's samples do not depend on the other prompts or on ``--batch-size``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from reinlm.cli.generate_latent import run_latent_generate
from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.schema import DTYPE_CHOICES, Config, check_device, opt
from reinlm.config.yamlfile import load_yaml
from reinlm.errors import ConfigError
from reinlm.rollout.token import SamplingConfig, generate_rollouts
from reinlm.utils.chunks import chunked
from reinlm.utils.rng import seed_everything

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig(Config):
    """Flags of ``reinlm generate`` besides the sampling ones (``SamplingConfig``) and the prompts."""

    model: str = opt("smollm2-135m", "model: an alias (smollm2-135m), local dir, run dir, .gguf file or HF id")
    prompts: str | None = opt(None, "prompt set SPEC: builtin:neutral|reviews|summaries, a .txt/.jsonl/.csv/"
                                    ".parquet file, a save_to_disk dir, or hf:NAME[:SPLIT]")
    prompt_column: str = opt("prompt", "column holding the prompt in table files and datasets")
    limit: int | None = opt(None, "use only the first N prompts of --prompts", lo=1)
    num_samples: int = opt(1, "samples per prompt", lo=1)
    batch_size: int = opt(16, "prompts per generation batch (each brings --num-samples rows)", lo=1)
    seed: int = opt(0, "random seed (prompt i samples from a generator seeded with seed + i)", lo=0)
    device: str = opt("auto", "cpu, cuda, cuda:N or auto", check=check_device)
    dtype: str = opt("float32", "float32, bfloat16 or float16", choices=DTYPE_CHOICES)
    chat_template: bool = opt(False, "wrap each prompt as a user turn of the model's chat template")
    max_prompt_tokens: int | None = opt(None, "longest prompt allowed, in tokens (default: context - max-new-tokens)", lo=1)
    truncate_prompts: bool = opt(False, "cut prompts that are too long from the left instead of failing")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``reinlm generate`` and return its parser."""
    p = subparsers.add_parser(
        "generate", help="sample continuations from a model",
        description="Sample continuations of prompts from a model: an embedded alias (smollm2-135m), a local "
                    "model or run directory, a .gguf file, or a Hugging Face id. Example: reinlm generate "
                    "--model smollm2-135m --prompt 'I like eating' --max-new-tokens 12 --seed 0",
    )
    add_dataclass_args(p, GenerateConfig)
    add_dataclass_args(p, SamplingConfig, group="sampling")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="a prompt (repeat the flag for several); combined with --prompts")
    p.add_argument("--config", help="YAML file with these fields; flags override it")
    p.add_argument("--json", action="store_true", help="print a JSON list with one object per sample")
    p.add_argument("--latent", metavar="DIR", default=None,
                   help="generate with the latent-action model in DIR (actions sampled by its policy)")
    p.add_argument("--show-actions", action="store_true", help="with --latent: print the chosen action ids")
    return p


def run(args: argparse.Namespace) -> int:
    """Generate and print; returns 0."""
    if getattr(args, "latent", None):
        return run_latent_generate(args)
    if getattr(args, "show_actions", False):
        raise ConfigError("show_actions: got --show-actions without --latent; allowed: --show-actions together "
                          "with --latent DIR (token models have no actions).")
    import torch

    from reinlm.data import check_prompt_lengths, context_length, render_prompts
    from reinlm.hub import load_causal_lm

    yaml_values = load_yaml(args.config)
    cfg = build_config(GenerateConfig, args, yaml_values, also=(SamplingConfig,), extra=("prompt",))
    sampling = build_config(SamplingConfig, args, yaml_values, also=(GenerateConfig,), extra=("prompt",))
    yaml_prompt = yaml_values.get("prompt")
    if yaml_prompt is not None and not (isinstance(yaml_prompt, str) or (
            isinstance(yaml_prompt, list) and all(isinstance(p, str) for p in yaml_prompt))):
        raise ConfigError(f"config {yaml_values.source!r}: prompt: got {yaml_prompt!r}; allowed: a string or a "
                          "list of strings.")
    prompts = collect_prompts(args.prompt or yaml_values.get("prompt"), cfg)
    if getattr(args, "chat_template", None) is None and "chat_template" not in yaml_values:
        cfg.chat_template = trained_with_chat_template(cfg.model)  # a run's model generates as it was trained
    seed_everything(cfg.seed)

    t0 = time.perf_counter()
    model, tok = load_causal_lm(cfg.model, device=cfg.device, dtype=cfg.dtype)
    t_load = time.perf_counter() - t0
    # message-list prompts (conversational data) always use the chat template; text prompts with --chat-template
    model_prompts = render_prompts(prompts, tok, cfg.chat_template)
    model_prompts = check_prompt_lengths(model_prompts, tok, cfg.max_prompt_tokens, sampling.max_new_tokens,
                                         context_length(model), truncate=cfg.truncate_prompts)

    t0 = time.perf_counter()
    records = []
    for start_idx, chunk in _indexed_chunks(model_prompts, cfg.batch_size, chunked):
        gens = [torch.Generator().manual_seed(cfg.seed + start_idx + j) for j in range(len(chunk))]
        batch = generate_rollouts(model, tok, chunk, cfg.num_samples, sampling, generator=gens)
        lengths = batch.response_mask.sum(1).tolist()
        logps = batch.logprobs.sum(1).tolist()
        for row, completion in enumerate(batch.completions):
            i = start_idx + row // cfg.num_samples
            records.append({"prompt_index": i, "sample_index": row % cfg.num_samples, "prompt": prompts[i],
                            "completion": completion, "num_tokens": int(lengths[row]), "logprob": float(logps[row])})
    t_gen = time.perf_counter() - t0
    print(f"reinlm: loaded {cfg.model} in {t_load:.1f} s; {len(records)} sample(s) in {t_gen:.1f} s",
          file=sys.stderr)
    if args.json:
        print_json(records, indent=1)
    else:
        print(format_samples(records, cfg.num_samples, chat=cfg.chat_template))
    return 0


def _indexed_chunks(items: list, size: int, chunked):
    start = 0
    for chunk in chunked(items, size):
        yield start, chunk
        start += len(chunk)


def collect_prompts(cli_prompts: list[str] | str | None, cfg: GenerateConfig) -> list[str]:
    """``--prompt`` texts followed by the ``--prompts`` set; at least one prompt is required."""
    from reinlm.data import load_prompts

    prompts = [cli_prompts] if isinstance(cli_prompts, str) else list(cli_prompts or [])
    if cfg.prompts:
        prompts += load_prompts(cfg.prompts, column=cfg.prompt_column, limit=cfg.limit).prompts
    if not prompts:
        raise ConfigError("prompt: got none; allowed: --prompt TEXT (repeatable) and/or --prompts SPEC "
                          "(builtin:neutral, builtin:reviews, builtin:summaries, a file, or hf:NAME).")
    return prompts


def _shown(prompt) -> str:
    """A prompt as text for display: a conversation shows its last message."""
    return prompt if isinstance(prompt, str) else f"[{prompt[-1]['role']}] {prompt[-1]['content']}\n"


def trained_with_chat_template(model: str) -> bool:
    """Whether ``model`` is a run directory, its ``final/`` (or ``final/merged``) or one of its checkpoints, and the
    run trained with ``chat_template: true`` (read from the run's config.yaml); False for any other model."""
    path = Path(model).expanduser()
    if not path.exists():  # an alias or a hub id: no run (and never the working directory's config.yaml)
        return False
    for d in (path, *list(path.resolve().parents)[:3]):
        cfg = d / "config.yaml"
        if cfg.is_file() and ((d / "final").exists() or (d / "checkpoints").is_dir() or d.parent.name == "checkpoints"):
            try:
                values = yaml.safe_load(cfg.read_text()) or {}
            except (OSError, yaml.YAMLError):
                return False
            return bool(isinstance(values, dict) and values.get("chat_template"))
    return False


def format_samples(records: list[dict], num_samples: int, chat: bool = False) -> str:
    """Human-readable output: prompt + completion per sample; a header per prompt when there are several. With a
    chat template the reply follows the prompt on a line of its own (it is a separate turn)."""
    lines = []
    for r in records:
        text = _shown(r["prompt"]) + ("\n" if chat else "") + r["completion"]
        if num_samples == 1 and len(records) == 1:
            return text
        if r["sample_index"] == 0:
            lines.append(f"=== prompt {r['prompt_index'] + 1}: {_shown(r['prompt'])!r}")
        lines.append(f"[{r['sample_index'] + 1}] {text}")
    return "\n".join(lines)
