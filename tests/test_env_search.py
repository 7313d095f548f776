"""Tree search over latent actions across environment turns (tiny backbone, real SmolLM2 tokenizer): it finds at
least best-of-N's return at the same world-model forwards, its best episode replays to the same return in a fresh
environment (branches do not leak state), environments branch by snapshot()/restore() or a deep copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reinlm.cli.main import main

GAME = Path(__file__).parent / "assets" / "vowel_game.py"


def _search(latent_dir, cls, capsys, *extra):
    code = main(["search", "--latent", str(latent_dir), "--environment", f"{GAME}:{cls}", "--episodes", "2",
                 "--max-turns", "3", "--turn-tokens", "4", "--budget", "160", "--rounds", "40", "--branching-root",
                 "4", "--branching", "3", "--compare", "best-of-n", "--json", *extra])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else None)


@pytest.mark.parametrize("cls", ["VowelGame", "SnapshotVowelGame"])
def test_search_across_turns_finds_at_least_best_of_n_and_replays(tiny_latent_dir, capsys, cls):
    """SnapshotVowelGame holds a lock (a deep copy raises): it can only branch through snapshot()/restore()."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vowel_game_replay", GAME)
    game = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(game)
    code, report = _search(tiny_latent_dir, cls, capsys)
    assert code == 0
    for row in report["episodes"]:
        s, b = row["search"], row["best_of_n"]
        assert s["stats"]["rounds"] >= 2 and s["stats"]["max_turn_depth"] >= 2  # the tree went past one turn
        assert b["n"] >= 2 and b["wm_forwards"] <= s["stats"]["wm_forwards"] <= 160
        assert s["best"]["return"] >= b["best"]["return"]
        assert len(s["best"]["turns"]) == len(b["best"]["turns"]) == 3  # whole episodes (the game ends at turn 3)
        # the best episode, replayed turn by turn in a fresh game of the same seed, earns the same rewards
        env = game.VowelGame()
        env.reset(seed=s["seed"])
        replay = [env.step(text)[1] for text in s["best"]["turns"]]
        assert replay == s["best"]["turn_rewards"] and sum(replay) == pytest.approx(s["best"]["return"])


@pytest.mark.parametrize("extra, word", [
    (["--environment", "builtin:nope"], "builtin:nope"),
    (["--environment", "builtin:guess", "--reward", "sentiment"], "reward"),
    ([], "reward"),
])
def test_search_bad_environment_input_exits_2(tiny_latent_dir, capsys, extra, word):
    assert main(["search", "--latent", str(tiny_latent_dir), *extra]) == 2
    assert word in capsys.readouterr().err
