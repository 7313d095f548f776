"""``reward_model``: the scalar score of a HF sequence-classification reward model on prompt + completion.

Sequences are right-padded, so that each real token keeps the position it has when scored alone (a left-padded
batch would shift rotary positions and make batched scores differ from unbatched ones), and truncated from the
left, so that the completion is kept when the text is too long.
"""

from __future__ import annotations

import functools

import torch

from reinlm.config.coerce import check_range
from reinlm.errors import ReinlmError
from reinlm.progress import task
from reinlm.rewards.base import register_reward, reward_function
from reinlm.utils.chunks import chunked
from reinlm.utils.devices import resolve_device


@functools.lru_cache(maxsize=2)
def load_reward_model(name_or_path: str, device: str = "cpu"):
    """``(model, tokenizer)`` of a sequence-classification reward model (id or local dir), eval mode, cached.

    The tokenizer pads on the right and truncates on the left; the model's ``pad_token_id`` is set.
    """
    from transformers import AutoModelForSequenceClassification

    from reinlm.hub import load_tokenizer, resolve_model_dir

    where = resolve_model_dir(name_or_path)
    try:
        with task(f"loading reward model {name_or_path}"):
            model = AutoModelForSequenceClassification.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ReinlmError(
            f"reward_model: cannot load {name_or_path!r} as a sequence-classification model ({type(e).__name__}: "
            f"{e}). Allowed: a local directory saved with save_pretrained, or a Hugging Face id that is reachable "
            f"or already in the local Hugging Face cache.") from e
    tok = load_tokenizer(where)  # a private copy: left padding and a pad token
    tok.padding_side, tok.truncation_side = "right", "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.to(resolve_device(device)).eval(), tok


@register_reward("reward_model")
def reward_model(model: str, label_index: int = 0, batch_size: int = 8, max_length: int = 1024,
                 chat: bool = False, device: str = "cpu"):
    """Score of a reward model (HF sequence-classification id or local dir) on prompt + completion.

    ``label_index``: which logit is the reward (0 for the usual single-output reward model). ``chat``: format
    the pair with the tokenizer's chat template (user: prompt, assistant: completion) instead of concatenating.
    """
    check_range("reward_model.batch_size", batch_size, 1)
    check_range("reward_model.max_length", max_length, 1)
    name = str(model)

    def texts_of(prompts: list[str], completions: list[str], tok) -> list[str]:
        if not chat:
            return [p + c for p, c in zip(prompts, completions)]
        if not getattr(tok, "chat_template", None):
            raise ReinlmError(f"reward_model: chat=true but the tokenizer of {name!r} has no chat template; "
                              f"allowed: chat=false (prompt and completion concatenated).")
        return [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                        tokenize=False) for p, c in zip(prompts, completions)]

    @reward_function("reward_model")
    @torch.no_grad()
    def reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        rm, tok = load_reward_model(name, device)
        out: list[float] = []
        for batch in chunked(texts_of(prompts, completions, tok), int(batch_size)):
            enc = tok(batch, padding=True, truncation=True, max_length=int(max_length), return_tensors="pt")
            logits = rm(**enc.to(rm.device)).logits.float()  # (b, n_labels)
            out += logits[:, int(label_index)].cpu().tolist()
        return out

    return reward
