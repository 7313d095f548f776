"""``reinlm env list|play|eval`` through reinlm.cli.main.main, as a user runs them."""

from __future__ import annotations

import io
import json

import pytest

from reinlm.cli.main import main
from reinlm.testing import save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("envcli") / "tiny", seed=1)


def test_list_json_names_builtins_and_adapters(capsys):
    assert main(["env", "list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["spec"] for r in out["builtins"]} == {"builtin:guess", "builtin:negotiate", "builtin:persuade"}
    assert {a["adapter"] for a in out["adapters"]} >= {"builtin", "textarena"}
    usable = {a["adapter"]: a["installed"] for a in out["adapters"]}
    assert usable["openenv"] and not usable["verifiers"]  # the OpenEnv adapter needs no package; verifiers: not wired


def test_play_reads_turns_from_stdin(capsys, monkeypatch):
    # seed 3: the hidden number is random.Random(3).randint(1, 10) = 4
    monkeypatch.setattr("sys.stdin", io.StringIO("7\n2\n4\n"))
    assert main(["env", "play", "builtin:guess", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "lower than 7" in out and "higher than 2" in out and "Correct!" in out
    assert "[reward 0.6, return 0.6, done]" in out


def test_eval_json_is_seeded(capsys, tiny_dir):
    argv = ["env", "eval", "builtin:negotiate", "--model", str(tiny_dir), "--episodes", "3", "--max-turns", "2",
            "--turn-tokens", "4", "--json", "--seed", "2"]
    assert main(argv) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b and a["episodes"] == 3 and a["mean_turns"] == 2.0 and 0 <= a["invalid_move_rate"] <= 1
    assert [len(t["turns"]) for t in a["samples"]] == [2, 2, 2]
    assert main(argv[:-1] + ["3"]) == 0  # another seed: other games, other samples
    c = json.loads(capsys.readouterr().out)
    assert c["samples"][0]["turns"] != a["samples"][0]["turns"]


def test_eval_a_latent_model_plays_its_own_generation(capsys, tiny_latent_dir):
    import torch

    from reinlm.envs.spec import resolve_environment
    from reinlm.latent.model import LatentActionModel
    from reinlm.rollout.multiturn import TurnFormat

    assert main(["env", "eval", "builtin:guess", "--latent", str(tiny_latent_dir), "--episodes", "2", "--max-turns",
                 "2", "--turn-tokens", "6", "--greedy", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["space"] == "latent" and a["model"] == str(tiny_latent_dir) and a["episodes"] == 2
    # its first turn is the latent model's greedy generation (policy actions, world-model tokens) from the first
    # observation
    lam = LatentActionModel.from_pretrained(tiny_latent_dir)
    ids = torch.tensor([TurnFormat(lam.tokenizer).first(resolve_environment("builtin:guess").make({}).reset(seed=0))])
    lam.set_action_sampling(greedy=True)
    out = lam.generate(ids, torch.ones_like(ids), max_new_tokens=6, return_dict=True)
    want = lam.tokenizer.decode(out.response_ids[0][out.response_mask[0].bool()], skip_special_tokens=True)
    assert a["samples"][0]["turns"][0] == want


@pytest.mark.parametrize("argv, word", [
    (["env", "eval", "builtin:chess"], "builtin:chess"),
    (["env", "play", "textarena:NoSuchGame-v0"], "NoSuchGame-v0"),
    (["env", "play", "builtin:guess", "--opponent", "random"], "one-player"),
    (["env", "eval", "builtin:guess", "--episodes", "0"], "episodes"),
])
def test_bad_input_exits_2_naming_it(capsys, tmp_path, monkeypatch, argv, word):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert word in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
