"""``reinlm env list|play|eval``: see the environments, play one yourself, evaluate a model on one.

- ``list``: the built-ins and the adapters, with whether each adapter's package is installed.
- ``play SPEC``: you are the model: each line you type is a turn; the observations are printed as the model
  reads them (the fastest way to see what the model sees). Reads stdin, so it can be scripted.
- ``eval SPEC --model M --episodes N`` (or ``--latent DIR``: a latent model): mean return, turns and invalid-move
  rate over N seeded episodes,
  with a progress bar (``--json``: JSON only on stdout).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from reinlm.cli.jsonout import print_json
from reinlm.envs import ADAPTERS, BUILTINS, resolve_environment
from reinlm.envs.protocol import as_step_result, call_reset
from reinlm.errors import ConfigError
from reinlm.progress import step_bar
from reinlm.rollout.sampling import SamplingConfig


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``reinlm env`` and return its parser."""
    p = subparsers.add_parser("env", help="list, play and evaluate environments (multi-turn episodes)",
                              description="Environments for multi-turn training (docs/environments.md). Example: "
                                          "reinlm env eval builtin:guess --model smollm2-135m --episodes 8")
    sub = p.add_subparsers(dest="env_command", required=True)
    lst = sub.add_parser("list", help="built-in environments and installed adapters")
    lst.add_argument("--json", action="store_true", help="JSON only on stdout")
    play = sub.add_parser("play", help="play an environment in the terminal (one line per turn)")
    play.add_argument("spec", help="environment SPEC (builtin:NAME, path.py:Class, textarena:ENV_ID, "
                      "openenv:path.py:Class)")
    play.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    play.add_argument("--max-turns", type=int, default=8, help="turns before the episode stops (default 8)")
    play.add_argument("--opponent", default=None, help="two-player games: random (frozen needs a model: use train)")
    ev = sub.add_parser("eval", help="mean return, turns and invalid-move rate of a model over N episodes")
    ev.add_argument("spec", help="environment SPEC")
    ev.add_argument("--model", default="smollm2-135m", help="model: alias, local dir, run dir/final, HF id")
    ev.add_argument("--latent", default=None, metavar="DIR", help="a latent model directory instead of --model: its "
                    "policy picks each turn's actions (sampled at --temperature, or greedy), its world model writes")
    ev.add_argument("--seed", type=int, default=0, help="first episode seed (default 0)")
    ev.add_argument("--episodes", type=int, default=16, help="episodes, seeds --seed .. --seed + N - 1 (default 16)")
    ev.add_argument("--max-turns", type=int, default=4, help="model turns per episode (default 4)")
    ev.add_argument("--turn-tokens", type=int, default=32, help="tokens per turn (default 32)")
    ev.add_argument("--max-new-tokens", type=int, default=128, help="model tokens per episode (default 128)")
    ev.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    ev.add_argument("--greedy", action="store_true", help="most likely tokens instead of sampling")
    ev.add_argument("--env-timeout", type=float, default=30.0, help="seconds per environment call (default 30)")
    ev.add_argument("--opponent", default=None, help="two-player games: random")
    ev.add_argument("--json", action="store_true", help="JSON only on stdout")
    return p


def _positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}: got {value}; allowed: a number {'>= 0' if allow_zero else '> 0'}.")


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "play": _play, "eval": _eval}[args.env_command](args)


def _list(args) -> int:
    rows = [{"spec": f"builtin:{n}", "description": c.description} for n, c in BUILTINS.items()]
    # usable now: the OpenEnv adapter needs no package of its own (the user's class imports openenv-core);
    # verifiers is not wired; TextArena needs its package
    usable = {"builtin": True, "openenv": True, "verifiers": False}
    adapters = [{"adapter": k, "description": v,
                 "installed": usable.get(k, importlib.util.find_spec(k) is not None)} for k, v in ADAPTERS.items()]
    if args.json:
        print_json({"builtins": rows, "adapters": adapters})
        return 0
    print("built-in environments:")
    for r in rows:
        print(f"  {r['spec']:<20} {r['description']}")
    print("adapters:")
    for a in adapters:
        print(f"  {a['adapter'] + ':':<20} {a['description']}{'' if a['installed'] else '  [not available]'}")
    return 0


def _play(args) -> int:
    _positive("max_turns", args.max_turns)
    spec = resolve_environment(args.spec, opponent=args.opponent)
    env = spec.make({})
    print(call_reset(env, {}, args.seed) or "")
    total = 0.0
    for turn in range(args.max_turns):
        sys.stdout.write("> ")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        res = as_step_result(env.step(line.rstrip("\n")))
        total += res.reward
        print(res.observation)
        print(f"[reward {res.reward:g}, return {total:g}{', done' if res.done else ''}]")
        if res.done:
            break
    return 0


def _eval(args) -> int:
    from reinlm.hub import load_causal_lm
    from reinlm.rollout.multiturn import EpisodeLimits, evaluate_environment

    for name in ("episodes", "max_turns", "turn_tokens", "max_new_tokens", "temperature"):
        _positive(name, getattr(args, name))
    _positive("env_timeout", args.env_timeout, allow_zero=True)
    spec = resolve_environment(args.spec, opponent=args.opponent)  # bad input fails before the model loads
    play: dict = {}
    if args.latent:
        from reinlm.latent.model import LatentActionModel
        from reinlm.latent.turns import latent_turn_stepper

        model = LatentActionModel.from_pretrained(args.latent, device="cpu")
        tok, context = model.tokenizer, model.context_length
        play = dict(make_stepper=latent_turn_stepper(model, args.temperature, greedy=args.greedy),
                    eos=model.eos_token_ids())
    else:
        model, tok = load_causal_lm(args.model, device="cpu")
        context = getattr(model.config, "max_position_embeddings", None)
    model.eval()
    limits = EpisodeLimits(max_turns=args.max_turns, turn_tokens=min(args.turn_tokens, args.max_new_tokens),
                           max_completion_length=args.max_new_tokens, env_timeout=args.env_timeout or None,
                           context=context)
    sampling = SamplingConfig(temperature=args.temperature, greedy=args.greedy)
    bar = step_bar(args.episodes, f"env eval {args.spec}", unit="episode")
    try:
        episodes, metrics = evaluate_environment(model, tok, spec, args.episodes, args.seed, limits, sampling,
                                                 on_batch=bar.update, **play)
    finally:
        bar.close()
    out = {"environment": args.spec, "model": args.latent or args.model, "space": "latent" if args.latent else "token",
           "episodes": len(episodes), "seed": args.seed,
           "mean_return": metrics["env/return"], "mean_turns": metrics["env/turns"],
           "invalid_move_rate": metrics["env/invalid_move_frac"], "invalid_episode_frac": metrics["env/invalid_frac"],
           "timeout_frac": metrics["env/timeout_frac"], "model_tokens": metrics["env/model_tokens"]}
    if args.json:  # the first episodes' transcripts, for a look at what the model did
        out["samples"] = [ep.transcript() for ep in episodes[:3]]
        print_json(out)
    else:
        for k, v in out.items():
            print(f"{k:<22} {v:.4f}" if isinstance(v, float) else f"{k:<22} {v}")
    return 0
