"""TRL's reward calling convention: keyword arguments, completion_ids, trainer_state, log_metric/log_extra,
async rewards, numpy/torch scalars, callable objects, None semantics (nansum) and TRL's shipped rewards."""

from __future__ import annotations

import asyncio
import functools
import sys

import numpy as np
import pytest
import torch

from reinlm.errors import ReinlmError
from reinlm.rewards import RewardSet, RewardTrainerState, contains_words, parse_reward_spec, weighted


def rs(*fns, weights=None, on_error="fail"):
    return RewardSet.from_functions(list(fns), weights=weights, on_error=on_error)


def test_rewards_are_called_by_keyword_with_every_trl_argument():
    seen = {}

    def only_completions(completions, **kwargs):  # TRL's most common shape: completions first, by keyword
        seen.update(kwargs, completions=completions)
        return [float(len(c)) for c in completions]

    state = RewardTrainerState(global_step=3, max_steps=10, epoch=0.5)
    res = rs(only_completions).score(["p1", "p2"], ["abc", "de"], {"answer": ["4", "5"]},
                                     completion_ids=[[1, 2, 2], [7]], trainer_state=state)
    assert res.total.tolist() == [3.0, 2.0]
    assert seen["prompts"] == ["p1", "p2"] and seen["answer"] == ["4", "5"]
    assert seen["completion_ids"] == [[1, 2, 2], [7]] and seen["completions"] == ["abc", "de"]
    assert seen["trainer_state"].global_step == 3 and seen["trainer_state"].max_steps == 10
    assert callable(seen["log_extra"]) and callable(seen["log_metric"])


def test_signature_without_kwargs_gets_only_what_it_names_and_missing_columns_are_named():
    def ids_only(completion_ids):
        return [float(len(i)) for i in completion_ids]

    assert rs(ids_only).score(["", ""], ["a", "b"], completion_ids=[[1], [1, 2, 3]]).total.tolist() == [1.0, 3.0]

    def needs_solution(completions, solution, **kwargs):
        return [float(c == s) for c, s in zip(completions, solution)]

    with pytest.raises(ReinlmError, match=r"'needs_solution' requires the argument\(s\) 'solution'.*columns \(answer\)"):
        rs(needs_solution).score([""], ["4"], {"answer": ["4"]})

    def positional_only(completions, /):
        return [1.0]

    with pytest.raises(ReinlmError, match="positional-only"):
        rs(positional_only).score([""], ["a"])


def test_log_metric_and_log_extra_are_collected():
    def logs(completions, log_metric, log_extra, **kwargs):
        log_metric("mean_len", sum(map(len, completions)) / len(completions))
        log_metric("mean_len", 0.0)
        log_extra("upper", [c.upper() for c in completions])
        log_extra("short", ["x"])  # wrong length: dropped with a warning
        return [1.0] * len(completions)

    res = rs(logs).score(["", ""], ["ab", "abcd"])
    assert res.metrics == {"mean_len": pytest.approx(1.5)}  # mean of the two logged values (3 and 0)
    assert res.extras == {"upper": ["AB", "ABCD"]}


def test_async_rewards_are_awaited_concurrently():
    started: set[str] = set()

    async def meet(me: str, other: str) -> None:
        """Returns once both rewards have started; times out (an error) if they run one after another."""
        started.add(me)

        async def other_started():
            while other not in started:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(other_started(), timeout=5)

    async def first(completions, **kwargs):
        await meet("first", "second")
        return [1.0] * len(completions)

    async def second(completions, **kwargs):
        await meet("second", "first")
        return [2.0] * len(completions)

    res = rs(first, second).score(["", ""], ["x", "y"])
    assert res.total.tolist() == [3.0, 3.0]


class AsyncJudge:
    """A callable object with an async __call__ (e.g. an LLM judge client)."""

    __name__ = "judge"

    async def __call__(self, prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(p) + len(c)) for p, c in zip(prompts, completions)]


