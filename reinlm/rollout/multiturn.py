"""Multi-turn rollouts: episodes against text environments, decoded through the one decode engine.

Dimension legend: B = episodes (N rows x G samples), b = episodes still going, P = first-observation length
(left-padded), R = everything after it (model and environment tokens, right-padded), S = tokens per turn.

**Token in, token out** (TRL issue 5224, verl issue 6854). An episode's ids are the first observation's
ids, then each turn's *sampled* ids exactly as the engine drew them, then the ids of the environment's next
observation (the chat template's user-turn wrapper around its text), and so on. The model's ids are never
decoded and re-encoded: turn k+1 is decoded from ``ids`` as they stand, so its input begins with turns
1..k's sampled ids (tested). Only the environment's text is tokenized.

**The driver** (:func:`run_episodes`): every turn, all live episodes go through :func:`reinlm.rollout.decode.
decode` as one left-padded batch (each row its own generator: an episode's samples do not depend on the
others in float32); each episode's new ids are appended, its text goes to ``env.step`` (guarded by
``--env-timeout``), and finished episodes drop out of the next turn's batch. Each episode's key/value cache is
kept across turns (:mod:`reinlm.rollout.turn_cache`): a turn prefills only the ids its cache does not hold yet
(the last sampled token and the new observation), not the whole transcript; ``reprefill=True`` re-prefills
the transcript every turn instead (the reference the kept cache is tested against, token for token).

**Folding** (:func:`episodes_to_batch`): an :class:`EpisodeBatch` is a ``RolloutBatch`` whose prompt is the
first observation and whose response is the rest of the transcript. ``response_mask`` is the ``model_mask``
(1 only where the policy wrote the token): every loss, KL, entropy and length statistic of the trainer reads
that mask, so observation and tool-result tokens get exactly zero gradient (tested). ``response_attn`` is 1
on every real token, so the teacher-forced forward attends to the observations as the sampler did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from reinlm.envs.protocol import EnvFault, EnvTimeout, as_step_result, call_reset, guarded_call
from reinlm.errors import required
from reinlm.rollout.decode import LMStepper, decode
from reinlm.rollout.sampling import Chooser, SamplingConfig
from reinlm.rollout.turn_cache import KeptCaches, TurnStepper, kept_cache_supported
from reinlm.rollout.token import RolloutBatch, eos_ids, left_pad, pad_token_id

if TYPE_CHECKING:
    from reinlm.envs.spec import EnvSpec

__all__ = ["Episode", "EpisodeBatch", "EpisodeLimits", "TurnFormat", "run_episodes", "start_episodes", "play_turns", "episodes_to_batch",
           "episode_metrics"]


# ----------------------------------------------------------------------------------------------- records
@dataclass
class Episode:
    """One rollout against an environment (DESIGN.md 5b)."""

    ids: list[int]  # the whole transcript: first observation, then model and environment tokens
    model_mask: list[int]  # 1 where the policy wrote the token (as sampled), 0 on environment tokens
    logprobs: list[float]  # sampling log-prob of each model token at the temperature (0 elsewhere)
    prompt_len: int  # tokens of the first observation
    turns: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each model turn in ids
    rewards: list[float] = field(default_factory=list)  # one reward per model turn
    turn_actions: list[list[int]] = field(default_factory=list)  # latent space: each turn's actions, one per token
    texts: list[str] = field(default_factory=list)  # each model turn, decoded (what env.step got)
    observations: list[str] = field(default_factory=list)  # the first observation, then each later one
    valid: bool = True  # False when the environment raised, hung or answered with a wrong type
    fault: str | None = None  # what went wrong, for samples.jsonl
    timed_out: bool = False
    done: bool = False  # the environment ended the episode (vs a limit)
    truncated: bool = False  # a limit ended it (turns, tokens, context)
    invalid_moves: int = 0
    tool_calls: int = 0
    tool_failures: int = 0
    env: Any = None  # the environment instance (reward functions get these as environments=)

    @property
    def ret(self) -> float:
        """The episode's return: the sum of its per-turn rewards (gamma = 1)."""
        return float(sum(self.rewards))

    @property
    def model_tokens(self) -> int:
        return int(sum(self.model_mask))

    @property
    def observation_tokens(self) -> int:
        return len(self.ids) - self.prompt_len - self.model_tokens

    def transcript(self) -> dict[str, Any]:
        """A JSON-able record for samples.jsonl: each turn's text and reward, the observations, which tokens trained."""
        return {"observations": self.observations, "turns": self.texts, "turn_rewards": self.rewards,
                "return": self.ret, "valid": self.valid, "fault": self.fault, "model_tokens": self.model_tokens,
                "observation_tokens": self.observation_tokens,
                "model_mask": "".join(str(m) for m in self.model_mask[self.prompt_len:])}


