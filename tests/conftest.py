"""Shared pytest fixtures (names are stable: other test modules rely on them).

- ``smol_tokenizer``: the real SmolLM2 tokenizer (left padding, pad = EOS), session-scoped.
- ``tiny_lm``: ``(model, tokenizer)``, a tiny random Llama with SmolLM2's vocabulary, for fast unit tests.
- ``smol_lm``: ``(model, tokenizer)``, the real embedded SmolLM2-135M; use only in integration tests.
- ``tiny_latent_dir``: a tiny backbone and an untrained latent model on it (K = 8), session-scoped.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that sleep instead of spinning while they wait: on a shared, oversubscribed CPU, spinning
# made small matmuls ~10x slower (measured: a tiny-model generate took 7.3 s spinning vs 0.8 s passive).
# Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2-135M tokenizer (vocab 49152), left padding, pad token = EOS."""
    from reinlm.hub import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_lm_session(smol_tokenizer):
    """The one tiny random Llama of the session (built once); tests use ``tiny_lm``."""
    from reinlm.testing import tiny_causal_lm

    return tiny_causal_lm(smol_tokenizer), smol_tokenizer


@pytest.fixture
def tiny_lm(tiny_lm_session):
    """(model, tokenizer): a 2-layer, 64-wide random Llama with the SmolLM2 vocabulary, eval mode, CPU.

    Shared across the session, so each test gets it back trainable and in eval mode: a latent model built on it
    freezes its backbone in place (``LatentActionModel``), which made later token-space tests that copy it find
    no trainable parameters, depending on the order the tests ran in."""
    model, tok = tiny_lm_session
    model.requires_grad_(True)
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def smol_lm():
    """(model, tokenizer): the real embedded SmolLM2-135M-Instruct on CPU, float32 (integration tests only)."""
    from reinlm.hub import load_causal_lm

    return load_causal_lm("smollm2-135m", device="cpu", dtype="float32")


def make_tiny_latent_dir(root, tokenizer, num_actions: int = 8):
    """A tiny backbone directory ``root/backbone`` and an (untrained) latent model on it, ``root/lam``."""
    from reinlm.latent.config import LatentConfig
    from reinlm.latent.model import LatentActionModel
    from reinlm.testing import tiny_causal_lm

    backbone = tiny_causal_lm(tokenizer, seed=3)
    backbone.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    torch.manual_seed(0)
    cfg = LatentConfig(backbone=str(root / "backbone"), num_actions=num_actions, preset="custom", d_model=32,
                       n_heads=2, idm_layers=1, policy_layers=1, wm_layers=1, wm_ffn=64)
    return LatentActionModel(cfg, backbone, tokenizer)


@pytest.fixture(scope="session")
def tiny_latent_dir(tmp_path_factory, smol_tokenizer):
    """A tiny backbone directory and an (untrained) latent model on it, K = 8."""
    root = tmp_path_factory.mktemp("latent")
    lam = make_tiny_latent_dir(root, smol_tokenizer)
    with torch.no_grad():  # an untrained world model ignores actions (zero-initialised merge); make them matter
        for p in lam.world_model.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.5)
    lam.save_pretrained(root / "lam")
    return root / "lam"
