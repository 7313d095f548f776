"""TRL options a training run reads, with TRL's meaning (tiny models, CPU): AdamW's betas and epsilon,
``disable_dropout`` (TRL's ``disable_dropout_in_model`` rule), the reference sync (``sync_ref_model``,
``ref_model_mixup_alpha``, ``ref_model_sync_steps``: TRL's ``SyncRefModelCallback`` rule, saved and restored
with checkpoints), ``reward_weights`` and ``multi_objective_aggregation``; bad values exit 2 naming the
problem."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig

from reinlm.config.build import build_config
from reinlm.trainer.config import TrainConfig

ASSETS = Path(__file__).parent / "assets"


def _cfg(**values):
    base = {"device": "cpu", "eval_prompts": 0, "log": "none", "frozen_dtype": "same"}
    return build_config(TrainConfig, None, {**base, **values})


def _gpt2_with_dropout(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    conf = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                      resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(conf)


def test_adam_settings_reach_the_optimizer_and_default_to_trls(tiny_lm):
    from reinlm.trainer.loop import Trainer

    model, tok = tiny_lm
    cfg = _cfg(model="tiny", adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, kl_coef=0.0,
               reward=f"{ASSETS / 'toy_rewards.py'}:space_share", prompts="builtin:neutral")
    tr = Trainer(cfg, model=copy.deepcopy(model), tokenizer=tok)
    group = tr.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
    defaults = {f.name: f.default for f in GRPOConfig.__dataclass_fields__.values()}
    mine = _cfg()
    assert (mine.adam_beta1, mine.adam_beta2, mine.adam_epsilon) == (
        defaults["adam_beta1"], defaults["adam_beta2"], defaults["adam_epsilon"])


@pytest.mark.parametrize("disable", [True, False])
def test_disable_dropout_follows_trls_rule(smol_tokenizer, disable):
    from trl.trainer.utils import disable_dropout_in_model

    from reinlm.trainer.token_policy import TokenPolicy

    model = _gpt2_with_dropout(smol_tokenizer)
    theirs = copy.deepcopy(model)
    if disable:
        disable_dropout_in_model(theirs)
    pol = TokenPolicy(_cfg(model="gpt2-tiny", kl_coef=0.0, disable_dropout=disable), torch.device("cpu"),
                      model=model, tokenizer=smol_tokenizer)
    mine = [m.p for m in pol.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert mine == [m.p for m in theirs.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(mine) == 4 and set(mine) == ({0.0} if disable else {0.3})
    # the training forward (train mode) is deterministic exactly when dropout is off
    from reinlm.rollout.token import SamplingConfig, generate_rollouts

    batch = generate_rollouts(pol.model.eval(), smol_tokenizer, ["Hello there"], 2, SamplingConfig(max_new_tokens=4))
    pol.model.train()
    a, b = pol.score(batch).logp, pol.score(batch).logp
    assert torch.equal(a, b) == disable


def test_sync_ref_model_mixes_every_n_steps_and_survives_a_checkpoint(tiny_lm, tmp_path):
    from trl.trainer.callbacks import SyncRefModelCallback

    from reinlm.trainer.token_policy import TokenPolicy

    model, tok = tiny_lm
    cfg = _cfg(model="tiny", kl_coef=0.05, sync_ref_model=True, ref_model_mixup_alpha=0.3, ref_model_sync_steps=2)
    pol = TokenPolicy(cfg, torch.device("cpu"), model=copy.deepcopy(model), tokenizer=tok)
    expected = copy.deepcopy(pol.ref_model)
    for step in range(1, 5):
        with torch.no_grad():  # an "optimiser step": move every trained weight
            for p in pol.model.parameters():
                p.add_(0.01 * step)
        pol.after_optimizer_step()
        if step % 2 == 0:  # TRL's callback at global_step % ref_model_sync_steps == 0
            SyncRefModelCallback._sync_target_model(pol.model, expected, 0.3)
        for mine, theirs in zip(pol.ref_model.parameters(), expected.parameters(), strict=True):
            assert torch.allclose(mine, theirs, atol=1e-7), step
    assert not torch.equal(next(pol.ref_model.parameters()), next(model.parameters()))  # it moved
    pol.save(tmp_path / "policy")
    fresh = TokenPolicy(cfg, torch.device("cpu"), model=copy.deepcopy(model), tokenizer=tok)
    fresh.load(tmp_path / "policy")
    for mine, theirs in zip(fresh.ref_model.parameters(), pol.ref_model.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert fresh._optimizer_steps == 4


@pytest.mark.parametrize("extra,words", [
    (["--sync-ref-model", "true", "--kl-coef", "0"], "sync_ref_model: true with --kl-coef 0"),
    (["--sync-ref-model", "true", "--lora-r", "8"], "sync_ref_model: true with --lora-r 8"),
    (["--ref-model-mixup-alpha", "1.5"], "allowed: a finite number >= 0 and <= 1"),
    (["--ref-model-sync-steps", "0"], "allowed: an integer >= 1"),
    (["--adam-beta1", "1"], "allowed: a finite number >= 0 and < 1"),
    (["--adam-epsilon", "0"], "allowed: a finite number > 0"),
    (["--reward-weights", "1,x"], "reward_weights: got '1,x'; allowed: finite numbers"),
    (["--multi-objective-aggregation", "normalize_then_sum", "--algo", "rloo"], "allowed: --algo grpo"),
])
def test_bad_values_exit_2(tmp_path, capsys, extra, words):
    from reinlm.cli.main import main

    code = main(["train", *extra, "--out", str(tmp_path / "run"), "--progress", "false"])
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_normalize_then_sum_equals_trls_rule():
    """TRL 1.16's normalize_then_sum (grpo_trainer.py, transcribed with TRL's own nanstd) against reinlm's
    group-normalised terms followed by GRPO's advantages; NaN where a term did not score, one unscorable row."""
    from trl.trainer.utils import nanstd

    from reinlm.algorithms import AdvantageInputs, AlgorithmConfig, build_algorithm
    from reinlm.algorithms.groups import normalize_then_sum

    g = torch.Generator().manual_seed(0)
    G, n_groups = 4, 3
    per_func = torch.randn(G * n_groups, 2, generator=g, dtype=torch.float64)
    per_func[1, 0] = float("nan")  # the first term did not score row 1
    per_func[6, 1] = float("nan")
    per_func[9] = float("nan")  # unscorable: neither term
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    # --- TRL
    grouped = per_func.view(-1, G, 2)
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = nanstd(grouped, dim=1, keepdim=True)
    reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, 2)
    rewards = (reward_k * w.unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(per_func).all(1)] = torch.nan
    theirs = torch.nan_to_num((rewards - torch.nanmean(rewards)) / (nanstd(rewards) + 1e-4), nan=0.0)
    # --- reinlm
    gids = torch.arange(n_groups).repeat_interleave(G)
    valid = ~torch.isnan(per_func).all(1)
    scores = normalize_then_sum({"a": per_func[:, 0], "b": per_func[:, 1]}, {"a": 2.0, "b": 0.5}, gids)
    grpo = build_algorithm("grpo", AlgorithmConfig(multi_objective_aggregation="normalize_then_sum"))
    inputs = AdvantageInputs(scores=scores * valid, valid=valid, mask=torch.ones(len(gids), 1), group_ids=gids)
    mine = grpo.advantages(inputs).advantages[:, 0]
    assert torch.allclose(mine.double(), theirs, atol=1e-5), (mine, theirs)


