"""What `--reward` says to a new user (issue 23, item 7): a file without its function asks for ``:FUNCTION`` and
lists the functions in it; ``module:function`` finds ``module.py`` in the working directory (which the console
script does not put on sys.path); a misspelt registered reward gets a did-you-mean; the allowed forms name
MODULE:QUALNAME."""

from __future__ import annotations

import pytest

from reinlm.errors import ConfigError
from reinlm.rewards import parse_reward_spec

REWARDS = "def correctness(completions, **kw):\n    return [1.0 for _ in completions]\n\n\ndef fmt(completions, **kw):\n" \
          "    return [0.0 for _ in completions]\n"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_23.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_file_without_its_function_asks_for_one(workdir):
    with pytest.raises(ConfigError) as e:
        parse_reward_spec("my_rewards_23.py")
    msg = str(e.value)
    assert "is a Python file: name the function in it, my_rewards_23.py:FUNCTION (functions in it: correctness, fmt)" in msg
    assert "not a reward name" not in msg


def test_module_colon_function_finds_a_file_in_the_working_directory(workdir):
    rs = parse_reward_spec("my_rewards_23:correctness + 0.5*my_rewards_23:fmt")
    assert [(c.name, c.weight) for c in rs.components] == [("correctness", 1.0), ("fmt", 0.5)]
    assert rs.score(prompts=["a"], completions=["b"]).total.tolist() == [1.0]


def test_a_misspelt_reward_gets_a_did_you_mean_and_the_forms_name_modules():
    with pytest.raises(ConfigError) as e:
        parse_reward_spec("sentimnet")
    assert "(did you mean 'sentiment'?)" in str(e.value) and "MODULE:QUALNAME" in str(e.value)
