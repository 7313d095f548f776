"""Multi-turn core: the driver's token-in/token-out, the folded batch's masks, turn credit, faults, adapters.

Tiny random Llama with the real SmolLM2 tokenizer (conftest.tiny_lm); every test is offline and fast.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch

from reinlm.algorithms import build_algorithm
from reinlm.algorithms.base import AdvantageInputs, LossInputs, LossNorm
from reinlm.algorithms.turn_credit import (broadcast_turns, credit_targets, discounted_returns, turn_gae,
                                           turn_values)
from reinlm.envs import ToolEnv, parse_tool_calls, resolve_environment
from reinlm.envs.spec import load_object
from reinlm.errors import ReinlmError
from reinlm.rollout import multiturn
from reinlm.rollout.multiturn import EpisodeLimits, episode_metrics, episodes_to_batch, run_episodes
from reinlm.rollout.sampling import SamplingConfig
from reinlm.rollout.token import token_logprobs


class Echo:
    """Text env: answers every turn with a fixed observation, ends after ``n`` turns; reward = turn index."""

    def __init__(self, n=3):
        self.n = n

    def reset(self, seed=0, **row):
        self.t = 0
        return f"start {seed}"

    def step(self, text):
        self.t += 1
        return ("the environment says: go on", float(self.t), self.t >= self.n, {})


def _play(model, tok, envs, G=2, limits=None, rows=None):
    rows = rows or [{} for _ in range(len(envs) // G)]
    gens = [torch.Generator().manual_seed(i) for i in range(len(envs))]
    limits = limits or EpisodeLimits(max_turns=3, turn_tokens=6, max_completion_length=18)
    return run_episodes(model, tok, envs, rows, list(range(len(rows))), G, SamplingConfig(), limits, gens)


def test_next_turn_input_begins_with_the_sampled_ids(tiny_lm, monkeypatch):
    model, tok = tiny_lm
    fed, sampled = [], []
    real = multiturn.decode

    def spy(stepper, ids, mask, **kw):  # the turn's input: what the kept cache holds + the ids prefilled now
        held = [stepper.caches.held(e) for e in stepper.episodes] if hasattr(stepper, "caches") else [[]] * len(ids)
        fed.append([h + row[m.bool()].tolist() for h, row, m in zip(held, ids, mask)])
        out = real(stepper, ids, mask, **kw)
        sampled.append([t[:n].tolist() for t, n in zip(out.tokens, out.lengths)])
        return out

    monkeypatch.setattr(multiturn, "decode", spy)
    eps = _play(model.eval(), tok, [Echo() for _ in range(4)])
    assert len(fed) == 3  # three turns, all four episodes live in each
    for i, ep in enumerate(eps):
        for k in range(2):
            prev, nxt, new = fed[k][i], fed[k + 1][i], sampled[k][i]
            assert nxt[: len(prev)] == prev
            assert nxt[len(prev): len(prev) + len(new)] == new  # the sampled ids themselves, not re-encoded
            s, e = ep.turns[k]
            assert ep.ids[s:e] == new and ep.model_mask[s:e] == [1] * len(new)
        assert sum(ep.model_mask) == sum(len(sampled[k][i]) for k in range(3))
        assert ep.rewards == [1.0, 2.0, 3.0] and ep.ret == 6.0


class Chatty(Echo):
    """Echo whose observations grow with the turn and whose episodes end after 2, 3 or 4 turns (by seed)."""

    def reset(self, seed=0, **row):
        self.n = 2 + seed % 3
        return super().reset(seed) + " word" * seed

    def step(self, text):
        obs, reward, done, info = super().step(text)
        return obs + " more" * (2 * self.t), reward, done, info


def _prefill_spy(monkeypatch):
    """Counts the ids every turn prefills (the driver's decode calls)."""
    prefilled = []
    real = multiturn.decode

    def spy(stepper, ids, mask, **kw):
        prefilled.append(int(mask.sum()))
        return real(stepper, ids, mask, **kw)

    monkeypatch.setattr(multiturn, "decode", spy)
    return prefilled


def test_kept_cache_samples_exactly_what_reprefilling_samples(tiny_lm, monkeypatch):
    """float32, fixed seeds: keeping each episode's cache across turns gives the re-prefill path's episodes token for
    token. Many stop ids make rows stop at different steps (rows leave the decode batch mid-turn) and episodes end
    after different numbers of turns (they leave the next turn's batch)."""
    model, tok = tiny_lm
    monkeypatch.setattr(multiturn, "eos_ids", lambda m, t: list(range(0, len(t), 7)))
    prefilled = _prefill_spy(monkeypatch)
    limits = EpisodeLimits(max_turns=4, turn_tokens=8, max_completion_length=30)

    def play(reprefill):
        gens = [torch.Generator().manual_seed(i) for i in range(6)]
        return run_episodes(model.eval(), tok, [Chatty() for _ in range(6)], [{}] * 3, [0, 1, 2], 2, SamplingConfig(),
                            limits, gens, reprefill=reprefill)

    ref = play(True)
    n_ref = sum(prefilled)
    prefilled.clear()
    kept = play(False)
    lengths = [[e - s for s, e in ep.turns] for ep in ref]
    assert {len(t) for t in lengths} == {2, 3, 4} and min(min(t) for t in lengths) < 8  # the cases above happen
    for a, b in zip(ref, kept):
        assert a.ids == b.ids and a.turns == b.turns and a.rewards == b.rewards
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5
    # only the first observations are prefilled in full; a later turn prefills the previous turn's last sampled
    # token (the decode loop never feeds it) and the observation after it
    later = [ep.turns[k][0] - ep.turns[k - 1][1] + 1 for ep in kept for k in range(1, len(ep.turns))]
    assert prefilled[0] == sum(ep.prompt_len for ep in kept) and sum(prefilled[1:]) == sum(later)
    assert sum(prefilled) < n_ref / 2


def test_kept_cache_in_bfloat16_records_what_a_forward_recomputes(tiny_lm):
    """bfloat16 (the fused decoder where this CPU packs bfloat16): the log-probs sampled with kept caches are what a
    float32 teacher-forced forward of the whole transcript gives, to bfloat16 rounding."""
    model, tok = tiny_lm
    m16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    eps = _play(m16, tok, [Chatty() for _ in range(4)])
    batch = episodes_to_batch(eps, tok, 2, 1.0, tok.pad_token_id)
    with torch.no_grad():
        logp = token_logprobs(m16.float(), batch.input_ids, batch.attention_mask, batch.response_ids.shape[1]).logp
    m = batch.response_mask.bool()
    assert sum(len(ep.turns) for ep in eps) >= 8 and m.sum() > 40
    assert (logp[m] - batch.logprobs[m]).abs().max() < 0.01


def test_observation_tokens_get_exactly_zero_gradient(tiny_lm):
    model, tok = tiny_lm
    eps = _play(model.eval(), tok, [Echo() for _ in range(4)])
    batch = episodes_to_batch(eps, tok, 2, 1.0, tok.pad_token_id)
    obs = (batch.response_attn == 1) & (batch.response_mask == 0)
    assert obs.sum() > 10 and batch.response_mask.sum() > 10
    R = batch.response_ids.shape[1]
    model.train()
    ref = token_logprobs(model, batch.input_ids, batch.attention_mask, R).logp.detach() - 0.1
    scores = token_logprobs(model, batch.input_ids, batch.attention_mask, R, return_entropy=True)
    logp = scores.logp
    logp.retain_grad()
    entropy = scores.entropy
    entropy.retain_grad()
    algo = build_algorithm("grpo")
    mask = batch.response_mask.float()
    inputs = AdvantageInputs(scores=torch.tensor([e.ret for e in eps]) + torch.arange(4.0), valid=torch.ones(4, dtype=torch.bool),
                             mask=mask, group_ids=batch.group_ids)
    targets = algo.advantages(inputs)
    algo.cfg.entropy_coef = 0.01
    loss, _ = algo.loss(LossInputs(logp=logp, old_logp=logp.detach(), mask=mask, targets=targets,
                                   kl=logp - ref, kl_coef=0.1, entropy=entropy), LossNorm.single(mask))
    loss.backward()
    assert torch.all(logp.grad[obs] == 0) and torch.all(entropy.grad[obs] == 0)
    assert logp.grad[batch.response_mask.bool()].abs().sum() > 0
    # the forward attends to the observations: dropping them from the attention changes the model's log-probs
    plain = token_logprobs(model, batch.input_ids, torch.cat([batch.prompt_mask, batch.response_mask], 1), R).logp
    assert not torch.allclose(plain[batch.response_mask.bool()], logp.detach()[batch.response_mask.bool()])
    # and the sampler's log-probs are what the teacher-forced forward recomputes (same weights, float32)
    m = batch.response_mask.bool()
    assert torch.allclose(batch.logprobs[m], logp.detach()[m], atol=1e-4)
    model.eval()


def test_turn_credit_against_hand_computed_returns():
    r = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    G = discounted_returns(r, 0.5)
    assert torch.allclose(G, torch.tensor([[1.5, 1.0, 2.0], [1.5, 3.0, 0.0]]))
    # turn GAE, gamma 0.5, lambda 1: deltas of episode 0 with V = (1, 1, 1) (2 turns played of 3 -> third ignored)
    v = torch.tensor([[1.0, 1.0, 9.0]])
    adv, ret = turn_gae(torch.tensor([[1.0, 2.0, 5.0]]), v, torch.tensor([2]), 0.5, 1.0)
    # d1 = 2 + 0 - 1 = 1; d0 = 1 + 0.5 * 1 - 1 = 0.5; A0 = 0.5 + 0.5 * 1 = 1.0
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0, 0.0]])) and torch.allclose(ret, torch.tensor([[2.0, 2.0, 0.0]]))
    turn_ids = torch.tensor([[1, 1, 0, 2, 0], [1, 0, 2, 2, 3]])
    assert torch.equal(broadcast_turns(torch.tensor([[5.0, 6.0, 7.0], [1.0, 2.0, 3.0]]), turn_ids),
                       torch.tensor([[5.0, 5.0, 0.0, 6.0, 0.0], [1.0, 0.0, 2.0, 2.0, 3.0]]))
    vals = torch.arange(10.0).view(2, 5)
    assert torch.equal(turn_values(vals, turn_ids, 3), torch.tensor([[0.0, 3.0, 0.0], [5.0, 7.0, 9.0]]))
    # discounted credit with REINFORCE's batch-mean baseline: turn k's tokens get G_k minus the mean G_k
    algo = build_algorithm("reinforce")
    algo.cfg.baseline = "batch_mean"
    mask = (turn_ids > 0).float()
    inputs = AdvantageInputs(scores=torch.zeros(2), valid=torch.ones(2, dtype=torch.bool), mask=mask,
                             group_ids=torch.zeros(2, dtype=torch.long))
    t = credit_targets(algo, inputs, turn_ids, r, "discounted", 0.5, 1.0)
    # turn 0: G = 1.5, 1.5 -> 0; turn 1: 1.0, 3.0 -> -1, +1; turn 2: only episode 1 reached it: 0 - 0
    assert torch.allclose(t.advantages, torch.tensor([[0.0, 0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.0]]))


