"""On-policy distillation end to end (tiny random models with the SmolLM2 tokenizer, CPU): ``reinlm train --algo
distill --teacher DIR`` moves the student toward the teacher on held-out prompts; GKD's ``--lmbda`` mixes in
dataset steps; ``--teacher`` beside a reward adds the distillation loss; bad settings exit 2 naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reinlm.cli.main import main
from reinlm.utils.jsonio import read_jsonl

ASSETS = Path(__file__).parent / "assets"
HELD_OUT = ["The river at dawn", "My favourite tool is", "Tell me about the moon", "Once upon a time"]


def teacher_from(student, tokenizer, alpha: float = 3.0):
    """The student with a preference built in: the LM-head rows of 16 common tokens moved by alpha along the mean
    final hidden state u, so their logits rise by alpha h.u (about 3-5 per unit of alpha in every context):
    most of the teacher's mass goes to them, a direction the student can learn."""
    import copy

    from reinlm.rollout.token import encode_prompts

    teacher = copy.deepcopy(student)
    ids, mask = encode_prompts(tokenizer, HELD_OUT + ["The old lighthouse on the hill"], tokenizer.pad_token_id)
    with torch.no_grad():
        h = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][mask.bool()]
        u = h.mean(0) / h.mean(0).norm()
        favoured = sorted(set(tokenizer(" the cat sat on a mat and ran to the old red house by")["input_ids"]))
        teacher.lm_head.weight[favoured] += alpha * u
    return teacher


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, smol_tokenizer):
    """A student (a tiny random model) and its teacher (:func:`teacher_from`) saved as model directories."""
    from reinlm.testing import tiny_causal_lm

    root = tmp_path_factory.mktemp("distill")
    student = tiny_causal_lm(smol_tokenizer, seed=0)
    for name, model in (("student", student), ("teacher", teacher_from(student, smol_tokenizer))):
        model.save_pretrained(root / name)
        smol_tokenizer.save_pretrained(root / name)
    return root / "student", root / "teacher"


def held_out_divergence(student_dir, teacher_dir, beta: float, seed: int = 0) -> float:
    """Mean per-token D_beta(teacher, student) (beta 0: KL(teacher || student)) on the student's own samples
    (8 tokens, 4 per prompt) of HELD_OUT."""
    from reinlm.algorithms.distill import per_token_divergence
    from reinlm.hub import load_causal_lm
    from reinlm.rollout.token import SamplingConfig, generate_rollouts, token_logprobs

    s, tok = load_causal_lm(str(student_dir), device="cpu")
    t, _ = load_causal_lm(str(teacher_dir), device="cpu")
    torch.manual_seed(seed)
    batch = generate_rollouts(s, tok, HELD_OUT, 4, SamplingConfig(max_new_tokens=8))
    R = batch.response_ids.shape[1]
    with torch.no_grad():
        ds = token_logprobs(s, batch.input_ids, batch.attention_mask, R, return_dist=True).dist
        dt = token_logprobs(t, batch.input_ids, batch.attention_mask, R, return_dist=True).dist
    d = per_token_divergence(ds, dt, beta=beta)
    m = batch.response_mask.float()
    return float((d * m).sum() / m.sum())


def _args(student, teacher, out, *extra):
    return ["train", "--model", str(student), "--algo", "distill", "--teacher", str(teacher), "--reward",
            f"{ASSETS / 'toy_rewards.py'}:space_share", "--prompts", "builtin:neutral", "--steps", "8",
            "--batch-prompts", "4", "--samples-per-prompt", "4", "--max-new-tokens", "8", "--device", "cpu",
            "--out", str(out), "--progress", "false", "--eval-prompts", "0", "--log", "none", "--lr", "1e-2",
            "--kl-coef", "0", "--save-every", "100", *extra]