@dataclass
class EpisodeBatch(RolloutBatch):
    """A :class:`RolloutBatch` of episodes: ``response_mask`` = model tokens only (module docstring)."""

    response_attn: torch.Tensor | None = None  # (B, R) 1 on every real transcript token after the prompt
    turn_ids: torch.Tensor | None = None  # (B, R) k + 1 on the model tokens of turn k, 0 elsewhere
    turn_rewards: torch.Tensor | None = None  # (B, K) per-turn rewards (0 past the last turn)
    episodes: list[Episode] = field(default_factory=list)  # len B, the Episode records

    @property
    def attention_mask(self) -> torch.Tensor:
        """Prompt + every real transcript token (observations included): (B, P + R)."""
        return torch.cat([self.prompt_mask, required(self.response_attn, "EpisodeBatch.response_attn")], dim=1)


@dataclass
class EpisodeLimits:
    """Limits of one episode (TRL's names where TRL has them)."""

    max_turns: int = 4  # model turns per episode
    turn_tokens: int = 32  # tokens the model may write per turn (S)
    max_completion_length: int = 128  # model tokens over the whole episode (TRL's max_completion_length)
    env_timeout: float | None = 30.0  # seconds per environment call (None: no limit)
    context: int | None = None  # the model's context length


# ----------------------------------------------------------------------------------------------- chat format
class TurnFormat:
    """Turns environment text into ids: the first observation, and each later one after a model turn.

    With a chat template the first observation is a user message with the generation prompt, and each later
    one is the template's end-of-turn + user message + generation prompt (found once by rendering a sentinel
    conversation); without one, the observation's text on lines of its own. The EOS the model sampled to end
    its turn is not repeated.
    """

    def __init__(self, tokenizer: Any, chat: bool | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        self.eos_text = tokenizer.eos_token or ""
        if self.chat:
            msgs = [{"role": "user", "content": "\x00U"}, {"role": "assistant", "content": "\x00A"},
                    {"role": "user", "content": "\x00O"}]
            full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            after = full[full.index("\x00A") + 2:]
            self.pre, self.post = after.split("\x00O")  # e.g. "<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n..."

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def first(self, text: str) -> list[int]:
        """Ids of the first observation (the prompt)."""
        if self.chat:
            rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                          add_generation_prompt=True)
            return self._encode(rendered)
        ids = self.tokenizer(text)["input_ids"]
        return ids or [self.tokenizer.bos_token_id or 0]

    def next(self, text: str, ended_with_eos: bool) -> list[int]:
        """Ids of an observation that follows a model turn."""
        if self.chat:
            pre = self.pre
            if ended_with_eos and self.eos_text and pre.startswith(self.eos_text):
                pre = pre[len(self.eos_text):]
            return self._encode(pre + text + self.post)
        return self._encode("\n" + text + "\n")


# ----------------------------------------------------------------------------------------------- driver
def _fault(ep: Episode, e: EnvFault) -> None:
    ep.valid, ep.done, ep.fault = False, True, str(e)
    ep.timed_out = isinstance(e, EnvTimeout)