def test_hanging_and_raising_environments_make_invalid_episodes(tiny_lm):
    model, tok = tiny_lm

    class Hang(Echo):
        def step(self, text):
            time.sleep(5)
            return super().step(text)

    class Boom(Echo):
        def step(self, text):
            raise ValueError("broken game")

    class WrongType(Echo):
        def step(self, text):
            return 42

    envs = [Echo(), Hang(), Boom(), WrongType()]
    t0 = time.perf_counter()
    eps = _play(model.eval(), tok, envs, G=1, limits=EpisodeLimits(max_turns=3, turn_tokens=4,
                                                                  max_completion_length=12, env_timeout=0.3))
    assert time.perf_counter() - t0 < 4.5
    assert [ep.valid for ep in eps] == [True, False, False, False]
    assert eps[1].timed_out and "env-timeout" in eps[1].fault
    assert "broken game" in eps[2].fault and "tuple" in eps[3].fault
    m = episode_metrics(eps)
    assert m["env/invalid_frac"] == 0.75 and m["env/timeout_frac"] == 0.25 and m["env/return"] == 6.0


class Counter(load_object(f"{Path(__file__).parent / 'assets' / 'trl_counter.py'}:IncrementEnv")):
    """TRL's documented counter environment plus a tool that always fails."""

    def explode(self) -> int:
        """
        A tool that always fails.

        Returns:
            Nothing, it raises.
        """
        raise RuntimeError("kaboom")