def test_distill_moves_the_student_toward_the_teacher(dirs, tmp_path):
    student, teacher = dirs
    # forward KL (beta 0): its gradient p_S - p_T reaches the teacher's favoured tokens even where the near-uniform
    # student gives them almost no mass (the reverse KL's p_S-weighted gradient barely does in 8 steps)
    before = held_out_divergence(student, teacher, beta=0.0)
    args = _args(student, teacher, tmp_path / "run", "--distill-beta", "0")
    args[args.index("--steps") + 1], args[args.index("--lr") + 1] = "4", "2e-2"  # 8 steps at 1e-2: 2.04 -> 0.29
    assert main(args) == 0
    after = held_out_divergence(tmp_path / "run" / "final", teacher, beta=0.0)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 5))
    assert all(r["loss/distill"] > 0 and "reward/mean" in r for r in rows)  # rewards logged, not trained on
    # the held-out KL(teacher || student) falls: measured 2.04 -> 0.61 nats per token
    assert after < 0.5 * before, (before, after)
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert f"teacher: {teacher}" in cfg and "distill_beta: 0.0" in cfg


def test_teacher_beside_a_reward_adds_the_distillation_loss(dirs, tmp_path):
    student, teacher = dirs
    args = _args(student, teacher, tmp_path / "run", "--distill-coef", "0.5")
    args[args.index("distill")] = "grpo"
    assert main(args[:args.index("--steps") + 1] + ["1"] + args[args.index("--steps") + 2:]) == 0
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert row["loss/distill"] > 0 and "loss/policy" in row
    # total = policy + 0.5 x distill (one optimiser step, no KL, no entropy bonus)
    assert row["loss/total"] == pytest.approx(row["loss/policy"] + 0.5 * row["loss/distill"], rel=1e-5)


def test_lmbda_mixes_dataset_steps(dirs, tmp_path, smol_tokenizer):
    student, teacher = dirs
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": " a calm answer."}) + "\n" for p in HELD_OUT))
    args = _args(student, teacher, tmp_path / "run", "--lmbda", "0.5")
    args[args.index("builtin:neutral")] = str(data)
    args[args.index("--steps") + 1] = "3"  # seed 0: on-policy, on-policy, dataset
    assert main(args) == 0
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    on = [r["distill/on_policy"] for r in rows]
    assert set(on) == {0.0, 1.0}, on  # seed 0: both kinds of step
    from reinlm.trainer.teacher import on_policy_step

    assert on == [float(on_policy_step(0, s, 0.5)) for s in range(len(rows))]
    # a dataset step trains on the data's completion, EOS appended: its tokens, one row per prompt
    n_tokens = len(smol_tokenizer(" a calm answer.", add_special_tokens=False)["input_ids"]) + 1
    for r in rows:
        if r["distill/on_policy"] == 0.0:
            assert r["response/length_mean"] == n_tokens and r["loss/distill"] > 0


@pytest.mark.parametrize("extra,words", [
    (["--algo", "distill"], "--algo distill needs --teacher MODEL"),
    (["--lmbda", "0.5", "--teacher", "smollm2-135m"], "lmbda: got 0.5 with --algo grpo"),
    (["--lmbda", "1.5"], "allowed: a finite number >= 0 and <= 1"),
    (["--distill-beta", "-0.1"], "allowed: a finite number >= 0 and <= 1"),
    (["--algo", "distill", "--teacher", "smollm2-135m", "--lmbda", "0.5"], "no 'completion' column"),
])
def test_bad_distill_settings_exit_2(tmp_path, capsys, extra, words):
    code = main(["train", *extra, "--reward", f"{ASSETS / 'toy_rewards.py'}:space_share",
                 "--out", str(tmp_path / "run"), "--progress", "false"])
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_dry_run_checks_the_teacher(tmp_path, capsys):
    code = main(["train", "--dry-run", "--algo", "distill", "--teacher", str(tmp_path / "no-such-teacher"),
                 "--reward", f"{ASSETS / 'toy_rewards.py'}:space_share", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "teacher: " in err and "no-such-teacher" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_teacher_with_another_tokenizer_is_refused(dirs, tmp_path, capsys):
    from transformers import AutoTokenizer

    student, teacher = dirs
    other = tmp_path / "other"
    import shutil

    shutil.copytree(teacher, other)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<new-token-xyz>"])
    tok.save_pretrained(str(other))
    assert main(_args(student, other, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "teacher:" in err and "another tokenizer" in err and "Traceback" not in err
