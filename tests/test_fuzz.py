"""The fuzz table of issue 18: bad inputs to every command give exit status 2, one paragraph that names the
problem (a keyword below), no traceback, and write nothing.

Each case runs the CLI in this process (``reinlm.cli.main.main``), so a traceback would surface as an
exception and fail the test. ``{name}`` in an argument is a file from the ``inputs`` fixture. Cases that load
a model are marked slow; the rest run in `make test` (about a second each at most).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
REWARD = f"{ASSETS / 'toy_rewards.py'}:space_share"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smol_tokenizer):
    """Bad (and a few good) input files: names -> paths."""
    from reinlm.testing import save_tiny_model

    root = tmp_path_factory.mktemp("fuzz-inputs")
    files = {
        "malformed_yaml": b"steps: [1\n", "latin1_yaml": b"steps: 2\nreward: caf\xe9\n", "empty_yaml": b"",
        "list_yaml": b"- 1\n- 2\n", "typo_yaml": b"stpes: 2\n", "abc_steps_yaml": b"steps: abc\n",
        "float_steps_yaml": b"steps: 2.5\n", "null_steps_yaml": b"steps: null\n", "fast_lr_yaml": b'lr: "fast"\n',
        "list_temp_yaml": b"temperature: [1, 2]\n", "reward5_yaml": b"reward: 5\n", "trl_unsup_yaml": b"logging_steps: 10\n",
        "num_actions_abc_yaml": b"num_actions: abc\n", "dup_yaml": b"steps: 1\nsteps: 2\n",
        "latin1_txt": b"a prompt\ncaf\xe9 au lait\n", "good_txt": b"one document\nanother document\n", "binary": bytes(range(256)) * 64,
        "broken_jsonl": b'{"prompt": "ok"}\n{"prompt": "broken\n', "latin1_jsonl": b'{"prompt": "caf\xe9"}\n',
        "list_jsonl": b'[1, 2]\n', "afile": b"I am a file, not a directory\n",
        "gens_broken": b'{"prompt": "p", "completion": "c"}\n{"prompt": \n',
    }
    paths = {}
    for name, data in files.items():
        suffix = {"yaml": ".yaml", "txt": ".txt", "jsonl": ".jsonl"}.get(name.rsplit("_", 1)[-1], ".jsonl"
                                                                            if name.startswith("gens") else "")
        p = root / f"{name}{suffix}"
        p.write_bytes(data)
        paths[name] = p
    tiny = Path(save_tiny_model(smol_tokenizer, root / "tiny", seed=1))
    paths["tiny"] = tiny
    bad = root / "badconfig"
    shutil.copytree(tiny, bad)
    (bad / "config.json").write_text("{this is not json")
    paths["badconfig"] = bad
    trunc = root / "truncated"
    shutil.copytree(tiny, trunc)
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[:4096])
    paths["truncated"] = trunc
    garbage = root / "garbage"
    shutil.copytree(tiny, garbage)
    (garbage / "model.safetensors").write_bytes(b"\x00" * 64 + b"garbage" * 100)
    paths["garbage"] = garbage
    empty_run = root / "empty_run"
    empty_run.mkdir()
    (empty_run / "config.yaml").write_text("")
    paths["empty_run"] = empty_run
    corrupt_run = root / "corrupt_run"
    corrupt_run.mkdir()
    (corrupt_run / "config.yaml").write_bytes(b"steps: 3\nlr: [\x00\xff\n")
    paths["corrupt_run"] = corrupt_run
    nockpt_run = root / "nockpt_run"
    nockpt_run.mkdir()
    (nockpt_run / "config.yaml").write_text(f"model: {tiny}\nreward: {REWARD}\nprompts: builtin:neutral\n")
    paths["nockpt_run"] = nockpt_run
    rewards = root / "bad_rewards.py"
    rewards.write_text("import sys\n"
                       "def huge_int(completions, **kw):\n    return [10**400 for _ in completions]\n"
                       "def over_f32(completions, **kw):\n    return [1e39 for _ in completions]\n"
                       "def exits(completions, **kw):\n    sys.exit(3)\n"
                       "def nan(completions, **kw):\n    return [float('nan') for _ in completions]\n")
    paths["bad_rewards"] = rewards
    (root / "latin1_reward.py").write_bytes(b"def r(completions, **kw):\n    return [len('caf\xe9') for _ in completions]\n")
    (root / "syntax_reward.py").write_text("def r(completions, **kw)\n    return [1.0]\n")
    paths["latin1_reward"], paths["syntax_reward"] = root / "latin1_reward.py", root / "syntax_reward.py"
    run_bad_eval = root / "run_bad_eval"
    (run_bad_eval / "checkpoints").mkdir(parents=True)
    (run_bad_eval / "config.yaml").write_text("steps: 1\n")
    (run_bad_eval / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')
    (run_bad_eval / "train_eval.json").write_text('{"before": {"reward_mean": 0.1')
    paths["run_bad_eval"] = run_bad_eval
    lat = root / "latent_badcfg"
    lat.mkdir()
    (lat / "config.json").write_text("{oops")
    (lat / "heads.safetensors").write_bytes(b"")
    paths["latent_badcfg"] = lat
    paths["under_file"] = paths["afile"] / "sub" / "run"
    paths["missing"] = root / "does-not-exist"
    return paths


T = ["train", "--model", "{tiny}", "--reward", REWARD, "--prompts", "builtin:neutral", "--device", "cpu",
     "--progress", "false", "--log", "none", "--out", "{out}"]

# (argv, keywords the message must contain[, why the run directory may exist]); "{out}" is a fresh path that
# must not be created unless the third element says why
CASES = [
    # --- train: numbers (issue 18's list and more)
    (T + ["--steps", "0"], ["steps: got 0", ">= 1"]),
    (T + ["--steps", "2.5"], ["steps: got 2.5", "an integer"]),
    (T + ["--steps", "abc"], ["steps: got 'abc'"]),
    (T + ["--lr", "nan"], ["lr: got nan", "finite"]),
    (T + ["--lr", "inf"], ["lr: got inf"]),
    (T + ["--lr", "-1"], ["lr: got -1"]),
    (T + ["--lr", "1e400"], ["lr: got inf"]),
    (T + ["--temperature", "nan"], ["temperature: got nan"]),
    (T + ["--temperature", "0"], ["temperature: got 0"]),
    (T + ["--kl-coef", "nan"], ["kl_coef: got nan"]),
    (T + ["--kl-coef", "-0.1"], ["kl_coef: got -0.1"]),
    (T + ["--clip-eps", "nan"], ["clip_eps: got nan"]),
    (T + ["--top-p", "nan"], ["top_p: got nan"]),
    (T + ["--top-p", "1.5"], ["top_p: got 1.5"]),
    (T + ["--top-k", "-1"], ["top_k: got -1"]),
    (T + ["--weight-decay", "-1"], ["weight_decay: got -1"]),
    (T + ["--keep-checkpoints", "-1"], ["keep_checkpoints: got -1"]),
    (T + ["--eval-prompts", "-1"], ["eval_prompts: got -1"]),
    (T + ["--eval-samples", "0"], ["eval_samples: got 0"]),
    (T + ["--warmup-steps", "-1"], ["warmup_steps: got -1"]),
    (T + ["--max-grad-norm", "-1"], ["max_grad_norm: got -1"]),
    (T + ["--max-grad-norm", "inf"], ["max_grad_norm: got inf"]),
    (T + ["--lora-r", "-1"], ["lora_r: got -1"]),
    (T + ["--score-clip", "-1"], ["score_clip: got -1"]),
    (T + ["--gamma", "2"], ["gamma: got 2"]),
    (T + ["--lam", "-1"], ["lam: got -1"]),
    (T + ["--held-out-fraction", "1"], ["held_out_fraction: got 1"]),
    (T + ["--samples-per-prompt", "1"], ["samples_per_prompt: got 1"]),
    (T + ["--batch-prompts", "0"], ["batch_prompts: got 0"]),
    (T + ["--max-new-tokens", "0"], ["max_new_tokens: got 0"]),
    (T + ["--update-epochs", "0"], ["update_epochs: got 0"]),
    (T + ["--grad-accum", "0"], ["grad_accum: got 0"]),
    (T + ["--save-every", "0"], ["save_every: got 0"]),
    (T + ["--seed", "-3"], ["seed: got -3"]),
    (T + ["--kl-target", "0"], ["kl_target: got 0"]),
    (T + ["--kl-horizon", "0"], ["kl_horizon: got 0"]),
    (T + ["--vf-coef", "nan"], ["vf_coef: got nan"]),
    (T + ["--value-clip", "0"], ["value_clip: got 0"]),
    (T + ["--entropy-coef", "inf"], ["entropy_coef: got inf"]),
    (T + ["--lora-alpha", "0"], ["lora_alpha: got 0"]),
    (T + ["--critic-timeout", "0"], ["critic_timeout: got 0"]),
    (T + ["--critic-values", "nan,-0.5"], ["critic_values"]),
    (T + ["--critic-concurrency", "0"], ["critic_concurrency: got 0"]),
    (T + ["--critic-fuzzy-threshold", "2"], ["critic_fuzzy_threshold: got 2"]),
    (T + ["--algo", "ppo2"], ["algo: got 'ppo2'; allowed: ", "did you mean 'ppo'"]),
    (T + ["--space", "latent"], ["--space latent needs --latent"]),
    (T + ["--num-actions", "abc"], ["num_actions: got 'abc'"]),
    (T + ["--progress", "maybe"], ["progress: got 'maybe'", "true or false"]),
    # --- train: devices
    (T + ["--device", "tpu"], ["device: got 'tpu'", "cpu, cuda"]),
    (T + ["--device", "cuda"], ["device: got 'cuda'", "no CUDA device"]),
    (T + ["--device", "cuda:x"], ["device: got 'cuda:x'"]),
    (T + ["--critic-device", "tpu"], ["critic_device: got 'tpu'"]),
    # --- train: YAML files
    (T + ["--config", "{malformed_yaml}"], ["not valid YAML", "line 2"]),
    (T + ["--config", "{latin1_yaml}"], ["not UTF-8", "line 2"]),
    (T + ["--config", "{empty_yaml}"], ["is empty"]),
    (T + ["--config", "{list_yaml}"], ["must hold a mapping"]),
    (T + ["--config", "{typo_yaml}"], ["unknown key 'stpes'", "did you mean 'steps'"]),
    (T + ["--config", "{abc_steps_yaml}"], ["steps: got 'abc'"]),
    (T + ["--config", "{float_steps_yaml}"], ["steps: got 2.5"]),
    (T + ["--config", "{null_steps_yaml}"], ["steps: got null"]),
    (T + ["--config", "{fast_lr_yaml}"], ["lr: got 'fast'"]),
    (T + ["--config", "{list_temp_yaml}"], ["temperature: got [1, 2] (a list)"]),
    (T + ["--config", "{trl_unsup_yaml}"], ["logging_steps", "no meaning in reinlm"]),
    (T + ["--config", "{num_actions_abc_yaml}"], ["num_actions: got 'abc'"]),
    (T + ["--config", "{dup_yaml}"], ["given twice"]),
    (T + ["--config", "{missing}"], ["does not exist"]),
    (T + ["--config", "{binary}"], ["not UTF-8"]),
    # --- train: outputs and resume
    (T + ["--out", "{afile}"], ["is a file, not a directory"]),
    (T + ["--out", "{under_file}"], ["which is a file"]),
    (T + ["--config", "{typo_yaml}", "--steps", "1"], ["unknown key 'stpes'"]),
    (T + ["--config", "{abc_steps_yaml}", "--steps", "1"], ["steps: got 'abc'"]),  # a flag does not excuse the file
    (["train", "--resume", "{empty_run}"], ["is empty", "checkpoint"]),
    (["train", "--resume", "{corrupt_run}"], ["is not UTF-8 text", "line 2"]),
    (["train", "--resume", "{missing}"], ["not a run directory"]),
    # --- generate
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--temperature", "nan"], ["temperature: got nan"]),
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--top-p", "2"], ["top_p: got 2"]),
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--num-samples", "0"], ["num_samples: got 0"]),
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--max-new-tokens", "0"], ["max_new_tokens: got 0"]),
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--device", "tpu"], ["device: got 'tpu'"]),
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--dtype", "float64"], ["dtype: got 'float64'"]),
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--config", "{typo_yaml}"], ["unknown key 'stpes'"]),
    (["generate", "--model", "{tiny}", "--prompt", "Hi", "--config", "{latin1_yaml}"], ["not UTF-8"]),
    (["generate", "--model", "{badconfig}", "--prompt", "Hi"], ["config.json is not valid JSON"]),
    (["generate", "--model", "{truncated}", "--prompt", "Hi"], ["model.safetensors is truncated"]),
    (["generate", "--model", "{garbage}", "--prompt", "Hi"], ["model.safetensors is not a safetensors file"]),
    (["generate", "--model", "{missing}", "--prompt", "Hi"], ["no such file or directory"]),
    (["generate", "--model", "{afile}", "--prompt", "Hi"], ["not a .gguf file"]),
    (["generate", "--model", "{tiny}", "--prompts", "{latin1_txt}"], ["not UTF-8", "line 2"]),
    (["generate", "--model", "{tiny}", "--prompts", "{broken_jsonl}"], ["line 2"]),
    # --- reward
    (["reward", "--reward", "", "hello"], ["reward: got no SPEC"]),
    (["reward", "--reward", "nosuch_reward", "hello"], ["is not a registered reward. Allowed: a registered reward"]),
    (["reward", "--reward", "sentiment", "--config", "{empty_yaml}", "hello"], ["is empty"]),
    (["reward", "--reward", "sentiment", "--config", "{typo_yaml}", "hello"], ["unknown key 'stpes'"]),
    (["reward", "--reward", "sentiment", "--data", "{broken_jsonl}"], ["line 2"]),
    (["reward", "--reward", "sentiment", "--data", "{latin1_jsonl}"], ["not UTF-8"]),
    (["reward", "--reward", "sentiment", "--device", "tpu", "hello"], ["device: got 'tpu'"]),
    # --- eval
    (["eval"], ["nothing to evaluate"]),
    (["eval", "--generations", "{gens_broken}", "--out", "{out}"], ["line 2"]),
    (["eval", "--generations", "{latin1_jsonl}", "--out", "{out}"], ["not UTF-8"]),
    (["eval", "--model", "{tiny}", "--temperature", "nan", "--out", "{out}"], ["temperature: got nan"]),
    (["eval", "--model", "{tiny}", "--num-prompts", "-1", "--out", "{out}"], ["num_prompts: got -1"]),
    (["eval", "--model", "{tiny}", "--samples-per-prompt", "0", "--out", "{out}"], ["samples_per_prompt: got 0"]),
    (["eval", "--model", "{tiny}", "--config", "{malformed_yaml}"], ["not valid YAML"]),
    (["eval", "--model", "{tiny}", "--device", "cuda"], ["no CUDA device"]),
    # --- latent
    (["latent", "pretrain", "--max-len", "0", "--out", "{out}"], ["max_len: got 0"]),
    (["latent", "pretrain", "--threads", "-1", "--out", "{out}"], ["threads: got -1"]),
    (["latent", "pretrain", "--lr", "-1", "--out", "{out}"], ["lr: got -1"]),
    (["latent", "pretrain", "--lr", "nan", "--out", "{out}"], ["lr: got nan"]),
    (["latent", "pretrain", "--window", "1", "--out", "{out}"], ["window: got 1"]),
    (["latent", "pretrain", "--num-actions", "1", "--out", "{out}"], ["num_actions: got 1"]),
    (["latent", "pretrain", "--config", "{num_actions_abc_yaml}", "--out", "{out}"], ["num_actions: got 'abc'"]),
    (["latent", "pretrain", "--config", "{typo_yaml}", "--out", "{out}"], ["unknown key 'stpes'"]),
    (["latent", "pretrain", "--device", "tpu", "--out", "{out}"], ["device: got 'tpu'"]),
    (["latent", "qd", "--samples", "1"], ["samples: got 1"]),
    (["latent", "qd", "--action-tau", "nan"], ["action_tau: got nan"]),
    (["latent", "finetune", "--lr", "nan", "--out", "{out}"], ["lr: got nan"]),
    (["latent", "finetune", "--epochs", "-1", "--out", "{out}"], ["epochs: got -1"]),
    (["latent", "train-q", "--gamma", "2", "--out", "{out}"], ["gamma: got 2"]),
    (["latent", "train-q", "--lr", "inf", "--out", "{out}"], ["lr: got inf"]),
    (["latent", "import-cola", "{missing}", "{out}"], ["is not a directory", "a CoLA checkpoint directory"]),
    (["latent", "import-bwarea", "{missing}", "{out}"], ["is not a directory", "a BWArea checkpoint directory"]),
    # --- search, critique, bench
    (["search", "--budget", "-1", "hello"], ["budget: got -1"]),
    (["search", "--c-puct", "nan", "hello"], ["c_puct: got nan"]),
    (["search", "--temperature", "0", "hello"], ["temperature: got 0"]),
    (["critique", "--critic-timeout", "0", "text"], ["critic_timeout: got 0"]),
    (["critique", "--critic-url", "ftp://example.com", "text"], ["critic_url"]),
    (["critique", "--values", "a,b", "text"], ["critic_values"]),
    (["bench", "token-rl", "--steps", "0"], ["steps: got 0"]),
    (["bench", "token-rl", "--samples-per-prompt", "1"], ["samples_per_prompt: got 1"]),
    (["bench", "token-rl", "--lr", "nan"], ["lr: got nan"]),
    (["bench", "generation", "--group", "0"], ["group: got 0"]),
    (["bench", "generation", "--batch-sizes", "7", "--group", "2"], ["batch_sizes"]),
    (["bench", "latent-vs-token", "--lr", "nan"], ["lr: got nan"]),
    (["bench", "multiturn", "--turn-tokens", "0"], ["turn_tokens: got 0"]),
    (["bench", "multiturn", "--dtype", "float16"], ["dtype: got 'float16'; allowed:"]),
    (["bench", "reward-hacking", "--latent-lr", "-1"], ["latent_lr: got -1"]),
    # --- train: problems found once the (tiny) model or the rewards run
    (T + ["--lora-r", "4", "--lora-targets", "nosuch_proj"], ["lora_targets: got 'nosuch_proj'", "q_proj"]),
    (T + ["--lora-r", "4", "--lora-targets", ",,,"], ["lora_targets"]),
    (T + ["--max-new-tokens", "100000"], ["max_new_tokens", "context"]),
    (T + ["--model", "{badconfig}"], ["config.json is not valid JSON"]),
    (T + ["--model", "{truncated}"], ["model.safetensors is truncated"]),
    (T + ["--prompts", "{latin1_txt}"], ["not UTF-8", "line 2"]),
    (T + ["--prompts", "{broken_jsonl}"], ["line 2"]),
    (T + ["--prompts", "{list_jsonl}"], ["line 1"]),
    (T + ["--reward", "{bad_rewards}:huge_int"], ["an integer with 401 digits", "beyond the float32 range"]),
    (T + ["--reward", "{bad_rewards}:over_f32"], ["returned 1e+39", "beyond the float32 range"]),
    (T + ["--reward", "{bad_rewards}:exits"], ["called sys.exit(3)", "would end the run without a message"]),
    (T + ["--reward", "{bad_rewards}:nan"], ["returned nan on sample 0"]),
    (T + ["--reward", "{bad_rewards}:nosuch"], ["defines no 'nosuch'", "allowed: one of its functions"]),
    (T + ["--reward", "{latin1_reward}:r"], ["failed with SyntaxError", "can't decode byte 0xe9"]),
    (T + ["--reward", "{syntax_reward}:r"], ["failed with SyntaxError: expected ':'", "line 1"]),
    (["reward", "--reward", "{syntax_reward}:r", "hello"], ["failed with SyntaxError: expected ':'", "line 1"]),
    (T + ["--eval-prompts", "0", "--reward", "1e38*target_length:1"], ["overflows the float32 range", "smaller weights"],
     "stops in step 1: config.yaml is written, no checkpoint, no final/"),
    # --- outputs checked before any model loads
    (["eval", "--model", "{tiny}", "--out", "{afile}"], ["is a file, not a directory"]),
    (["latent", "pretrain", "--backbone", "{tiny}", "--out", "{afile}"], ["is a file"]),
    (["latent", "finetune", "--latent", "{missing}", "--data", "{latin1_txt}", "--out", "{under_file}"], ["which is a file"]),
    (["latent", "train-q", "--latent", "{missing}", "--reward", "sentiment", "--out", "{afile}"], ["is a file"]),
    (["compare", "{nockpt_run}", "{nockpt_run}", "--out", "{afile}"], ["is a file"]),
    (["bench", "token-rl", "--out", "{afile}"], ["is a file"]),
    # --- explore
    (["explore", "--latent", "{missing}", "hello"], ["is not a latent model directory", "config.json and heads.safetensors"]),
    (["explore", "--latent", "{missing}", "--new-tokens", "-1", "hello"], ["new_tokens"]),
    (["explore", "--latent", "{missing}", "--top", "0", "hello"], ["top: got 0", "an integer >= 1"]),  # "top" alone: in the usage text
    # --- damaged files inside directories
    (["report", "{run_bad_eval}"], ["train_eval.json"]),
    (["explore", "--latent", "{latent_badcfg}", "hello"], ["config.json"]),
    (["generate", "--latent", "{latent_badcfg}", "--prompt", "hi"], ["config.json"]),
    (["critique", "--task", "{latin1_yaml}", "text"], ["not UTF-8"]),
    (["critique", "--task", "{malformed_yaml}", "text"], ["YAML"]),
    (["latent", "pretrain", "--backbone", "{tiny}", "--corpus", "{broken_jsonl}", "--text-column", "prompt", "--out",
      "{out}"], ["line 2"],
     "pretrain makes OUT before it reads the corpus; nothing is trained"),
    (["latent", "pretrain", "--backbone", "{tiny}", "--corpus", "{binary}", "--out", "{out}"], ["looks binary, not text"],
     "pretrain makes OUT before it reads the corpus; nothing is trained"),
    # --- more latent / search / bench inputs
    (["search", "--latent", "{missing}", "--reward", "sentiment", "hello"], ["is not a latent model directory"]),
    (["search", "--latent", "{latent_badcfg}", "--reward", "sentiment", "hello"], ["config.json"]),
    (["search", "--reward", "sentiment", "--config", "{typo_yaml}", "hello"], ["unknown key 'stpes'"]),
    (["latent", "qd", "--latent", "{latent_badcfg}"], ["config.json"]),
    (["latent", "finetune", "--latent", "{latent_badcfg}", "--data", "{good_txt}", "--out", "{out}"], ["config.json"]),
    (["latent", "train-q", "--latent", "{latent_badcfg}", "--reward", "sentiment", "--out", "{out}"], ["config.json"]),
    (["latent", "finetune", "--config", "{malformed_yaml}", "--out", "{out}"], ["not valid YAML"]),
    (["generate", "--latent", "{missing}", "--prompt", "hi"], ["is not a latent model directory"]),
    (["generate", "--model", "{tiny}", "--prompt", "hi", "--show-actions"], ["--latent"]),
    (["bench", "generation", "--backends", "nosuch"], ["backends: got 'nosuch'; allowed:"]),
    (["bench", "token-rl", "--sides", "nosuch"], ["sides: got 'nosuch'; allowed: a comma"]),
    (["bench", "token-rl", "--timeout", "0"], ["timeout: got 0"]),
    # --- demo (its flags are checked before the embedded model loads)
    (["demo", "--steps", "0"], ["steps: got 0"]),
    (["demo", "--steps", "-3"], ["steps: got -3"]),
    (["demo", "--seed", "-1"], ["seed: got -1"]),
    (["demo", "--out", "{afile}"], ["is a file"]),
    # --- report / compare
    (["report", "{missing}"], ["is not a directory; allowed: a run directory"]),
    (["compare", "{missing}", "{missing}"], ["is not a directory; allowed: a run directory"]),
]


def _ids(case) -> str:
    argv = case[0]
    return " ".join(a for a in argv[:2] if not a.startswith("{")) + ":" + "|".join(argv[-2:])


def run_case(argv, inputs, out: Path, capsys) -> tuple[int, str]:
    from reinlm.cli.main import main

    args = [a.format(**{k: str(v) for k, v in inputs.items()}, out=str(out)) for a in argv]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors: usage + message, exit 2
        code = e.code
    return code, " ".join(capsys.readouterr().err.split())


def _written(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_bad_input_exits_2_naming_the_problem(case, inputs, tmp_path, capsys, monkeypatch):
    """Exit 2, the keywords (the problem, not an echo of the input), no traceback, and nothing written: neither
    ``{out}`` nor the default output folders (runs/demo, runs/latent, runs/bench-..., relative to the working
    directory, which is an empty folder here) nor anything beside the inputs (compare's default is beside RUN_A)."""
    argv, words, started = case[0], case[1], case[2] if len(case) > 2 else None
    out = tmp_path / "out"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = inputs["missing"].parent
    beside = sorted(p.name for p in root.iterdir())
    code, err = run_case(argv, inputs, out, capsys)
    assert code == 2, f"exit {code}: {err[-600:]}"
    assert "Traceback" not in err
    for w in words:
        assert w in err, f"{w!r} not in: {err[-600:]}"
    assert _written(cwd) == [], "a refused command wrote into the working directory (a default output folder)"
    assert sorted(p.name for p in root.iterdir()) == beside, "a refused command wrote beside its inputs"
    if started:
        assert not (out / "final").exists() and not (out / "checkpoints").exists()
    else:
        assert not out.exists(), "a refused command wrote its output directory"
