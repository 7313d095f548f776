"""Tests for reinlm.data: built-in sets, file loaders, splits, chat templates, length checks."""

from __future__ import annotations

import json

import pytest

from reinlm.data import BUILTIN_SETS, PromptSet, apply_chat_template, check_prompt_lengths, context_length, load_prompts
from reinlm.errors import ReinlmError


def test_builtin_sets_sizes_and_columns():
    neutral = load_prompts("builtin:neutral")
    reviews = load_prompts("builtin:reviews")
    summaries = load_prompts("builtin:summaries")
    assert len(neutral) >= 200 and len(reviews) >= 100 and len(summaries) >= 30
    assert neutral[0] == "The old lighthouse on the hill"
    assert len(set(neutral.prompts)) == len(neutral) and len(set(reviews.prompts)) == len(reviews)
    assert set(summaries.columns) == {"reference", "passage"}
    for prompt, ref, passage in zip(summaries, summaries.columns["reference"], summaries.columns["passage"]):
        assert prompt == passage + "\nTL;DR:"
        assert 3 <= passage.count(". ") + 1 <= 5 and len(ref) < len(passage)
    assert neutral.source == "builtin:neutral"


def test_unknown_builtin_lists_sets():
    with pytest.raises(ReinlmError) as e:
        load_prompts("builtin:poems")
    assert "'poems'" in str(e.value) and all(f"builtin:{k}" in str(e.value) for k in BUILTIN_SETS)


def test_limit():
    assert load_prompts("builtin:reviews", limit=5).prompts == load_prompts("builtin:reviews").prompts[:5]
    with pytest.raises(ReinlmError, match="limit"):
        load_prompts("builtin:reviews", limit=0)


def test_txt_ignores_blank_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("  first prompt \n\n\nsecond prompt\n   \n")
    assert load_prompts(f).prompts == ["first prompt", "second prompt"]


def test_jsonl_custom_column_keeps_others(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"text": "a", "label": 1}) + "\n\n" + json.dumps({"text": "b", "label": 0}) + "\n")
    ps = load_prompts(f, column="text")
    assert ps.prompts == ["a", "b"] and ps.columns == {"label": [1, 0]}


def test_csv_and_parquet(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"prompt": ["x y", "z"], "reference": ["r1", "r2"], "score": [0.5, float("nan")]})
    df.to_csv(tmp_path / "p.csv", index=False)
    df.to_parquet(tmp_path / "p.parquet")
    for name in ("p.csv", "p.parquet"):
        ps = load_prompts(tmp_path / name)
        assert ps.prompts == ["x y", "z"] and ps.columns["reference"] == ["r1", "r2"]
        assert ps.columns["score"][0] == 0.5


def test_save_to_disk_dir_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["q1", "q2", "q3"], "answer": ["a1", "a2", "a3"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    ps = load_prompts(tmp_path / "ds", column="question")
    assert ps.prompts == ["q1", "q2", "q3"] and ps.columns == {"answer": ["a1", "a2", "a3"]}
    datasets.DatasetDict({"train": ds.select([0]), "test": ds.select([1, 2])}).save_to_disk(str(tmp_path / "dd"))
    assert load_prompts(tmp_path / "dd", column="question").prompts == ["q1"]


def test_missing_column_lists_present(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"text": "a", "label": 1}) + "\n")
    with pytest.raises(ReinlmError) as e:
        load_prompts(f)
    assert "'prompt'" in str(e.value) and "text, label" in str(e.value)


@pytest.mark.parametrize("content,suffix", [("", ".txt"), ("\n \n", ".txt"), ("", ".jsonl"), ("", ".csv")])
def test_empty_files_raise(tmp_path, content, suffix):
    f = tmp_path / f"empty{suffix}"
    f.write_text(content)
    with pytest.raises(ReinlmError, match="holds no prompts"):
        load_prompts(f)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(ReinlmError, match="does not exist.*builtin:neutral"):
        load_prompts(tmp_path / "nope.txt")
    (tmp_path / "p.xml").write_text("<a/>")
    with pytest.raises(ReinlmError, match=r"\.xml.*\.jsonl"):
        load_prompts(tmp_path / "p.xml")