def run_episodes(model: Any, tokenizer: Any, envs: list[Any], rows: list[dict[str, Any]], env_seeds: list[int], samples_per_row: int,
                 sampling: SamplingConfig, limits: EpisodeLimits, generators: list[torch.Generator] | None = None,
                 fmt: TurnFormat | None = None, on_turn: Callable[[int, int], None] | None = None,
                 reprefill: bool = False, make_stepper: Callable[[], Any] | None = None,
                 eos: list[int] | None = None) -> list[Episode]:
    """Play B = N * G episodes: ``envs[i * G + j]`` plays row ``i`` with seed ``env_seeds[i]``.

    Args:
        model: the causal LM that samples (eval mode; the rollout copy of the engine).
        tokenizer: its tokenizer.
        envs: B environment instances (text protocol, :mod:`reinlm.envs.protocol`).
        rows: N dataset rows (dicts of columns); ``reset(**row)`` gets one.
        env_seeds: N seeds, one per row: a group's G episodes see the same game.
        samples_per_row: G.
        sampling: temperature / top-k / top-p / greedy (its ``max_new_tokens`` is ignored: ``limits``).
        limits: :class:`EpisodeLimits`.
        generators: B generators, one per episode (None: the global RNG).
        on_turn: optional ``fn(turn, live_episodes)`` (progress).
        reprefill: re-prefill each transcript every turn instead of keeping its key/value cache (the reference
            path; models whose cache cannot be kept always re-prefill, :func:`~reinlm.rollout.turn_cache.
            kept_cache_supported`).
        make_stepper: ``fn() -> stepper`` for another stepper than the LM's (latent space: the latent model's, whose
            action chooser samples and whose ``extras["action"]`` each turn's :attr:`Episode.turn_actions` keeps);
            it re-prefills the transcript every turn.
        eos: the ids that end a turn (None: the tokenizer's and ``model``'s generation config's).

    Returns B :class:`Episode` records (invalid ones flagged, never raised).
    """
    fmt = fmt or TurnFormat(tokenizer)
    episodes = start_episodes(fmt, envs, rows, env_seeds, samples_per_row, limits.env_timeout or None)
    play_turns(model, tokenizer, episodes, sampling, limits, generators, fmt, on_turn, reprefill, make_stepper, eos)
    for ep in episodes:
        if not ep.done:
            ep.done = ep.truncated = True
    return episodes