class Scaled:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, completions, **kwargs):
        return [self.scale * len(c) for c in completions]


def test_callable_objects_partials_numpy_and_torch_scalars():
    def np_and_torch(completions, **kwargs):
        return [np.float32(0.5), torch.tensor(1.5), np.int64(2), torch.tensor([3.0]), True][: len(completions)]

    out = rs(AsyncJudge(), Scaled(2.0), np_and_torch).score(["p"] * 5, ["a", "bb", "c", "d", "e"])
    assert out.components["judge"].tolist() == [2.0, 3.0, 2.0, 2.0, 2.0]
    assert out.components["Scaled"].tolist() == [2.0, 4.0, 2.0, 2.0, 2.0]
    assert out.components["np_and_torch"].tolist() == [0.5, 1.5, 2.0, 3.0, 1.0]

    def with_bonus(completions, bonus, **kwargs):
        return [bonus] * len(completions)

    part = functools.partial(with_bonus, bonus=0.25)
    assert rs(part).names == ["with_bonus"] and rs(part).score([""], ["a"]).total.tolist() == [0.25]


def math_reward(completions, task, answer, **kwargs):
    """TRL's multi-task pattern: None on rows of another task."""
    return [None if t != "math" else float(c.strip() == a) for c, t, a in zip(completions, task, answer)]


def code_reward(completions, task, **kwargs):
    return [None if t != "code" else float("def " in c) for c, t in zip(completions, task)]


def test_none_is_skipped_by_nansum_and_a_sample_no_reward_scores_is_invalid():
    completions = ["4", "5", "def f(): pass", "print(1)", "a poem"]
    columns = {"task": ["math", "math", "code", "code", "poetry"], "answer": ["4", "4", None, None, None]}
    res = rs(math_reward, code_reward, weights=[2.0, 0.5]).score([""] * 5, completions, columns)
    # hand-computed: math rows 2 * [1, 0]; code rows 0.5 * [1, 0]; the poetry row has no reward -> invalid
    assert res.total.tolist() == [2.0, 0.0, 0.5, 0.0, 0.0]
    assert res.valid.tolist() == [True, True, True, True, False] and res.unscorable == 1
    assert res.invalid_frac == pytest.approx(0.2) and res.valid_mean() == pytest.approx(2.5 / 4)
    comp = res.components
    assert torch.isnan(comp["math_reward"][2:]).all() and comp["math_reward"][:2].tolist() == [1.0, 0.0]
    assert res.component_means() == {"math_reward": 0.5, "code_reward": 0.5}  # TRL's nanmean per reward
    # the same sums as TRL's (rewards_per_func * weights).nansum(dim=1)
    per_func = torch.tensor([[1.0, float("nan")], [0.0, float("nan")], [float("nan"), 1.0], [float("nan"), 0.0],
                             [float("nan"), float("nan")]])
    trl_total = (per_func * torch.tensor([2.0, 0.5])).nansum(dim=1)
    assert torch.equal(trl_total[:4], res.total[:4])


def test_nan_or_an_exception_invalidates_with_skip_and_fails_by_default():
    def half_nan(completions, **kwargs):
        return [float("nan") if "bad" in c else 1.0 for c in completions]

    with pytest.raises(ReinlmError, match=r"'half_nan' returned nan on sample 1 \(completion 'bad'\)"):
        rs(half_nan, contains_words(["ok"])).score(["", ""], ["ok", "bad"])
    res = rs(half_nan, contains_words(["ok"]), on_error="skip").score(["", ""], ["ok", "bad"])
    assert res.valid.tolist() == [True, False] and res.total.tolist() == [2.0, 0.0] and res.unscorable == 0


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize("is_async", [False, True])
def test_sys_exit_inside_a_reward_is_a_clear_error(on_error, is_async):
    def quits(completions, **kwargs):
        sys.exit(3)

    async def quits_async(completions, **kwargs):
        sys.exit(3)

    fn = quits_async if is_async else quits
    with pytest.raises(ReinlmError, match=r"called sys.exit\(3\) while scoring a batch of 2 samples"):
        rs(fn, on_error=on_error).score(["", ""], ["a", "b"])


