"""Streaming latent pretraining: states computed on the fly (no cache), exact resume mid-stage, the data-parallel
loss decomposition, the shuffle buffer's state, progress lines; and 2 real processes under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reinlm.latent.config import LatentConfig
from reinlm.latent.corpus import TokenSource, is_held_out
from reinlm.latent.data import StreamedWindows
from reinlm.latent.model import LatentActionModel
from reinlm.latent.pretrain import (Interrupted, PretrainConfig, Reducer, gumbel_noise, pretrain, stage1_loss,
                                    stage2_loss)
from reinlm.testing import save_tiny_model

SMALL = dict(preset="custom", d_model=32, n_heads=2, idm_layers=1, policy_layers=1, wm_layers=1, wm_ffn=64,
             num_actions=8)
FAST = dict(window=16, batch_windows=8, stage1_epochs=1, stage2_epochs=1, held_out_fraction=0.2, lr=3e-3,
            dtype="float32", progress=False, shuffle_buffer=32, eval_tokens=400)
ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory, smol_tokenizer):
    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("bb") / "tiny")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    words = "river stone light harbour bread market garden winter lamp north song field".split()
    rng = np.random.default_rng(0)
    for i in range(24):
        text = " ".join(rng.choice(words, size=60)) + "."
        (d / f"{i:02d}.txt").write_text(f"Story {i}. {text}\n")
    return d


def _heads(d):
    from safetensors.torch import load_file

    return load_file(str(Path(d) / "heads.safetensors"))


class _FakeReducer(Reducer):
    """Stands for W processes inside one: returns the global sums given in advance."""

    def __init__(self, world, total):
        self.acc, self.world, self.total = None, world, total

    def __call__(self, t):
        return self.total


def test_two_process_loss_decomposition_gives_the_full_batch_gradient(backbone_dir, tiny_lm):
    """Stage losses of W = 2 halves (global sums, W-scaled, marginal-entropy surrogate), averaged as DDP does,
    have the gradient of the full-batch loss of one process."""
    torch.manual_seed(0)
    lam = LatentActionModel(LatentConfig(backbone=backbone_dir, **SMALL), *tiny_lm)
    with torch.no_grad():
        for blk in lam.world_model.blocks:
            blk.ff.down.weight.normal_(0, 0.1)
    ids = torch.randint(0, 49152, (4, 10))
    mask = torch.ones_like(ids)
    mask[3, 7:] = 0
    h, _ = lam.backbone_hidden(ids)
    cfg = PretrainConfig(**{**FAST, "marginal_entropy_coef": 0.5, "entropy_coef": -0.2})
    noise = gumbel_noise((4, 9, 8), 1)
    params = list(lam.idm.parameters()) + list(lam.world_model.parameters())

    def grads(loss):
        lam.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in params]

    full_loss, full_stats = stage1_loss(lam, h, ids, mask, cfg, None, None, noise, Reducer())
    want = grads(full_loss)
    # the global sums the all-reduce would return: taken from the full batch (non-differentiable)
    captured = {}

    class Capture(Reducer):
        def __call__(self, t):
            captured["total"] = t.clone()
            return t

    stage1_loss(lam, h, ids, mask, cfg, None, None, noise, Capture())
    red = _FakeReducer(2, captured["total"])
    halves = [stage1_loss(lam, h[r::2], ids[r::2], mask[r::2], cfg, None, None, noise[r::2], red) for r in range(2)]
    got = [(a + b) / 2 for a, b in zip(grads(halves[0][0]), grads(halves[1][0]))]
    for g1, g2 in zip(want, got):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    assert halves[0][1] == pytest.approx(full_stats)  # logged figures are the global ones
    # without the global marginal the gradient would differ (the test can fail)
    wrong = [stage1_loss(lam, h[r::2], ids[r::2], mask[r::2], cfg, None, None, noise[r::2], Reducer())[0] / 2
             for r in range(2)]
    bad = [(a + b) for a, b in zip(grads(wrong[0]), grads(wrong[1]))]
    assert max((x - y).abs().max() for x, y in zip(bad, want)) > 1e-4
    # stage 2
    pol = list(lam.policy.parameters())
    lam.zero_grad()
    l2, _ = stage2_loss(lam, h, ids, mask, Reducer())
    l2.backward()
    want2 = [p.grad.clone() for p in pol]
    cap = Capture()
    stage2_loss(lam, h, ids, mask, cap)
    red2 = _FakeReducer(2, captured["total"])
    acc = [torch.zeros_like(p) for p in pol]
    for r in range(2):
        lam.zero_grad()
        stage2_loss(lam, h[r::2], ids[r::2], mask[r::2], red2)[0].backward()
        acc = [a + p.grad / 2 for a, p in zip(acc, pol)]
    for g1, g2 in zip(want2, acc):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


def test_stream_state_round_trip_continues_the_same_windows(docs, smol_tokenizer):
    src = TokenSource(str(docs), smol_tokenizer, 16)
    a = StreamedWindows(src, None, 4, seed=0, held_out_fraction=0.2, buffer=8)
    straight = [[w.tolist() for w in a.global_windows()] for _ in range(30)]  # crosses an epoch boundary
    assert a.epoch >= 1
    b = StreamedWindows(src, None, 4, seed=0, held_out_fraction=0.2, buffer=8)
    first = [[w.tolist() for w in b.global_windows()] for _ in range(5)]
    state = json.loads(json.dumps(b.state_dict()))  # what a checkpoint keeps
    c = StreamedWindows(src, None, 4, seed=0, held_out_fraction=0.2, buffer=8)
    c.load_state_dict(state)
    rest = [[w.tolist() for w in c.global_windows()] for _ in range(25)]
    assert first + rest == straight
    # held-out documents never reach training, whatever the shuffle seed (each stage has its own)
    train = [w.tolist() for d, _, w in src.windows() if not is_held_out(d, 0.2, 0)]
    held = [w.tolist() for d, _, w in src.windows() if is_held_out(d, 0.2, 0) and w.tolist() not in train]
    assert len(held) >= 3 and not any(w in held for batch in straight for w in batch)
    d = StreamedWindows(src, None, 4, seed=1001, held_out_fraction=0.2, buffer=8, split_seed=0)
    assert not any(w.tolist() in held for _ in range(30) for w in d.global_windows())


def test_streamed_pretraining_without_a_cache_and_exact_resume(backbone_dir, docs, tmp_path, capsys):
    """--hidden-cache auto with a cache budget the corpus exceeds: states computed on the fly, nothing cached.
    Stopped mid stage 1 and mid stage 2, then resumed: bit-identical to the straight run."""
    base = dict(backbone=backbone_dir, corpus=str(docs), hidden_cache="auto", cache_max_gb=1e-5, **FAST)
    straight = pretrain(PretrainConfig(out=str(tmp_path / "straight"), **base), LatentConfig(**SMALL))
    s = json.loads((straight / "summary.json").read_text())
    assert s["mode"] == "stream" and s["codes_used"] >= 1 and s["train_windows"] > 0
    assert not list(straight.rglob("*.npy"))  # no hidden-state cache, no token store
    assert (straight / "held_out.npz").is_file() and not (straight / "stage1" / "checkpoint").exists()
    printed = capsys.readouterr().out
    assert "tok/s" in printed and "ETA" in printed  # --progress false: plain progress lines
    steps1 = json.loads((straight / "stage1" / "result.json").read_text())["steps"]
    assert steps1 >= 5

    out = tmp_path / "resumed"
    cfg = dict(out=str(out), save_every=2, **base)
    with pytest.raises(Interrupted, match="stage 1"):
        pretrain(PretrainConfig(stop_after_steps=3, **cfg), LatentConfig(**SMALL))
    assert (out / "stage1" / "checkpoint" / "state.pt").is_file()
    with pytest.raises(Interrupted, match="stage 2"):
        pretrain(PretrainConfig(stop_after_steps=steps1 - 3 + 2, **cfg), LatentConfig(**SMALL))
    pretrain(PretrainConfig(**cfg), LatentConfig(**SMALL))
    a, b = _heads(straight), _heads(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d, st: [{k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa: E731
                          for r in map(json.loads, (d / st / "metrics.jsonl").read_text().splitlines())]
    for st in ("stage1", "stage2"):
        assert rows(straight, st) == rows(out, st)
    # the test can fail: a run that loses the data position differs
    other = pretrain(PretrainConfig(**{**base, "seed": 1}, out=str(tmp_path / "seed1")), LatentConfig(**SMALL))
    assert any(not torch.equal(a[k], _heads(other)[k]) for k in a)


def test_self_corpus_streamed_keeps_tokens_only(backbone_dir, tmp_path):
    out = pretrain(PretrainConfig(backbone=backbone_dir, corpus="self:600", out=str(tmp_path / "s"),
                                  hidden_cache="off", sample_batch=16, sample_new_tokens=24, **FAST),
                   LatentConfig(**SMALL))
    assert (out / "samples" / "tokens.npy").is_file() and not (out / "samples" / "hidden.npy").exists()
    assert json.loads((out / "summary.json").read_text())["mode"] == "stream"


def _torchrun(args, processes):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    with tempfile.TemporaryDirectory(prefix="reinlm-torchrun-") as scratch:  # torchrun's torchelastic_* dirs go here
        done = subprocess.run([*launch, str(ASSETS / "ddp_pretrain.py"), *map(str, args), str(processes)],
                              env={**env, "TMPDIR": scratch}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["off", "on"])
def test_two_processes_pretrain_the_same_heads_as_one(backbone_dir, docs, tmp_path, mode):
    _torchrun([backbone_dir, docs, tmp_path / "one", mode], 1)
    _torchrun([backbone_dir, docs, tmp_path / "two", mode], 2)
    a, b = _heads(tmp_path / "one"), _heads(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    s1, s2 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert (s1["processes"], s2["processes"]) == (1, 2)
    assert s1["codes_used"] == s2["codes_used"]
    assert s1["nll_world_model_idm"] == pytest.approx(s2["nll_world_model_idm"], abs=1e-4)


@pytest.mark.parametrize("every, seconds", [(1, 120.0), (1000, 0.0)])  # by batch count, and by the clock
def test_interrupted_text_cache_build_continues_where_it_stopped(backbone_dir, docs, tmp_path, monkeypatch, every,
                                                                 seconds):
    from reinlm.hub import load_causal_lm
    from reinlm.latent import hidden_cache as hc

    model, tok = load_causal_lm(backbone_dir, device="cpu")
    meta = {"backbone": "tiny", "corpus": str(docs), "max_tokens": 0}
    straight = hc.build_text_cache(model, tok, str(docs), tmp_path / "straight", meta, max_len=24, batch_size=4,
                                   checkpoint_every=1)
    real, calls = hc.backbone_forward, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the build dies in its fifth batch
        return real(*a, **k)

    monkeypatch.setattr(hc, "backbone_forward", failing)
    with pytest.raises(KeyboardInterrupt):
        hc.build_text_cache(model, tok, str(docs), tmp_path / "resumed", meta, max_len=24, batch_size=4,
                            checkpoint_every=every, checkpoint_seconds=seconds)
    part = json.loads((tmp_path / "resumed" / "partial.json").read_text())
    assert len(part["offsets"]) - 1 == 4 * 4  # four batches of four chunks were kept
    counted = []

    def counting(*a, **k):
        counted.append(1)
        return real(*a, **k)

    monkeypatch.setattr(hc, "backbone_forward", counting)
    resumed = hc.build_cache(model, tok, "tiny", str(docs), tmp_path / "resumed", max_len=24, batch_size=16)
    assert not (tmp_path / "resumed" / "partial.json").exists()
    batches = -(-straight.n_sequences // 4)
    assert len(counted) == batches - 4  # only the batches after the checkpoint were computed again
    assert np.array_equal(resumed.offsets, straight.offsets) and np.array_equal(resumed.tokens, straight.tokens)
    assert np.array_equal(resumed.hidden, straight.hidden)