def start_episodes(fmt: TurnFormat, envs: list[Any], rows: list[dict[str, Any]], env_seeds: list[int], samples_per_row: int,
                   timeout: float | None) -> list[Episode]:
    """Reset ``envs[i * G + j]`` on row ``i`` with seed ``env_seeds[i]`` -> B :class:`Episode` records holding the
    first observation (a reset that raises, hangs or returns something other than text makes its episode invalid)."""
    G = samples_per_row
    episodes: list[Episode] = []
    for i, env in enumerate(envs):
        row, seed = rows[i // G], env_seeds[i // G]
        ep = Episode(ids=[], model_mask=[], logprobs=[], prompt_len=0, env=env)
        try:
            first = guarded_call(call_reset, env, row, seed, timeout=timeout, what="reset")
            if first is None:
                first = ""
            if not isinstance(first, str):
                raise EnvFault(f"reset returned {type(first).__name__} ({first!r:.60}); expected text (str)")
        except EnvFault as e:
            first = ""
            _fault(ep, e)
        ep.ids = fmt.first(first)
        ep.model_mask = [0] * len(ep.ids)
        ep.logprobs = [0.0] * len(ep.ids)
        ep.prompt_len = len(ep.ids)
        ep.observations.append(first)
        episodes.append(ep)
    return episodes


def play_turns(model: Any, tokenizer: Any, episodes: list[Episode], sampling: SamplingConfig, limits: EpisodeLimits,
               generators: list[torch.Generator] | None = None, fmt: TurnFormat | None = None,
               on_turn: Callable[[int, int], None] | None = None, reprefill: bool = False,
               make_stepper: Callable[[], Any] | None = None, eos: list[int] | None = None,
               turns: int | None = None) -> None:
    """Play the live (not done) ``episodes`` on, in place, for at most ``turns`` more turns (None: until each is
    done or has ``limits.max_turns`` turns); arguments as :func:`run_episodes`, which calls it after the resets.
    Episodes may be mid-way (tree search continues copies of one, :mod:`reinlm.latent.env_search`)."""
    fmt = fmt or TurnFormat(tokenizer)
    device = next(model.parameters()).device
    eos = eos_ids(model, tokenizer) if eos is None else list(eos)
    pad_id = pad_token_id(tokenizer, eos)
    timeout = limits.env_timeout or None
    chooser = Chooser.from_sampling(sampling)
    S = int(limits.turn_tokens)
    caches = None if reprefill or make_stepper is not None or not kept_cache_supported(model) else KeptCaches()
    for turn in range(limits.max_turns if turns is None else turns):
        live = [i for i, ep in enumerate(episodes) if not ep.done]
        if limits.context is not None:
            for i in [i for i in live if len(episodes[i].ids) + S > limits.context]:
                episodes[i].done = episodes[i].truncated = True
            live = [i for i in live if not episodes[i].done]
        if not live:
            break
        if on_turn is not None:
            on_turn(turn, len(live))
        if caches is None:  # the whole transcript
            ids, mask = left_pad([episodes[i].ids for i in live], pad_id)  # (b, P_turn)
            stepper = LMStepper(model, chooser) if make_stepper is None else make_stepper()
        else:  # what each kept cache does not hold yet
            ids, mask = left_pad([_unheld(caches, i, episodes[i].ids) for i in live], pad_id)  # (b, T)
            stepper = TurnStepper(model, chooser, caches, live)
        gens = None if generators is None else [generators[i] for i in live]
        out = decode(stepper, ids.to(device), mask.to(device), samples_per_prompt=1,
                     max_new_tokens=S, stop_ids=None if sampling.ignore_eos else eos, pad_id=pad_id, generator=gens)
        tokens, logps, lengths = out.tokens.cpu(), out.logprobs.float().cpu(), out.lengths.cpu()
        actions = out.extras["action"].cpu() if "action" in out.extras else None  # (b, S) latent space
        for r, i in enumerate(live):
            ep = episodes[i]
            budget = limits.max_completion_length - ep.model_tokens
            n = min(int(lengths[r]), budget)
            new = tokens[r, :n].tolist()
            start = len(ep.ids)
            ep.ids += new
            ep.model_mask += [1] * n
            ep.logprobs += logps[r, :n].tolist()
            ep.turns.append((start, start + n))
            if actions is not None:
                ep.turn_actions.append(actions[r, :n].tolist())
            text = tokenizer.decode(new, skip_special_tokens=True)
            ep.texts.append(text)
            try:
                res = as_step_result(guarded_call(ep.env.step, text, timeout=timeout, what="step"))
            except EnvFault as e:
                ep.rewards.append(0.0)
                _fault(ep, e)
                continue
            ep.rewards.append(res.reward)
            ep.invalid_moves += bool(res.info.get("invalid_move"))
            ep.tool_calls += int(res.info.get("tool_calls", 0))
            ep.tool_failures += int(res.info.get("tool_failures", 0))
            if res.done:
                ep.done = True
                if res.observation:
                    ep.observations.append(res.observation)
                continue
            if ep.model_tokens >= limits.max_completion_length or len(ep.turns) >= limits.max_turns:
                ep.done = ep.truncated = True
                continue
            obs = fmt.next(res.observation, ended_with_eos=bool(new) and new[-1] in eos)
            ep.observations.append(res.observation)
            ep.ids += obs
            ep.model_mask += [0] * len(obs)
            ep.logprobs += [0.0] * len(obs)
        if caches is not None:
            for i in live:
                if episodes[i].done:
                    caches.drop(i)


def _unheld(caches: KeptCaches, e: int, ids: list[int]) -> list[int]:
    """The ids of episode ``e`` after those its kept cache holds (which must be their prefix)."""
    held = caches.held(e)
    if ids[: len(held)] != held:
        raise AssertionError(f"episode {e}: its kept cache is not a prefix of its transcript")
    return ids[len(held):]


# ----------------------------------------------------------------------------------------------- folding
def episodes_to_batch(episodes: list[Episode], tokenizer: Any, samples_per_row: int, temperature: float,
                      pad_id: int, device: str | torch.device = "cpu") -> EpisodeBatch:
    """B episodes -> an :class:`EpisodeBatch` (module docstring); ``group_ids`` = row index (i // G)."""
    B = len(episodes)
    prompt_ids, prompt_mask = left_pad([ep.ids[: ep.prompt_len] for ep in episodes], pad_id)  # (B, P)
    R = max(1, max(len(ep.ids) - ep.prompt_len for ep in episodes))
    resp = torch.full((B, R), pad_id, dtype=torch.long)
    model_mask = torch.zeros(B, R, dtype=torch.long)
    attn = torch.zeros(B, R, dtype=torch.long)
    logprobs = torch.zeros(B, R)
    turn_ids = torch.zeros(B, R, dtype=torch.long)
    K = max(1, max(len(ep.rewards) for ep in episodes))
    turn_rewards = torch.zeros(B, K)
    for b, ep in enumerate(episodes):
        n = len(ep.ids) - ep.prompt_len
        resp[b, :n] = torch.tensor(ep.ids[ep.prompt_len:], dtype=torch.long)
        model_mask[b, :n] = torch.tensor(ep.model_mask[ep.prompt_len:], dtype=torch.long)
        attn[b, :n] = 1
        logprobs[b, :n] = torch.tensor(ep.logprobs[ep.prompt_len:])
        for k, (s, e) in enumerate(ep.turns):
            turn_ids[b, s - ep.prompt_len: e - ep.prompt_len] = k + 1
        turn_rewards[b, : len(ep.rewards)] = torch.tensor(ep.rewards, dtype=torch.float32)
    G = samples_per_row
    batch = EpisodeBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=resp, response_mask=model_mask,
        logprobs=logprobs * model_mask, group_ids=torch.arange(B) // G,
        prompts=tokenizer.batch_decode([ep.ids[: ep.prompt_len] for ep in episodes], skip_special_tokens=True),
        completions=tokenizer.batch_decode([ep.ids[ep.prompt_len:] for ep in episodes], skip_special_tokens=True),
        temperature=float(temperature), pad_token_id=int(pad_id), response_attn=attn, turn_ids=turn_ids,
        turn_rewards=turn_rewards, episodes=list(episodes))
    return batch.to(device)


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    """The step's ``env/*`` and ``tools/*`` metrics (docs/environments.md, "Logged metrics")."""
    n = max(1, len(episodes))
    valid = [ep for ep in episodes if ep.valid]
    nv = max(1, len(valid))
    turns = sum(len(ep.turns) for ep in episodes)
    calls = sum(ep.tool_calls for ep in episodes)
    return {
        "env/return": sum(ep.ret for ep in valid) / nv,
        "env/turns": sum(len(ep.turns) for ep in valid) / nv,
        "env/invalid_frac": 1.0 - len(valid) / n,
        "env/invalid_move_frac": sum(ep.invalid_moves for ep in episodes) / max(1, turns),
        "env/timeout_frac": sum(ep.timed_out for ep in episodes) / n,
        "env/model_tokens": sum(ep.model_tokens for ep in episodes) / n,
        "env/observation_tokens": sum(ep.observation_tokens for ep in episodes) / n,
        "tools/call_frequency": calls / n,
        "tools/failure_frequency": sum(ep.tool_failures for ep in episodes) / calls if calls else 0.0,
    }


def evaluate_environment(model: Any, tokenizer: Any, spec: EnvSpec, episodes: int, seed: int, limits: EpisodeLimits,
                         sampling: SamplingConfig, batch_size: int = 16,
                         on_batch: Callable[[int], None] | None = None, make_stepper: Callable[[], Any] | None = None,
                         eos: list[int] | None = None) -> tuple[list[Episode], dict[str, float]]:
    """Play ``episodes`` episodes of ``spec`` (an :class:`~reinlm.envs.spec.EnvSpec`), one per seed
    ``seed, seed + 1, ...``, ``batch_size`` at a time -> (episodes, :func:`episode_metrics`); ``make_stepper`` /
    ``eos`` as :func:`run_episodes` (a latent model's stepper)."""
    out: list[Episode] = []
    for start in range(0, episodes, batch_size):
        seeds = list(range(seed + start, seed + min(episodes, start + batch_size)))
        envs = [spec.make({}) for _ in seeds]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out += run_episodes(model, tokenizer, envs, [{} for _ in seeds], seeds, 1, sampling, limits, gens,
                            make_stepper=make_stepper, eos=eos)
        if on_batch is not None:
            on_batch(len(seeds))
    return out, episode_metrics(out)
