"""`reinlm reward`: table and JSON output, columns from flags, and errors as exit status 2."""

from __future__ import annotations

import json

import pytest

from reinlm.cli import main as cli_main
from reinlm.cli.main import main


@pytest.fixture(autouse=True)
def only_reward_command(monkeypatch):
    """Build the real `reinlm` parser with just this sub-command (others are tested in their own files)."""
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", ["reward"])


def run(capsys, *argv):
    code = main(["reward", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sentiment_table_orders_the_pair(capsys):
    code, out, _ = run(capsys, "--reward", "sentiment", "What a wonderful film", "A dull, painful mess")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["total", "text"]
    first, second = (float(line.split()[0]) for line in lines[1:])
    assert first == pytest.approx(0.78595, abs=1e-4) and second == pytest.approx(0.1018, abs=1e-4)


def test_json_prints_one_number_per_text(capsys):
    code, out, _ = run(capsys, "--reward", "0.5*sentiment+contains_words:red", "--json", "red and wonderful", "dull")
    assert code == 0
    values = json.loads(out)
    assert len(values) == 2 and values[0] > 1.0 > values[1] > 0.0


def test_several_components_get_their_own_columns(capsys):
    code, out, _ = run(capsys, "--reward", "contains_words:red + -1*target_length:5", "red", "blue sky")
    header, row1, row2 = out.strip().splitlines()
    assert header.split() == ["total", "contains_words", "target_length", "text"]
    assert [float(x) for x in row1.split()[:3]] == [1.0 + 2.0, 1.0, -2.0]
    assert [float(x) for x in row2.split()[:3]] == [3.0, 0.0, -3.0]


def test_prompt_and_reference_flags_become_reward_inputs(capsys):
    code, out, _ = run(capsys, "--reward", "rouge:kind=rouge1", "--reference", "the cat sat on the mat", "--json",
                       "a cat sat on a mat", "stocks fell")
    assert json.loads(out) == pytest.approx([2 / 3, 0.0])


def test_bad_spec_exits_2_with_one_paragraph(capsys):
    code, out, err = run(capsys, "--reward", "sentimnt", "x")
    assert code == 2 and out == ""
    assert "'sentimnt' is not a registered reward" in err and "contains_words" in err and "Traceback" not in err


NAN_FILE = '''
def half_nan(prompts, completions, **columns):
    return [float("nan") if "bad" in c else 1.0 for c in completions]
'''


def test_nan_reward_fails_by_default_and_is_skipped_on_request(capsys, tmp_path):
    path = tmp_path / "nan_reward.py"
    path.write_text(NAN_FILE)
    code, _, err = run(capsys, "--reward", f"{path}:half_nan", "fine", "a bad one")
    assert code == 2 and "'half_nan' returned nan on sample 1 (completion 'a bad one')" in err
    code, out, _ = run(capsys, "--reward", f"{path}:half_nan", "--on-error", "skip", "--json", "fine", "a bad one")
    assert code == 0 and json.loads(out) == [1.0, None]
    code, out, _ = run(capsys, "--reward", f"{path}:half_nan", "--on-error", "skip", "fine", "a bad one")
    assert "skipped" in out.splitlines()[2] and out.count("skipped: reward 'half_nan' returned nan") == 1


def test_a_weight_that_overflows_float32_is_refused(capsys):
    """Issue 26's fuzz: 1e38 * target_length:1 (= -10 on 'hello world') is -1e39, beyond float32: it printed -inf
    and exited 0. Values in range, weights in range, and yet the total is not: refused as training refuses it."""
    code, out, err = run(capsys, "--reward", "1e38*target_length:1", "hello world")
    err = " ".join(err.split())
    assert code == 2 and out == "" and "Traceback" not in err
    assert "the weighted total of sample 0 (completion 'hello world') is -inf" in err
    assert "1e+38 * -10 (target_length) overflows the float32 range" in err and "smaller weights" in err
    # two in-range terms whose sum overflows: 3e38 + 3e38
    code, _, err = run(capsys, "--reward", "3e38*contains_words:a+3e38*contains_words:b", "a b")
    err = " ".join(err.split())
    assert code == 2 and "is inf: 3e+38 * 1 (contains_words) + 3e+38 * 1 (contains_words_2)" in err
    # the largest weight that stays in range still scores: 3.4e37 * -10 = -3.4e38
    code, out, _ = run(capsys, "--reward", "3.4e37*target_length:1", "--json", "hello world")
    assert code == 0 and json.loads(out)[0] == pytest.approx(-3.4e38, rel=1e-6)
    code, out, err = run(capsys, "--reward", "1e38*target_length:1", "--on-error", "skip", "--json", "hello world", "a")
    assert code == 0 and json.loads(out) == [None, 0.0]


def test_yaml_config_with_flag_override(capsys, tmp_path):
    cfg = tmp_path / "reward.yaml"
    cfg.write_text("reward: contains_words:red\nprompt: ignored\n")
    assert json.loads(run(capsys, "--config", str(cfg), "--json", "red", "blue")[1]) == [1.0, 0.0]
    assert json.loads(run(capsys, "--config", str(cfg), "--reward", "target_length:3", "--json", "red")[1]) == [0.0]


def test_missing_reward_flag_is_a_clear_error(capsys):
    code, _, err = run(capsys, "x")
    assert code == 2 and "--reward SPEC" in err


DATA_REWARDS = '''
def correct(completions, answer, **kwargs):
    return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]

def by_ids(completion_ids, **kwargs):
    return [float(len(i)) for i in completion_ids]

def only_math(completions, task, log_metric, **kwargs):
    log_metric("math_rows", sum(t == "math" for t in task))
    return [1.0 if t == "math" else None for t in task]
'''


def test_data_file_passes_every_column_and_conversations(capsys, tmp_path):
    rewards = tmp_path / "data_rewards.py"
    rewards.write_text(DATA_REWARDS)
    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "2+2?"}], "completion": "4", "answer": "4", "task": "math",
             "completion_ids": [1, 2]},
            {"prompt": [{"role": "user", "content": "3+3?"}], "completion": [{"role": "assistant", "content": "7"}],
             "answer": "6", "task": "chat", "completion_ids": [5]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "--reward", f"{rewards}:correct + {rewards}:by_ids + {rewards}:only_math",
                         "--data", str(data), "--json")
    assert code == 0, err
    assert json.loads(out) == [1.0 + 2.0 + 1.0, 0.0 + 1.0]  # only_math returns None on the chat row (nansum)
    code, out, _ = run(capsys, "--reward", f"{rewards}:only_math", "--data", str(data))
    assert "log_metric math_rows: 1.0000" in out and out.splitlines()[2].split()[0] == "skipped"


