"""Latent pretraining end to end on a tiny backbone (self-sampled and text corpora), resume, QD protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reinlm.errors import ReinlmError
from reinlm.latent.config import LatentConfig
from reinlm.latent.corpus import parse_corpus_spec
from reinlm.latent.hidden_cache import HiddenCache
from reinlm.latent.model import LatentActionModel
from reinlm.latent.pretrain import PretrainConfig, pretrain
from reinlm.testing import save_tiny_model

SMALL = dict(preset="custom", d_model=32, n_heads=2, idm_layers=1, policy_layers=1, wm_layers=1, wm_ffn=64,
             num_actions=8)
FAST = dict(sample_batch=16, sample_new_tokens=24, window=16, batch_windows=8, stage1_epochs=2, stage2_epochs=2,
            held_out_fraction=0.2, lr=3e-3)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory, smol_tokenizer):
    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("bb") / "tiny")


def test_corpus_spec_errors():
    assert parse_corpus_spec("self:2e5").n_tokens == 200000
    with pytest.raises(ReinlmError, match="self:N"):
        parse_corpus_spec("self:zero")


def test_pretrain_self_corpus_summary_and_resume(backbone_dir, tmp_path):
    out = tmp_path / "lat"
    cfg = PretrainConfig(backbone=backbone_dir, corpus="self:1500", out=str(out), **FAST)
    pretrain(cfg, LatentConfig(**SMALL))
    s = json.loads((out / "summary.json").read_text())
    for key in ("codes_used", "nll_world_model_idm", "nll_backbone", "bc_top1_accuracy", "bc_top5_accuracy"):
        assert key in s
    assert 1 <= s["codes_used"] <= 8 and s["cached_tokens"] >= 1500
    assert set(s["seconds"]) >= {"stage1", "stage2"}
    # world model starts as the backbone and the IDM sees the next token: it cannot end much worse
    assert s["nll_world_model_idm"] < s["nll_backbone"] + 0.05
    assert 0.0 <= s["bc_top1_accuracy"] <= s["bc_top5_accuracy"] <= 1.0
    cache = HiddenCache.open(out / "cache")
    assert cache.hidden.dtype == np.float16 and cache.hidden.shape == (cache.meta["n_tokens"], 64)
    # resume: every stage is found and skipped, the model reloads
    mtime = (out / "stage1" / "result.json").stat().st_mtime_ns
    pretrain(cfg, LatentConfig(**SMALL))
    assert (out / "stage1" / "result.json").stat().st_mtime_ns == mtime
    model = LatentActionModel.from_pretrained(out)
    assert model.config.num_actions == 8


def test_pretrain_text_folder_and_qd(backbone_dir, tmp_path, smol_tokenizer):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"{i}.txt").write_text(f"Story {i}. The old lighthouse on the hill was painted white and red, and "
                                       f"every morning the baker on the corner sold {i} loaves of bread. " * 3)
    out = tmp_path / "lat"
    from reinlm.cli.main import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**FAST, **SMALL}.items()]
    assert main(["latent", "pretrain", "--backbone", backbone_dir, "--corpus", str(docs), "--out", str(out),
                 "--max-len", "40", *flags]) == 0
    assert json.loads((out / "summary.json").read_text())["cached_tokens"] > 500
    assert LatentActionModel.from_pretrained(out).config.num_actions == 8

    from reinlm.cli.latent_qd import format_table, run_qd
    from reinlm.latent.qd import ROWS, QDConfig

    class Encoder:  # bag-of-characters embedding: no model needed
        def encode(self, texts):
            return np.array([[t.count(c) + 1e-3 for c in "etaoinshrdlu ."] for t in texts])

    res = run_qd(QDConfig(latent=str(out), num_prefixes=2, samples=3, prefix_tokens=6, new_tokens=5),
                 encoder=Encoder())
    assert set(res["rows"]) == set(ROWS)
    sampled = run_qd(QDConfig(latent=str(out), num_prefixes=2, samples=3, prefix_tokens=6, new_tokens=5,
                              wm_tokens="sample"), encoder=Encoder())
    assert sampled["rows"]["token_sampling"] == res["rows"]["token_sampling"]  # only the latent rows change
    assert sampled["rows"]["latent_random"]["example"] != res["rows"]["latent_random"]["example"]
    with pytest.raises(ReinlmError, match="wm_tokens"):
        QDConfig(latent=str(out), wm_tokens="beam")
    for r in res["rows"].values():
        assert r["qd"] == pytest.approx(1 / r["similarity"]) and r["perplexity"] > 1
    assert "latent_policy" in format_table(res)


def test_self_cache_states_match_a_fresh_forward_and_eos_rows_leave(backbone_dir, tmp_path, smol_tokenizer,
                                                                    monkeypatch):
    """Every cached state equals the backbone's state at that position in one full forward pass, also for
    the rows that stay after another row hit EOS and was dropped from the KV cache."""
    import torch

    from reinlm.hub import load_causal_lm
    from reinlm.latent import hidden_cache

    model, tok = load_causal_lm(backbone_dir, device="cpu")
    eos = tok.eos_token_id
    calls = []
    from reinlm.rollout.sampling import Chooser

    real = Chooser.__call__

    def sample_with_eos(self, logits, *a, **k):  # the first live row samples EOS at the third step
        nxt, lp = real(self, logits, *a, **k)
        calls.append(len(nxt))
        if len(calls) == 3:
            nxt = nxt.clone()
            nxt[0] = eos
        return nxt, lp

    monkeypatch.setattr(Chooser, "__call__", sample_with_eos)
    prompts = ["The river was", "She opened the", "Numbers like"]
    cache = hidden_cache.build_self_cache(model, tok, prompts, n_tokens=30, out=tmp_path / "c",
                                          meta={"backbone": "tiny", "corpus": "self:30"}, batch_size=3,
                                          new_tokens=8, seed=0)
    assert calls[:4] == [3, 3, 3, 2]  # the EOS row is fed once more, then leaves the batch
    ends = [int(cache.tokens[cache.offsets[s + 1] - 1]) for s in range(cache.n_sequences)]
    assert ends.count(eos) == 1
    for s in range(cache.n_sequences):
        a, b = int(cache.offsets[s]), int(cache.offsets[s + 1])
        ids = torch.as_tensor(np.array(cache.tokens[a:b]), dtype=torch.long)[None]
        with torch.no_grad():
            ref = model.base_model(input_ids=ids).last_hidden_state[0]
        got = torch.from_numpy(np.asarray(cache.hidden[a:b], dtype=np.float32))
        assert torch.allclose(got, ref, atol=2e-2, rtol=1e-2), (s, (got - ref).abs().max())


def test_pretrain_on_a_corpus_smaller_than_one_batch(backbone_dir, tmp_path):
    """Fuzz 2026-12-07: `--corpus self:10` (fewer windows than one batch) crashed in stage 1 (Gumbel noise drawn
    for --batch-windows rows, the batch holding fewer). It trains on what there is."""
    out = tmp_path / "lat"
    cfg = PretrainConfig(backbone=backbone_dir, corpus="self:40", out=str(out),
                         **{**FAST, "batch_windows": 64, "stage1_epochs": 1, "stage2_epochs": 1})
    pretrain(cfg, LatentConfig(**SMALL))
    s = json.loads((out / "summary.json").read_text())
    assert 1 <= s["train_windows"] < 64 and s["eval_tokens"] > 0
    assert np.isfinite(s["nll_world_model_idm"]) and 1 <= s["codes_used"] <= 8
