"""A TRL user's files train unchanged with `reinlm train --reward FILE.py:fn` (tiny random model, one step each):
rewards taking only completions, completion_ids, async, multi-task with None, TRL's shipped rewards; a
conversational JSONL; --chat-template on text prompts; log_metric / log_extra reach metrics.jsonl and samples.jsonl;
LoRA runs write a portable adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reinlm.cli.main import main
from reinlm.utils.jsonio import read_jsonl

REWARDS = '''
import asyncio
from trl.rewards import think_format_reward, get_soft_overlong_punishment

overlong = get_soft_overlong_punishment(max_completion_len=6, soft_punish_cache=2)


def only_completions(completions, **kwargs):
    return [float(len(c[0]["content"]) if isinstance(c, list) else len(c)) / 50 for c in completions]


def by_ids(completion_ids, **kwargs):
    return [len(ids) / 10 for ids in completion_ids]


async def judge(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return [0.5 for _ in completions]


def math_only(completions, task, answer, log_metric, log_extra, **kwargs):
    texts = [c[0]["content"] for c in completions]
    log_metric("math_rows", sum(t == "math" for t in task) / len(task))
    log_extra("task_seen", list(task))
    return [None if t != "math" else float(a in x) for x, t, a in zip(texts, task, answer)]


def chat_only(completions, task, trainer_state, log_metric, **kwargs):
    log_metric("max_steps_seen", trainer_state.max_steps)
    log_metric("global_step_seen", trainer_state.global_step)
    return [None if t != "chat" else 1.0 for t in task]
'''

ROWS = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} + {i}?"}],
     "answer": str(2 * i), "task": "math"} for i in range(3)
] + [{"prompt": [{"role": "user", "content": f"Say hello to friend {i}."}], "answer": "", "task": "chat"}
     for i in range(3)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return Path(save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-model"), seed=0))


def train(tiny_model_dir, out, *extra) -> int:
    return main(["train", "--model", str(tiny_model_dir), "--steps", "1", "--batch-prompts", "2",
                 "--samples-per-prompt", "2", "--max-new-tokens", "6", "--seed", "0", "--out", str(out),
                 "--device", "cpu", "--progress", "false", "--eval-prompts", "1", "--eval-samples", "2",
                 "--log", "none", "--sample-every", "1", *extra])


def test_trl_rewards_and_conversational_jsonl_train_a_step(tiny_model_dir, tmp_path, capsys):
    rewards = tmp_path / "trl_style.py"
    rewards.write_text(REWARDS)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    spec = " + ".join(f"{rewards}:{fn}" for fn in ("only_completions", "by_ids", "judge", "math_only", "chat_only",
                                                   "think_format_reward", "overlong"))
    assert train(tiny_model_dir, tmp_path / "run", "--reward", spec, "--prompts", str(data),
                 "--held-out-fraction", "0.2") == 0
    err = capsys.readouterr().err
    assert "prompts: holding out 1 of 6" in err and "--held-out-fraction 0 trains on all" in err
    assert "grpo/token step 1/1" in err  # --progress false: one plain line per step
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    for name in ("only_completions", "by_ids", "judge", "think_format_reward", "soft_overlong_punishment_reward"):
        assert f"reward/{name}/mean" in row, name
    assert "user/math_rows" in row and row["reward/invalid_frac"] == 0.0
    assert (row["user/max_steps_seen"], row["user/global_step_seen"]) == (1, 0)
    sample = read_jsonl(tmp_path / "run" / "samples.jsonl")[0]
    assert sample["prompt"].startswith("<|im_start|>system\nBe brief.") or sample["prompt"].startswith("<|im_start|>")
    assert sample["extra"]["task_seen"] in ("math", "chat")


def test_text_prompts_with_chat_template_and_a_trl_format_reward(tiny_model_dir, tmp_path):
    rewards = tmp_path / "trl_style.py"
    rewards.write_text(REWARDS)
    prompts = tmp_path / "plain.txt"
    prompts.write_text("Tell me a joke.\nName a colour.\nCount to three.\n")
    assert train(tiny_model_dir, tmp_path / "chat", "--reward", f"{rewards}:only_completions + {rewards}:think_format_reward",
                 "--prompts", str(prompts), "--chat-template", "true", "--held-out-fraction", "0") == 0
    sample = read_jsonl(tmp_path / "chat" / "samples.jsonl")[0]
    assert "<|im_start|>user\n" in sample["prompt"] and sample["prompt"].endswith("<|im_start|>assistant\n")
    # without the flag the same prompts are plain text; TRL's format reward still works (it gets messages)
    assert train(tiny_model_dir, tmp_path / "plain", "--reward", f"{rewards}:think_format_reward",
                 "--prompts", str(prompts), "--held-out-fraction", "0") == 0
    assert "<|im_start|>" not in read_jsonl(tmp_path / "plain" / "samples.jsonl")[0]["prompt"]


def test_lora_run_writes_a_portable_adapter(tiny_model_dir, tmp_path, smol_tokenizer):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from reinlm.hub import load_causal_lm

    out = tmp_path / "lora"
    space_share = Path(__file__).parent / "assets" / "toy_rewards.py"
    assert train(tiny_model_dir, out, "--reward", f"{space_share}:space_share", "--lora-r", "4", "--lora-targets", "all-linear",
                 "--lr", "1e-2", "--save-every", "1", "--steps", "2") == 0
    conf = json.loads((out / "final" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())  # a path PEFT can load
    assert sorted({m.split(".")[-1] for m in conf["target_modules"]}) == ["down_proj", "gate_proj", "k_proj", "o_proj",
                                                                         "q_proj", "up_proj", "v_proj"]
    ckpt_conf = json.loads((out / "checkpoints" / "step-2" / "policy" / "adapter_config.json").read_text())
    assert ckpt_conf["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    assert not (out / "final" / "merged").exists()  # the merged copy only with --lora-save-merged
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 200, 3000]])
    before = base(ids).logits
    adapted = PeftModel.from_pretrained(base, out / "final")
    after = adapted(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)  # the adapter was trained
    from peft import AutoPeftModelForCausalLM

    plain = AutoPeftModelForCausalLM.from_pretrained(out / "final")  # plain PEFT finds the base by itself
    assert torch.allclose(plain(ids).logits, after, atol=1e-5)
    merged, _ = load_causal_lm(str(out), device="cpu")  # a run dir loads its adapter merged into the base
    assert torch.allclose(merged(ids).logits, after, atol=1e-4)


def test_samples_no_reward_scores_are_invalid_and_counted(tiny_model_dir, tmp_path):
    rewards = tmp_path / "trl_style.py"
    rewards.write_text(REWARDS)
    data = tmp_path / "two.jsonl"
    rows = [ROWS[0], {"prompt": [{"role": "user", "content": "Write a haiku."}], "answer": "", "task": "poetry"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert train(tiny_model_dir, tmp_path / "run", "--reward", f"{rewards}:math_only", "--prompts", str(data),
                 "--held-out-fraction", "0") == 0
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["reward/invalid_frac"] == 0.5  # the poetry prompt's 2 samples: no reward applies (TRL: unscorable)


def test_conversational_prompts_in_latent_space_and_in_generate(tiny_latent_dir, tiny_model_dir, tmp_path, capsys):
    rewards = tmp_path / "trl_style.py"
    rewards.write_text(REWARDS)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    code = main(["train", "--space", "latent", "--latent", str(tiny_latent_dir), "--reward",
                 f"{rewards}:math_only + {rewards}:chat_only", "--prompts", str(data), "--steps", "1",
                 "--batch-prompts", "2", "--samples-per-prompt", "2", "--max-new-tokens", "4", "--out",
                 str(tmp_path / "latent"), "--device", "cpu", "--progress", "false", "--eval-prompts", "0",
                 "--log", "none", "--sample-every", "1", "--held-out-fraction", "0"])
    assert code == 0
    assert read_jsonl(tmp_path / "latent" / "samples.jsonl")[0]["prompt"].startswith("<|im_start|>")
    capsys.readouterr()
    assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(data), "--limit", "1",
                 "--max-new-tokens", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["prompt"] == ROWS[0]["prompt"]  # the conversation as given; the model saw it rendered