def test_tool_env_runs_tools_and_reports_failures():
    env = ToolEnv(Counter(), max_tool_calling_iterations=2)
    first = env.reset(prompt="Count to three.")
    assert first.startswith("Count to three.") and '"increment"' in first and "<tool_call>" in first
    obs, r, done, info = env.step('<tool_call>{"name": "increment", "arguments": {"step": 2}}</tool_call>'
                                  '<tool_call>{"name": "explode", "arguments": {}}</tool_call>')
    assert not done and r == 0 and info["tool_calls"] == 2 and info["tool_failures"] == 1
    assert '"content": "2"' in obs and '{"error": "kaboom"}' in obs
    obs, r, done, info = env.step("<tool_call>not json</tool_call>")
    assert info["tool_failures"] == 1 and "error" in obs
    # a third round passes max_tool_calling_iterations: the episode ends with get_reward()
    obs, r, done, info = env.step('<tool_call>{"name": "increment", "arguments": {"step": 1}}</tool_call>')
    assert done and r == 2.0
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>') == \
        [{"name": "f", "arguments": {"a": 1}}]


def test_tool_calls_in_the_tokenizers_own_format(smol_tokenizer):
    """A tokenizer with a response_template (transformers' parse_response) parses calls in its own format; the
    first observation then prescribes none (here a made-up <function_call> format, so the fallback's blocks are
    not calls)."""
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    tok.response_template = {
        "start_anchor": "<|im_start|>assistant\n", "defaults": {"role": "assistant"},
        "fields": {"content": {}, "tool_calls": {"open": "<function_call>", "close": "</function_call>",
                                                 "content": "json", "repeats": True,
                                                 "transform": {"type": "function", "function": "{content}"}}}}
    env = ToolEnv(Counter(), max_tool_calling_iterations=3)
    env.tokenizer = tok
    first = env.reset(prompt="Count to three.")
    assert '"increment"' in first and "<tool_call>" not in first
    obs, r, done, info = env.step('Sure. <function_call>{"name": "increment", "arguments": {"step": 2}}</function_call>'
                                  '<function_call>{"name": "explode", "arguments": {}}</function_call>')
    assert not done and info["tool_calls"] == 2 and info["tool_failures"] == 1 and env.env.counter == 2
    assert '"content": "2"' in obs
    obs, r, done, info = env.step('<tool_call>{"name": "increment", "arguments": {"step": 1}}</tool_call>')
    assert done and r == 2.0  # not a call in this tokenizer's format: the episode ended, counter unchanged