def test_data_errors_and_tokenizer_for_completion_ids(capsys, tmp_path):
    rewards = tmp_path / "data_rewards.py"
    rewards.write_text(DATA_REWARDS)
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi", "completion": "hello there"}) + "\n")
    code, _, err = run(capsys, "--reward", f"{rewards}:by_ids", "--data", str(data))
    assert code == 2 and "'completion_ids'" in err and "--tokenizer" in err
    code, out, _ = run(capsys, "--reward", f"{rewards}:by_ids", "--data", str(data), "--tokenizer", "smollm2-135m",
                       "--json")
    assert code == 0 and json.loads(out) == [2.0]  # "hello there" is two SmolLM2 tokens
    code, _, err = run(capsys, "--reward", "sentiment", "--data", str(data), "extra text")
    assert code == 2 and "one of them" in err
    data.write_text(json.dumps({"prompt": "x", "text": "no completion key"}) + "\n")
    code, _, err = run(capsys, "--reward", "sentiment", "--data", str(data))
    assert code == 2 and "row 0 has completion None" in " ".join(err.split())


def test_error_messages_never_split_a_command_flag_or_path_across_lines(capsys):
    """The error text is wrapped at 100 columns, but a hyphenated word (`import-bwarea`, `--latent-train`) or a long
    path stays whole on one line: a user copies them. The word lands wherever the path before it ends."""
    from reinlm.cli.main import _print_error

    for pad in range(1, 60):
        word = "`reinlm latent import-bwarea --latent-train`"
        _print_error("x" * pad + " " + "a" * 40 + " " + word + " /tmp/" + "p" * 120 + " end")
        lines = capsys.readouterr().err.splitlines()
        for whole in ("import-bwarea", "--latent-train`", "/tmp/" + "p" * 120):
            assert any(whole in line for line in lines), (pad, whole, lines)