def test_reward_weights_multiply_the_terms(tiny_lm):
    from reinlm.trainer.loop import Trainer

    model, tok = tiny_lm
    spec = f"{ASSETS / 'toy_rewards.py'}:space_share+0.5*target_length:10"
    tr = Trainer(_cfg(model="tiny", reward=spec, reward_weights=[2.0, 3.0], kl_coef=0.0, prompts="builtin:neutral"),
                 model=copy.deepcopy(model), tokenizer=tok)
    assert [c.weight for c in tr.reward_set.components] == [2.0, 1.5]
    with pytest.raises(Exception, match="reward_weights: got 1 weights for 2 reward terms"):
        Trainer(_cfg(model="tiny", reward=spec, reward_weights=[2.0], kl_coef=0.0, prompts="builtin:neutral"),
                model=copy.deepcopy(model), tokenizer=tok)


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.1), (50, 1.0, 0.05), (0, 0.9, 0.2), (100, 0.95, 0.02)])
def test_min_p_filters_as_hf_does(top_k, top_p, min_p):
    """reinlm's filter (top-k, top-p, min-p) keeps exactly the tokens transformers' warpers keep in generate's
    order (TopK, TopP, MinP), and a draw never picks a dropped token."""
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from reinlm.rollout.sampling import choose, filter_logits

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 1000, generator=g) * 3
    hf = logits.clone()
    for warper in ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else []) + \
            [MinPLogitsWarper(min_p)]:
        hf = warper(None, hf)
    mine = filter_logits(logits, top_k, top_p, min_p)
    assert torch.equal(torch.isinf(mine), torch.isinf(hf))
    kept = ~torch.isinf(mine)
    assert 0 < int(kept.sum()) < kept.numel()
    for seed in range(20):
        u = torch.rand(6, generator=torch.Generator().manual_seed(seed))
        idx, _ = choose(logits, u, top_k=top_k, top_p=top_p, min_p=min_p)
        assert kept.gather(-1, idx[:, None]).all()


def test_generation_kwargs_override_the_sampling_keys_as_in_trl():
    from reinlm.errors import ConfigError

    cfg = _cfg(min_p=0.01, top_p=0.8, generation_kwargs={"top_p": 0.9, "min_p": 0.05, "do_sample": True})
    assert (cfg.sampling.top_p, cfg.sampling.min_p) == (0.9, 0.05)
    assert _cfg(min_p=None).sampling.min_p == 0.0  # TRL's default None: off
    with pytest.raises(ConfigError, match="generation_kwargs: the key 'num_beams' has no meaning"):
        _cfg(generation_kwargs={"num_beams": 2})


def test_training_rollouts_use_min_p(tiny_lm):
    """min_p 1.0 keeps only the most likely token: the training sampler's draws no longer depend on the seed."""
    from reinlm.trainer.token_policy import TokenPolicy

    model, tok = tiny_lm
    prompts = ["Once upon a time", "The river"]
    for min_p, same in ((1.0, True), (0.0, False)):
        cfg = _cfg(model="tiny", kl_coef=0.0, min_p=min_p, max_new_tokens=6, rollout_dtype="same")  # float32: no ties
        pol = TokenPolicy(cfg, torch.device("cpu"), model=copy.deepcopy(model), tokenizer=tok)
        a, b = pol.rollout(prompts, 2, [1, 2]), pol.rollout(prompts, 2, [3, 4])
        assert torch.equal(a.response_ids, b.response_ids) == same
