"""LoRA: peft's target forms (all-linear, names, regex) and portable outputs (final/ = adapter with the user's
base name, loadable by peft.PeftModel.from_pretrained; final/merged/ = the merged model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reinlm.errors import ConfigError
from reinlm.trainer.lora import MERGED_DIR, apply_lora, describe_targets, lora_target_modules, save_lora_final


def test_target_forms():
    assert lora_target_modules("all-linear") == "all-linear"
    assert lora_target_modules("q_proj, v_proj") == ["q_proj", "v_proj"]
    assert lora_target_modules(r".*\.(q|k)_proj") == r".*\.(q|k)_proj"
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        lora_target_modules("(q_proj")
    with pytest.raises(ConfigError, match="empty"):
        lora_target_modules(" ")


@pytest.mark.parametrize("targets, expected", [
    ("all-linear", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    ("q_proj,v_proj", ["q_proj", "v_proj"]),
    (r".*\.(k|o)_proj", ["k_proj", "o_proj"]),
])
def test_peft_target_forms_reach_the_right_modules(smol_tokenizer, targets, expected):
    from reinlm.testing import tiny_causal_lm

    model = apply_lora(tiny_causal_lm(smol_tokenizer), 4, 8, targets, "my-org/my-model")
    assert describe_targets(model)["names"] == expected  # all-linear leaves the LM head alone
    with pytest.raises(ConfigError, match="matches no module"):
        apply_lora(tiny_causal_lm(smol_tokenizer), 4, 8, "no_such_proj", "x")


def test_final_dir_is_a_peft_adapter_and_merged_model(smol_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from reinlm.testing import save_tiny_model, tiny_causal_lm

    base_dir = save_tiny_model(smol_tokenizer, tmp_path / "base", seed=0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(base_dir), 4, 8, "all-linear", "HuggingFaceTB/SmolLM2-135M")
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    final = tmp_path / "final"
    save_lora_final(model, smol_tokenizer, final, "HuggingFaceTB/SmolLM2-135M", merged=True)
    conf = json.loads((final / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M"
    ids = torch.tensor([[1, 200, 3000, 45]])
    want = model(ids).logits
    reloaded = PeftModel.from_pretrained(tiny_causal_lm(smol_tokenizer, seed=0), final)  # the user's own base object
    assert torch.allclose(reloaded(ids).logits, want, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(final / MERGED_DIR)
    assert torch.allclose(merged(ids).logits, want, atol=1e-4)
    assert (final / MERGED_DIR / "tokenizer.json").is_file() and (final / "tokenizer.json").is_file()
    assert not (final / "reinlm_base.json").exists()  # a hub id is recorded as given
    save_lora_final(model, smol_tokenizer, tmp_path / "lean", "HuggingFaceTB/SmolLM2-135M")
    assert not (tmp_path / "lean" / MERGED_DIR).exists()  # merged only when asked for


def test_adapter_of_an_embedded_alias_loads_with_plain_peft_and_on_another_machine(smol_tokenizer, tmp_path,
                                                                                monkeypatch):
    """An embedded alias is not a hub id: the adapter records the local directory reinlm loaded (so PEFT finds the
    base), and the alias beside it (so reinlm finds the base where that directory does not exist)."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from reinlm import hub
    from reinlm.testing import save_tiny_model
    from reinlm.trainer.lora import save_adapter

    base_dir = Path(save_tiny_model(smol_tokenizer, tmp_path / "base", seed=0))

    class Alias(hub.EmbeddedModel):
        def path(self) -> Path:
            return base_dir

    monkeypatch.setitem(hub.EMBEDDED_ALIASES, "tiny-alias", Alias("none", "x", "causal_lm", "a tiny test model"))
    model = apply_lora(AutoModelForCausalLM.from_pretrained(base_dir), 4, 8, "all-linear", "tiny-alias")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.tensor([[1, 200, 3000, 45]])
    want = model(ids).logits
    save_adapter(model, tmp_path / "adapter", "tiny-alias")
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(base_dir.resolve())
    assert json.loads((tmp_path / "adapter" / "reinlm_base.json").read_text()) == {"model": "tiny-alias"}
    assert torch.allclose(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")(ids).logits, want, atol=1e-5)
    conf["base_model_name_or_path"] = "/elsewhere/.cache/reinlm/gguf/gone"  # the directory of another machine
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(conf))
    merged, _ = hub.load_causal_lm(str(tmp_path / "adapter"), device="cpu")
    assert torch.allclose(merged(ids).logits, want, atol=1e-4)


def test_lora_reference_is_the_base_with_the_adapter_off_and_no_copy(tiny_lm, tmp_path):
    """With LoRA the KL reference is the policy's own base weights with the adapter switched off (as peft and TRL
    do): no second copy of the model, and a trained adapter leaves the reference's log-probs where they were."""
    import copy

    from reinlm.rollout.token import token_logprobs
    from reinlm.trainer.config import TrainConfig
    from reinlm.trainer.token_policy import TokenPolicy

    model, tok = tiny_lm
    base = copy.deepcopy(model).eval()
    cfg = TrainConfig(model="tiny", reward="unused", kl_coef=0.1, lora_r=4, lora_targets="all-linear", seed=0,
                      out=str(tmp_path), device="cpu", progress=False, eval_prompts=0, log="none",
                      rollout_dtype="same", train_precision="same")
    pol = TokenPolicy(cfg, torch.device("cpu"), model=copy.deepcopy(model), tokenizer=tok)
    assert pol.ref_model is None and pol.frozen_lm is None  # no copy: one set of base weights in memory
    with torch.no_grad():  # a trained adapter (B is zero at initialisation)
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    batch = pol.rollout(["Tell me about red.", "A short story:"], 2, seeds=[1, 2])
    R = batch.response_ids.shape[1]
    with torch.no_grad():
        want = token_logprobs(base, batch.input_ids, batch.attention_mask, R).logp
        ref = pol.reference(batch).logp
        policy = pol.score(batch).logp
    mask = batch.response_mask.bool()
    torch.testing.assert_close(ref[mask], want[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(pol.frozen_logprobs(batch)[mask], want[mask], rtol=0, atol=1e-5)
    assert float((policy - ref)[mask].abs().max()) > 1e-3  # the adapter is on in the training forward


def test_save_merged_without_lora_is_refused():
    from reinlm.trainer.config import TrainConfig

    with pytest.raises(ConfigError, match="lora_save_merged: true with --lora-r 0"):
        TrainConfig(lora_save_merged=True)
    assert TrainConfig(lora_save_merged=True, lora_r=4).lora_save_merged