def test_bad_rows_are_not_skipped(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": null}\n')
    with pytest.raises(ReinlmError, match="row 1 has None"):
        load_prompts(f)
    f.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(ReinlmError, match="line 2 is not valid JSON"):
        load_prompts(f)


def test_hf_spec_errors_cleanly():
    with pytest.raises(ReinlmError, match="hf:NAME"):
        load_prompts("hf:")
    with pytest.raises(ReinlmError, match="no-such-dataset-xyz"):
        load_prompts("hf:no-such-dataset-xyz/nothing:test")


def test_split_is_seeded_disjoint_and_ordered():
    ps = PromptSet([f"p{i}" for i in range(10)], {"ref": list(range(10))})
    train, held = ps.split(0.3, seed=1)
    assert len(train) == 7 and len(held) == 3
    assert sorted(train.prompts + held.prompts, key=lambda s: int(s[1:])) == ps.prompts
    assert held.columns["ref"] == [int(p[1:]) for p in held.prompts] == sorted(held.columns["ref"])
    assert ps.split(0.3, seed=1)[1].prompts == held.prompts
    assert ps.split(0.3, seed=2)[1].prompts != held.prompts or ps.split(0.3, seed=3)[1].prompts != held.prompts
    assert len(PromptSet(["a", "b"]).split(0.01)[1]) == 1 and len(ps.split(0.0)[1]) == 0
    with pytest.raises(ReinlmError, match="held_out_fraction"):
        ps.split(1.0)


def test_promptset_column_length_checked():
    with pytest.raises(ReinlmError, match="column 'ref'"):
        PromptSet(["a", "b"], {"ref": [1]})
    assert PromptSet(["a", "b", "c"], {"r": [1, 2, 3]}).subset([2, 0]).columns == {"r": [3, 1]}


def test_chat_template(smol_tokenizer):
    out = apply_chat_template(["Hello"], smol_tokenizer)
    assert out[0].endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    with_sys = apply_chat_template(["Hi"], smol_tokenizer, system="Be brief.")
    assert with_sys[0].startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_chat_template_missing(smol_tokenizer):
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with pytest.raises(ReinlmError, match="no chat template"):
        apply_chat_template(["Hello"], tok)


def test_check_prompt_lengths(smol_tokenizer, tiny_lm):
    long = " ".join(f"word{i}" for i in range(100))
    n_long = len(smol_tokenizer(long)["input_ids"])
    assert n_long > 100
    short = "The old lighthouse"
    assert check_prompt_lengths([short, long], smol_tokenizer, None, 20, context=1000) == [short, long]
    with pytest.raises(ReinlmError) as e:
        check_prompt_lengths([short, long], smol_tokenizer, None, 20, context=100)
    assert "prompt 1" in str(e.value) and f"{n_long} tokens" in str(e.value) and "limit is 80" in str(e.value)
    cut = check_prompt_lengths([short, long], smol_tokenizer, 32, 20, context=100, truncate=True)
    assert cut[0] == short
    assert long.endswith(cut[1]) and 28 <= len(smol_tokenizer(cut[1])["input_ids"]) <= 32
    assert cut[1].endswith("word99")
    with pytest.raises(ReinlmError, match="max_new_tokens"):
        check_prompt_lengths([short], smol_tokenizer, None, 100, context=100)
    assert context_length(tiny_lm[0]) == 512


# ---------------------------------------------------------------------------------------------- issue 13: TRL data


def _local_hub_dataset(root):
    """A dataset directory with two configs declared in its README (loads with datasets.load_dataset, offline)."""
    for cfg, split, rows in [("main", "train", [("q1", "1"), ("q2", "2")]), ("main", "test", [("t1", "9")]),
                             ("socratic", "train", [("s1", "3")])]:
        (root / cfg).mkdir(parents=True, exist_ok=True)
        (root / cfg / f"{split}.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                                           for q, a in rows))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train.jsonl\n"
        "  - split: test\n    path: main/test.jsonl\n- config_name: socratic\n  data_files:\n  - split: train\n"
        "    path: socratic/train.jsonl\n---\n")
    return root


def test_hf_spec_parses_config_and_split():
    from reinlm.data.prompts import parse_hf_spec

    assert parse_hf_spec("openai/gsm8k") == ("openai/gsm8k", None, "train")
    assert parse_hf_spec("openai/gsm8k:main") == ("openai/gsm8k", "main", "train")
    assert parse_hf_spec("stanfordnlp/imdb:test") == ("stanfordnlp/imdb", None, "test")
    assert parse_hf_spec("imdb:train[:10%]") == ("imdb", None, "train[:10%]")
    assert parse_hf_spec("openai/gsm8k:main:test") == ("openai/gsm8k", "main", "test")
    assert parse_hf_spec("x::validation") == ("x", None, "validation")
    with pytest.raises(ReinlmError, match="hf:NAME:CONFIG:SPLIT"):
        parse_hf_spec("a:b:c:d")


def test_hf_dataset_with_config_and_split_and_renamed_columns(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = _local_hub_dataset(tmp_path / "gsm")
    ps = load_prompts(f"hf:{root}:main", column="question")
    assert ps.prompts == ["q1", "q2"] and ps.columns == {"answer": ["1", "2"]}
    assert load_prompts(f"hf:{root}:main:test", column="question").prompts == ["t1"]
    renamed = load_prompts(f"hf:{root}:socratic", rename="question=prompt,answer=solution")
    assert renamed.prompts == ["s1"] and renamed.columns == {"solution": ["3"]}
    with pytest.raises(ReinlmError, match=r"config default.*'main', 'socratic'"):
        load_prompts(f"hf:{root}:test", column="question")  # a split without a config: the configs are listed


def test_conversational_jsonl_keeps_message_lists(tmp_path):
    f = tmp_path / "chat.jsonl"
    rows = [{"prompt": [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "2+2?"}],
             "answer": "4"},
            {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = load_prompts(f)
    assert ps.conversational and ps.prompts[1] == [{"role": "user", "content": "3+3?"}]
    assert ps.columns == {"answer": ["4", "6"]}
    f.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "plain", "answer": "1"}) + "\n")
    with pytest.raises(ReinlmError, match="mixes text prompts and message lists"):
        load_prompts(f)
    f.write_text(json.dumps({"prompt": [{"role": "user", "text": "no content key"}]}) + "\n")
    with pytest.raises(ReinlmError, match="row 0 has a message list whose message 0"):
        load_prompts(f)


