"""Chat templates: conversational prompts (message lists) and ``--chat-template`` rendered to prompt strings.

Rendering happens *before* generation, so everything downstream (the rollout engine, the latent model, the
critic) keeps taking prompt strings. Rewards, as in TRL, see the conversation instead: ``prompts`` as the
message lists and ``completions`` as ``[{"role": "assistant", "content": text}]`` (see
:mod:`reinlm.rewards.combine`).

- A prompt that is a message list (TRL's conversational format) is rendered with the tokenizer's chat
  template and the generation prompt (the assistant cue), as TRL's ``GRPOTrainer`` does
  (``apply_chat_template(conversation, add_generation_prompt=True)``).
- A text prompt is used as is, unless ``chat_template=True`` (``--chat-template``): then it becomes one
  user message first (``[{"role": "user", "content": prompt}]``), so rewards see a conversation too.
"""

from __future__ import annotations

from typing import Any, Sequence

from reinlm.errors import ReinlmError

Message = dict  # {"role": str, "content": str}


def is_conversation(prompt: Any) -> bool:
    """Whether ``prompt`` is a message list rather than a string."""
    return isinstance(prompt, (list, tuple))


def as_conversations(prompts: Sequence[Any], chat_template: bool = False,
                     system: str | None = None) -> list[Any]:
    """The prompts as rewards see them: message lists stay; text becomes one user message when
    ``chat_template`` is on (with a ``system`` message first when given); otherwise text stays text."""
    out = []
    for p in prompts:
        if is_conversation(p):
            out.append([dict(m) for m in p])
        elif chat_template:
            out.append(([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}])
        else:
            out.append(p)
    return out


def _require_template(tokenizer, why: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ReinlmError(f"chat_template: {why}, but the tokenizer of "
                          f"{getattr(tokenizer, 'name_or_path', 'this model')!r} has no chat template; allowed: a "
                          f"model with a chat template (e.g. smollm2-135m), or text prompts with the chat-template "
                          f"option off.")


def render_conversation(messages: Sequence[Message], tokenizer, template_kwargs: dict[str, Any] | None = None) -> str:
    """One conversation as the prompt text the model continues: the chat template with the generation prompt
    (``template_kwargs``: extra variables of the template, e.g. ``enable_thinking``).

    A leading BOS written by the template is dropped when the tokenizer adds BOS itself, so it never appears
    twice once the text is tokenized.
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                         **(template_kwargs or {}))
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def _adds_bos(tokenizer) -> bool:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return bos_id is not None and tokenizer("x")["input_ids"][:1] == [bos_id]


def render_prompts(prompts: Sequence[Any], tokenizer, chat_template: bool = False,
                   system: str | None = None, template_kwargs: dict[str, Any] | None = None) -> list[str]:
    """Prompt strings for generation: conversations rendered with the chat template (generation prompt
    added; ``template_kwargs``: extra template variables); text prompts wrapped as a user message first when
    ``chat_template`` is on, else unchanged.

    Raises :class:`ReinlmError` when a template is needed and the tokenizer has none.
    """
    convs = as_conversations(prompts, chat_template, system)
    if any(is_conversation(c) for c in convs):
        _require_template(tokenizer, "the prompts are conversations (message lists)" if not chat_template
                          else "the chat-template option is on")
    return [render_conversation(c, tokenizer, template_kwargs) if is_conversation(c) else str(c) for c in convs]


def apply_chat_template(prompts: Sequence[str], tokenizer, system: str | None = None) -> list[str]:
    """Wrap each text prompt as one user turn of ``tokenizer``'s chat template, ending with the assistant cue.

    Returns strings (not ids). ``system`` adds a system turn (otherwise the template's own default applies).
    """
    _require_template(tokenizer, "the chat-template option is on")
    return render_prompts(list(prompts), tokenizer, chat_template=True, system=system)
