"""``reinlm search``: Monte-Carlo tree search over latent actions (CoLA), optionally against best-of-N sampling.
Flags are the fields of :class:`reinlm.latent.search.SearchConfig`. The command (:func:`run_search`: prompts,
reward and models from the config) and its text (:func:`format_report`) live here; the search itself is
:mod:`reinlm.latent.search`."""

from __future__ import annotations

import argparse

import torch

from reinlm.cli.jsonout import print_json
from reinlm.config.build import build_config
from reinlm.config.flags import add_dataclass_args
from reinlm.config.yamlfile import load_yaml
from reinlm.errors import ReinlmError
from reinlm.latent.model import LatentActionModel
from reinlm.latent.qmodel import QModel
from reinlm.latent.search import SearchConfig, search_prompts
from reinlm.rewards import parse_reward_spec


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "search", help="tree search over latent actions with a reward (and a Q-model), vs best-of-N",
        description="Example: reinlm search --latent runs/latent --reward sentiment --q runs/q --budget 1024 "
                    "--compare best-of-n \"I watched this film last night and\". The budget counts world-model "
                    "token forwards (rollouts included); best-of-N gets the same spend.")
    p.add_argument("prompt_text", nargs="?", default=None, metavar="PROMPT", help="the prompt (or use --prompts)")
    p.add_argument("--config", help="YAML file of these fields (flags override it)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_dataclass_args(p, SearchConfig)
    return p


def run(args: argparse.Namespace) -> int:
    values = load_yaml(args.config)
    if args.prompt_text is not None:
        values["prompt"] = args.prompt_text
    cfg = build_config(SearchConfig, args, values)
    report = run_search(cfg)
    if args.json:
        print_json(report, indent=2)
    else:
        print(format_report(report))
    return 0


def run_search(cfg: SearchConfig, lam=None) -> dict:
    """Search the prompt or every prompt of ``cfg.prompts`` (and run best-of-N beside it with ``compare``);
    returns the report dict (:func:`reinlm.latent.search.search_prompts`). ``lam``: an already loaded model."""
    if cfg.environment:
        return _run_environment_search(cfg, lam)
    if bool(cfg.prompt) == bool(cfg.prompts):
        raise ReinlmError("prompt: give exactly one of a prompt (positional) or --prompts SPEC.")
    reward_set = parse_reward_spec(cfg.reward)
    if cfg.prompts:
        from reinlm.data import load_prompts  # not at the top: `reinlm --help` would load the data layer

        ps = load_prompts(cfg.prompts, column=cfg.prompt_column)
        if cfg.held_out_fraction > 0 and len(ps) >= 2:
            _, ps = ps.split(cfg.held_out_fraction, cfg.seed)
        n = len(ps) if cfg.num_prompts == 0 else min(cfg.num_prompts, len(ps))
        prompts = list(ps.prompts[:n])
        cols = [ps.rows([i]) for i in range(n)]  # {column: [value]} per prompt
    else:
        prompts, cols = [cfg.prompt], [{}]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lam = lam or LatentActionModel.from_pretrained(cfg.latent, device=cfg.device)
    lam.eval()
    qmodel = QModel.from_pretrained(cfg.q, lam) if cfg.q else None
    return search_prompts(lam, reward_set, prompts, cols, cfg, qmodel)


def _run_environment_search(cfg: SearchConfig, lam=None) -> dict:
    """``--environment SPEC``: the search across its episodes' turns (:mod:`reinlm.latent.env_search`)."""
    from reinlm.envs.spec import resolve_environment
    from reinlm.latent.env_search import search_environment

    for name in ("prompt", "prompts", "q", "reward"):
        if getattr(cfg, name):
            raise ReinlmError(f"{name}: not used with --environment (the episodes start from the environment's "
                              f"reset and its return is the reward); leave it out.")
    spec = resolve_environment(cfg.environment)  # a bad SPEC fails here, before any model loads
    if spec.needs_opponent:
        raise ReinlmError(f"environment: {cfg.environment} is a two-player game (it needs an opponent model); "
                          "search runs one-player environments.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lam = lam or LatentActionModel.from_pretrained(cfg.latent, device=cfg.device)
    lam.eval()
    return search_environment(lam, spec, cfg)


def format_report(report: dict) -> str:
    """Plain text: per prompt the best text and reward (and best-of-N's), then the summary."""
    if "episodes" in report:
        return _format_environment_report(report)
    lines = []
    for r in report["prompts"]:
        s = r["search"]
        st = s["stats"]
        lines.append(f"prompt: {s['prompt']!r}")
        lines.append(f"  search      reward {s['reward']:.3f}  ({st['rounds']} rounds, {st['nodes']} nodes, "
                     f"{st['rollouts']} rollouts, {st['wm_forwards']} world-model forwards, stopped by "
                     f"{st['stopped_by']}): {s['text']!r}")
        if "best_of_n" in r:
            b = r["best_of_n"]
            lines.append(f"  best-of-{b['n']:<3d} reward {b['reward']:.3f}  ({b['wm_forwards']} world-model forwards, "
                         f"mean sample reward {b['mean_reward']:.3f}): {b['text']!r}")
    if "summary" in report:
        m = report["summary"]
        lines.append(f"\n{m['prompts']} prompts: mean best reward search {m['search_mean_best_reward']:.3f} vs "
                     f"best-of-N {m['best_of_n_mean_best_reward']:.3f}; search wins {m['search_wins']}, ties "
                     f"{m['ties']}, best-of-N wins {m['best_of_n_wins']}; world-model forwards "
                     f"{m['search_wm_forwards_mean']:.0f} vs {m['best_of_n_wm_forwards_mean']:.0f}; seconds "
                     f"{m['search_seconds_mean']:.1f} vs {m['best_of_n_seconds_mean']:.1f}")
    return "\n".join(lines)


def _format_environment_report(report: dict) -> str:
    """Plain text of an environment search: per episode the best return and its turns (and best-of-N's)."""
    lines = []
    for r in report["episodes"]:
        s, st = r["search"], r["search"]["stats"]
        best = s["best"] or {"return": float("nan"), "turns": []}
        lines.append(f"episode seed {s['seed']}: search return {best['return']:.3f} ({st['rounds']} rounds, "
                     f"{st['nodes']} nodes, {st['rollouts']} rollouts, {st['wm_forwards']} world-model forwards, "
                     f"stopped by {st['stopped_by']}): {best['turns']!r}")
        if "best_of_n" in r:
            b = r["best_of_n"]
            bb = b["best"] or {"return": float("nan"), "turns": []}
            lines.append(f"  best-of-{b['n']:<3d} return {bb['return']:.3f} ({b['wm_forwards']} world-model "
                         f"forwards, mean return {b['mean_return']:.3f}): {bb['turns']!r}")
    if "summary" in report:
        m = report["summary"]
        lines.append(f"\n{m['episodes']} episodes: mean best return search {m['search_mean_return']:.3f} vs best-of-N "
                     f"{m['best_of_n_mean_return']:.3f}; search wins {m['search_wins']}, ties {m['ties']}, best-of-N "
                     f"wins {m['best_of_n_wins']}; world-model forwards {m['search_wm_forwards_mean']:.0f} vs "
                     f"{m['best_of_n_wm_forwards_mean']:.0f}")
    return "\n".join(lines)