def test_python_objects_become_prompt_sets():
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["a", "b"], "answer": ["1", "2"]})
    ps = load_prompts(ds, rename={"question": "prompt"})
    assert ps.prompts == ["a", "b"] and ps.columns == {"answer": ["1", "2"]}
    assert ps.source.startswith("datasets.Dataset(fingerprint=")
    assert load_prompts(["x", "y"]).prompts == ["x", "y"]
    dicts = load_prompts([{"prompt": "x", "ref": 1}, {"prompt": "y", "ref": 2}])
    assert dicts.columns == {"ref": [1, 2]} and dicts.fingerprint() == load_prompts(
        {"prompt": ["x", "y"], "ref": [1, 2]}).fingerprint()
    assert dicts.fingerprint() != load_prompts([{"prompt": "x", "ref": 1}, {"prompt": "y", "ref": 3}]).fingerprint()
    conv = load_prompts([[{"role": "user", "content": "hi"}]])
    assert conv.conversational
    with pytest.raises(ReinlmError, match="allowed: a list of strings"):
        load_prompts([1, 2])
    with pytest.raises(ReinlmError, match="got a int"):
        load_prompts(3)


def test_column_names_trl_reserves(tmp_path):
    from reinlm.data.prompts import parse_column_map

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "c", "completions": "x"}) + "\n")
    with pytest.raises(ReinlmError, match="column named 'completions'"):
        load_prompts(f)
    ps = load_prompts(f, rename="completions=other")
    assert ps.columns == {"other": ["x"]}  # 'completion' is not a reward column (as in TRL)
    with pytest.raises(ReinlmError, match="has no column 'nope'"):
        load_prompts(f, rename="nope=x")
    with pytest.raises(ReinlmError, match="OLD=NEW"):
        parse_column_map("a:b")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_non_utf8_files_name_the_line_and_byte(tmp_path, suffix):
    f = tmp_path / f"latin1{suffix}"
    lines = {".txt": ["first", "caf\u00e9 au lait"], ".jsonl": ['{"prompt": "ok"}', '{"prompt": "caf\u00e9"}'],
             ".csv": ["prompt", "caf\u00e9"]}[suffix]
    f.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(ReinlmError, match=r"is not UTF-8 text: line 2, byte \d+ .* is 0xe9.*iconv"):
        load_prompts(f)
    f.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8"))  # a byte-order mark is fine
    assert len(load_prompts(f)) in (1, 2)


def test_held_out_line_says_how_many_and_how_to_change_it():
    from reinlm.data import held_out_line

    line = held_out_line(102, 20, 0.2, 8)
    assert "holding out 20 of 102" in line and "8 of them used" in line and "--held-out-fraction 0 trains" in line
    line = held_out_line(12, 0, 0.0, 8)
    assert "training on all 12" in line and "reuses 8 of them" in line and "--held-out-fraction 0.2" in line


def test_render_prompts_conversations_and_chat_template_flag(smol_tokenizer):
    from reinlm.data import as_conversations, render_prompts

    conv = [{"role": "user", "content": "2+2?"}]
    assert render_prompts([conv], smol_tokenizer) == apply_chat_template(["2+2?"], smol_tokenizer)
    assert render_prompts([conv], smol_tokenizer)[0].endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompts(["plain"], smol_tokenizer) == ["plain"]
    assert render_prompts(["plain"], smol_tokenizer, chat_template=True) == apply_chat_template(["plain"], smol_tokenizer)
    assert as_conversations(["plain"], chat_template=True) == [[{"role": "user", "content": "plain"}]]
    assert as_conversations(["plain"]) == ["plain"]