def test_bad_environment_specs_are_refused(tmp_path):
    with pytest.raises(ReinlmError, match="builtin:guess"):
        resolve_environment("builtin:chess")
    with pytest.raises(ReinlmError, match="allowed"):
        resolve_environment("nonsense")
    src = tmp_path / "envs.py"
    src.write_text("class NoReset:\n    def step(self, text):\n        return '', 0, True, {}\n\n"
                   "class BadTool:\n    def reset(self, **kw):\n        return 'hi'\n"
                   "    def poke(self, x):\n        return x\n")
    with pytest.raises(ReinlmError, match="no reset"):
        resolve_environment(f"{src}:NoReset")
    with pytest.raises(ReinlmError, match="'BadTool.poke' cannot be a tool"):
        resolve_environment(f"{src}:BadTool")
    with pytest.raises(ReinlmError, match="one-player"):
        resolve_environment("builtin:guess", opponent="random")
    with pytest.raises(ReinlmError, match="not a TextArena game"):
        resolve_environment("textarena:NoSuchGame-v0")


def test_two_player_seat_alternates_with_the_seed():
    spec = resolve_environment("textarena:TicTacToe-v0", opponent="random")
    assert spec.players == 2
    for seed in range(4):
        env = spec.make()
        obs = env.reset(seed=seed)
        assert env.seat == seed % 2
        assert env.env.get_observation()[0] == env.seat  # it is the trained seat's turn
        assert obs
        if seed % 2:  # seat 1 sees the opponent's first move
            assert "[Player 0]" in obs or "Player 0" in obs


OPENENV_ASSET = Path(__file__).parent / "assets" / "openenv_counter.py"


def test_openenv_environment_runs_in_process(tiny_lm):
    """An OpenEnv Environment (OpenEnv's template shape: Action/Observation models, reset/step/state) through
    ``openenv:path.py:Class``: the model's text fills the action's one str field, the observation's field is the
    next turn's text, its reward and done are the turn's; unusable action classes are refused (exit 2)."""
    spec = resolve_environment(f"openenv:{OPENENV_ASSET}:WordCounter")
    env = spec.make({})
    assert env.reset(seed=1) == "Say exactly 3 words."
    assert env.step("one two") == ("You said 2 words; say more.", -0.1, False, {"metadata": {}})
    assert env.step("a b c")[1:3] == (1.0, True)
    model, tok = tiny_lm
    eps = _play(model.eval(), tok, [spec.make({}) for _ in range(4)])
    hints = 0
    for i, ep in enumerate(eps):
        target = 2 + i // 2  # rows 0 and 1 have seeds 0 and 1
        assert ep.observations[0] == f"Say exactly {target} words."
        for k, text in enumerate(ep.texts):
            n = len(text.split())
            assert ep.rewards[k] == (1.0 if n == target else -0.1)
            if n != target and k + 1 < len(ep.observations):
                assert ep.observations[k + 1] == f"You said {n} words; say {'fewer' if n > target else 'more'}."
                e = ep.turns[k][1]
                assert tok.decode(ep.ids[e: ep.turns[k + 1][0]]).count(ep.observations[k + 1]) == 1
                hints += 1
    assert hints >= 4
    with pytest.raises(ReinlmError, match="a: str, b: str; allowed: exactly one str field"):
        resolve_environment(f"openenv:{OPENENV_ASSET}:AmbiguousEnv")
    with pytest.raises(ReinlmError, match="has no 'Nope'"):
        resolve_environment(f"openenv:{OPENENV_ASSET}:Nope")
