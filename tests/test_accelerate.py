"""Data parallel equivalence: 2 CPU processes (gloo) with half the batch each == 1 process, full batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets"
SCRIPT = ASSETS / "ddp_train.py"
REWARD = f"{ASSETS / 'toy_rewards.py'}:space_share"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    from reinlm.testing import save_tiny_model

    return Path(save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny-ddp"), seed=1))


def _weights(d):
    from safetensors.torch import load_file

    return load_file(str(Path(d) / "final" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(SCRIPT), str(tiny_model_dir), str(tmp_path / "one"), REWARD],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), str(tiny_model_dir),
                          str(tmp_path / "two"), REWARD], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    moved = 0
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)
    base = _weights_from_model(tiny_model_dir)
    moved = sum(not torch.equal(base[k], w1[k]) for k in w1 if k in base)
    assert moved > 0
    import json

    m1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward/mean"] for r in m1] == pytest.approx([r["reward/mean"] for r in m2], abs=1e-5)


def _weights_from_model(d):
    from safetensors.torch import load_file

    return load_file(str(Path(d) / "model.safetensors"))
