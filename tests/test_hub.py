"""Tests for reinlm.hub: name resolution, loading, GGUF cache, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from reinlm import hub
from reinlm.errors import ConfigError, ReinlmError
from reinlm.testing import save_tiny_model, tiny_causal_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    """A saved tiny model directory (model + tokenizer)."""
    return save_tiny_model(smol_tokenizer, tmp_path_factory.mktemp("tiny") / "model", seed=3)


def _logits(model, tok, text="The old lighthouse on the hill"):
    ids = tok([text], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("REINLM_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("REINLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "reinlm"


def test_embedded_alias_paths_exist():
    assert set(hub.EMBEDDED_ALIASES) == {"smollm2-135m", "minilm"}
    assert hub.EMBEDDED_ALIASES["smollm2-135m"].path().suffix == ".gguf"
    assert (hub.EMBEDDED_ALIASES["minilm"].path() / "config.json").is_file()


def test_load_local_dir_roundtrip(tiny_dir, smol_tokenizer):
    model, tok = hub.load_causal_lm(tiny_dir, device="cpu")
    ref = tiny_causal_lm(smol_tokenizer, seed=3)
    assert not model.training
    assert tok.padding_side == "left" and tok.pad_token_id == tok.eos_token_id
    assert len(tok) == 49152
    assert torch.allclose(_logits(model, tok), _logits(ref, tok), atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


def test_load_bfloat16(tiny_dir):
    model, _ = hub.load_causal_lm(tiny_dir, device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_run_and_checkpoint_dirs_resolve(tmp_path, tiny_dir):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    ckpt = run / "checkpoints" / "step-4"
    (ckpt / "policy").mkdir(parents=True)
    (ckpt / "policy" / "config.json").write_text("{}")
    assert hub.resolve_model_dir(run) == str(run / "final")
    assert hub.resolve_model_dir(ckpt) == str(ckpt / "policy")
    assert hub.resolve_model_dir(tiny_dir) == tiny_dir
    assert hub.resolve_model_dir("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_pad_token_defaults_to_eos(tmp_path, smol_tokenizer):
    tok = type(smol_tokenizer).from_pretrained(hub.resolve_model_dir("smollm2-135m"))
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    loaded = hub.load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.padding_side == "left"


def test_load_tokenizer_returns_private_copies(tiny_dir):
    a = hub.load_tokenizer(tiny_dir)
    a.padding_side = "right"
    assert hub.load_tokenizer(tiny_dir).padding_side == "left"


def test_lora_adapter_dir_is_merged(tmp_path, tiny_dir):
    from peft import LoraConfig, get_peft_model

    base, tok = hub.load_causal_lm(tiny_dir, device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    expected = _logits(peft_model, tok)
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == tiny_dir
    merged, tok2 = hub.load_causal_lm(tmp_path / "adapter", device="cpu")
    assert torch.allclose(_logits(merged, tok2), expected, atol=1e-4)
    assert not torch.allclose(_logits(tiny_causal_lm(tok, seed=3), tok), expected, atol=1e-4)


@pytest.mark.parametrize("name", ["no-such-model-xyz", "./missing/dir", "missing.gguf"])
def test_unknown_model_lists_aliases(name):
    with pytest.raises(ReinlmError) as e:
        hub.load_causal_lm(name, device="cpu")
    msg = str(e.value)
    assert name in msg and "smollm2-135m" in msg and "Hugging Face id" in msg and "\n" not in msg


def test_bad_device_and_dtype(tiny_dir):
    with pytest.raises(ConfigError, match="tpu"):
        hub.load_causal_lm(tiny_dir, device="tpu")
    with pytest.raises(ConfigError, match="float64"):
        hub.load_causal_lm(tiny_dir, device="cpu", dtype="float64")


def test_resolve_device_takes_what_accelerate_reports():
    from reinlm.utils.devices import resolve_device

    # a process of multi-process CPU training (torchrun + gloo) has device cpu:N; it used to be refused
    assert resolve_device("cpu:0") == torch.device("cpu:0") and resolve_device(torch.device("cpu")).type == "cpu"
    for bad in ("cpux", "cuda0", "gpu"):
        with pytest.raises(ConfigError, match=f"device: got '{bad}'"):
            resolve_device(bad)


def test_encoder_alias_for_causal_lm_is_refused():
    with pytest.raises(ReinlmError, match="minilm"):
        hub.load_sentence_encoder("smollm2-135m")


def test_convert_gguf_caches_once_and_drops_quantized_flag(monkeypatch, tmp_path, smol_tokenizer):
    """The GGUF loader is faked (a real GGUF is exercised by the integration test below)."""
    import transformers

    monkeypatch.setenv("REINLM_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "toy.Q4.gguf"
    gguf.write_bytes(b"GGUF-fake")
    calls = []

    def fake_model(path, gguf_file=None, **kw):
        calls.append(gguf_file)
        m = tiny_causal_lm(smol_tokenizer, seed=5)
        m.hf_quantizer = object()  # what the GGUF loader leaves behind
        m.config.quantization_config = {"quant_method": "gguf"}
        return m

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: smol_tokenizer)
    out = hub.convert_gguf(gguf)
    assert out == hub.gguf_cache_path(gguf) and out.parent == tmp_path / "cache" / "gguf"
    assert out.name.startswith(f"toy.Q4-{len(b'GGUF-fake')}-")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert hub.convert_gguf(gguf) == out and calls == ["toy.Q4.gguf"]  # second call reads the cache
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary dirs left behind
    # a changed file (new mtime) gets a new cache entry
    os.utime(gguf, (1, 1))
    assert hub.gguf_cache_path(gguf) != out


@pytest.mark.integration
def test_embedded_smollm_is_trainable(smol_lm):
    model, tok = smol_lm
    assert getattr(model, "hf_quantizer", None) is None
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert Path(hub.resolve_model_dir("smollm2-135m")).parent == hub.cache_dir() / "gguf"
    ids = tok(["I like eating"], return_tensors="pt")
    loss = model(**ids, labels=ids["input_ids"]).loss
    assert 0.5 < loss.item() < 10.0
    loss.backward()
    grad = model.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


@pytest.mark.integration
def test_minilm_encoder():
    enc = hub.load_sentence_encoder("minilm")
    assert hub.load_sentence_encoder("minilm") is enc  # cached in-process
    e = enc.encode(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply."],
                   normalize_embeddings=True)
    assert e.shape == (3, 384)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
