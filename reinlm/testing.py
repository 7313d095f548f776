"""Helpers for tests: tiny random models with a real tokenizer's vocabulary, and small fixtures-in-code.

Fast unit tests build these instead of loading the real 135M model: a 2-layer, 64-wide Llama with
SmolLM2's 49152-token vocabulary runs a forward pass in milliseconds on CPU and shares its tokenizer.
"""

from __future__ import annotations

import torch


def tiny_causal_lm(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
                   max_positions: int = 512, kv_heads: int | None = None):
    """A randomly initialised ``LlamaForCausalLM`` whose vocabulary matches ``tokenizer``.

    Args:
        tokenizer: a Hugging Face tokenizer; its ``len()`` sets ``vocab_size`` (49152 for SmolLM2) and its
            BOS/EOS/pad ids are copied into the config.
        hidden: hidden size H (must be divisible by ``heads``); intermediate size is 2H.
        layers: number of decoder blocks.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention; default: ``heads``).
        seed: torch seed for the weight initialisation (same seed, same weights).
        max_positions: context length of the model.

    Returns the model in eval mode, float32, on CPU, with input and output embeddings untied.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def save_tiny_model(tokenizer, out_dir, **kwargs) -> str:
    """Save :func:`tiny_causal_lm` and ``tokenizer`` to ``out_dir`` (a dir ``load_causal_lm`` can read)."""
    model = tiny_causal_lm(tokenizer, **kwargs)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)
