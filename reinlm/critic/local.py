"""A local Hugging Face causal LM as the critic: chat template, greedy, batched with left padding.

Letters: N = conversations in a batch, P = padded prompt length, A = answer tokens.
"""

from __future__ import annotations

import logging

import torch

from reinlm.critic.align import FUZZY_THRESHOLD
from reinlm.critic.base import Completion, CriticBackend
from reinlm.hub import load_causal_lm
from reinlm.rollout.decode import LMStepper, decode
from reinlm.rollout.sampling import Chooser
from reinlm.rollout.token import decode_completions, encode_prompts, pad_token_id
from reinlm.utils.chunks import chunked

log = logging.getLogger(__name__)


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The prompt string of a chat: the tokenizer's chat template, or a plain fallback without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


@torch.no_grad()
def chat_generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 64,
                  batch_size: int = 8) -> list[str]:
    """Greedy answers to chat conversations, batched with left padding; stops at EOS / end-of-turn.

    Runs reinlm's decode engine (:func:`reinlm.rollout.decode.decode`, greedy chooser), the same loop as
    rollouts; each answer is decoded with special tokens skipped and stripped.
    """
    device = next(model.parameters()).device
    stop = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
            if isinstance(t, int) and t >= 0 and t != tokenizer.unk_token_id]
    pad = pad_token_id(tokenizer, stop)
    stepper = LMStepper(model, Chooser("greedy", record_logprob=False))
    answers: list[str] = []
    for chunk in chunked(conversations, batch_size):
        prompts = [render_chat(tokenizer, conv) for conv in chunk]
        ids, mask = encode_prompts(tokenizer, prompts, pad, add_special_tokens=False)  # (N, P)
        out = decode(stepper, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, stop_ids=stop,
                     pad_id=pad)
        answers += decode_completions(tokenizer, out.tokens, out.mask)
    return [a.strip() for a in answers]


class LocalCritic(CriticBackend):
    """Critic backed by a local causal LM (an embedded alias, a local path or a Hugging Face id).

    Args:
        model: a name for :func:`reinlm.hub.load_causal_lm`, or an already loaded model (then pass
            ``tokenizer`` too). Loaded lazily on the first critique.
        max_answer_tokens: token limit of each answer (the answer is cut there; a cut answer that still
            holds its label lines parses fine).
        batch_size: conversations generated together.
        device, dtype: where and how to load a named model.
        fuzzy_threshold: see :mod:`reinlm.critic.align`.
    """

    def __init__(self, model="smollm2-135m", tokenizer=None, max_answer_tokens: int = 48, batch_size: int = 8,
                 device: str = "auto", dtype: str = "float32", fuzzy_threshold: float = FUZZY_THRESHOLD):
        self._model, self._tokenizer = (model, tokenizer) if not isinstance(model, str) else (None, None)
        self.name = model if isinstance(model, str) else type(model).__name__
        self.max_answer_tokens = int(max_answer_tokens)
        self.batch_size = int(batch_size)
        self.device, self.dtype = device, dtype
        self.fuzzy_threshold = fuzzy_threshold

    def load(self):
        """``(model, tokenizer)``, loading them on first use."""
        if self._model is None:
            self._model, self._tokenizer = load_causal_lm(self.name, device=self.device, dtype=self.dtype)
        return self._model, self._tokenizer

    @property
    def tokenizer(self):
        return self.load()[1]

    def complete(self, conversations: list[list[dict]]) -> list[Completion]:
        model, tok = self.load()
        try:
            texts = chat_generate(model, tok, conversations, self.max_answer_tokens, self.batch_size)
        except (RuntimeError, ValueError) as e:  # e.g. out of memory: a failed critique, not a failed step
            log.debug("local critic failed: %s", e)
            return [Completion(None, "error", f"{type(e).__name__}: {e}") for _ in conversations]
        return [Completion(t) for t in texts]
