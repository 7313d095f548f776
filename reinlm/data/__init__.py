"""Prompt data: built-in prompt sets, file / dataset loaders, chat templates and length checks."""

from reinlm.data.prompts import BUILTIN_SETS, PromptSet, load_prompts
from reinlm.data.text import apply_chat_template, check_prompt_lengths, context_length

__all__ = ["BUILTIN_SETS", "PromptSet", "load_prompts", "apply_chat_template", "check_prompt_lengths",
           "context_length"]
