"""Prompt data: built-in prompt sets, file / dataset / Python-object loaders, chat templates and length checks."""

from reinlm.data.chat import apply_chat_template, as_conversations, render_prompts
from reinlm.data.prompts import BUILTIN_SETS, PromptSet, held_out_line, load_prompts, parse_column_map
from reinlm.data.text import check_prompt_lengths, context_length

__all__ = ["BUILTIN_SETS", "PromptSet", "load_prompts", "apply_chat_template", "as_conversations", "render_prompts",
           "held_out_line", "parse_column_map", "check_prompt_lengths", "context_length"]