def test_conversational_prompts_give_trl_rewards_messages_and_text_rewards_text():
    got = {}

    def trl_style(prompts, completions, **kwargs):
        got["prompts"], got["completions"] = prompts, completions
        return [float(len(c[0]["content"])) for c in completions]

    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]] * 2
    res = weighted(trl_style, contains_words(["four"])).score(prompts, ["four", "5"])
    assert got["prompts"] == prompts
    assert got["completions"] == [[{"role": "assistant", "content": "four"}], [{"role": "assistant", "content": "5"}]]
    assert res.total.tolist() == [4.0 + 1.0, 1.0]


def test_the_whole_set_is_a_trl_reward_that_forwards_its_logs():
    def logs(completions, log_metric, **kwargs):
        log_metric("seen", len(completions))
        return [1.0] * len(completions)

    logged = []
    out = weighted(logs, contains_words(["a"]))(prompts=["", ""], completions=["a", "b"], completion_ids=[[1], [2]],
                                                 trainer_state=None, log_metric=lambda k, v: logged.append((k, v)),
                                                 log_extra=None, other=["x", "y"])
    assert out == [2.0, 1.0] and logged == [("seen", 2.0)]


# ---------------------------------------------------------------------------------------------- TRL's shipped rewards


def test_trl_shipped_rewards_work_unchanged_and_match_trl():
    trl_rewards = pytest.importorskip("trl.rewards")
    think = trl_rewards.think_format_reward
    overlong = trl_rewards.get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    repeat = trl_rewards.get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    completions = ["<think>\nhmm\n</think>\n4", "4", "<think>no end"]
    ids = [[1] * 5, [1, 2, 3, 4, 5, 6, 7, 8], [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]]
    messages = [[{"role": "assistant", "content": c}] for c in completions]
    expected = {
        "think_format_reward": think(messages),
        "soft_overlong_punishment_reward": overlong(completion_ids=ids),
        "repetition_penalty_reward": repeat(completion_ids=ids),
    }
    assert expected["think_format_reward"] == [1.0, 0.0, 0.0]
    assert expected["soft_overlong_punishment_reward"] == [0.0, -0.5, -1.0]  # 8 tokens: (6 - 8) / 4
    conv = [[{"role": "user", "content": "2+2?"}]] * 3
    res = rs(think, overlong, repeat).score(conv, completions, completion_ids=ids)
    as_f32 = {k: torch.tensor(v, dtype=torch.float32).tolist() for k, v in expected.items()}  # TRL stores float32 too
    assert {k: v.tolist() for k, v in res.components.items()} == as_f32
    # on plain-text data TRL's format reward indexes completions as messages: it gets them in that form
    res = rs(think, overlong, repeat).score(["2+2?"] * 3, completions, completion_ids=ids)
    assert {k: v.tolist() for k, v in res.components.items()} == as_f32


def test_trl_reward_from_a_file_by_spec(tmp_path):
    path = tmp_path / "trl_rewards_file.py"
    path.write_text("from trl.rewards import think_format_reward, get_soft_overlong_punishment\n"
                    "overlong = get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)\n"
                    "async def shout(completions, **kwargs):\n"
                    "    return [float(c[0]['content'].isupper()) for c in completions]\n")
    spec = f"{path}:think_format_reward + 2*{path}:overlong + {path}:shout"
    res = parse_reward_spec(spec).score([[{"role": "user", "content": "hi"}]] * 2, ["<think>a</think>b", "NO"],
                                        completion_ids=[[1, 2, 3], [1]])
    assert res.total.tolist() == [1.0 + 2 * -0.5, 0.0 + 0.0 + 1.0]
