"""Teacher-forced log-probabilities of completions given their prompts, under any causal LM.

Used by the perplexity metric (under a reference LM) and the KL metric (policy and reference on the same
tokens). Works from text, so it also scores generations read from a file, and a reference model with a
different tokenizer than the policy (perplexity only; KL needs one tokenizer).

Letters: b = sequences in a micro-batch, L = longest prompt+completion in it, V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reinlm.utils.chunks import chunked


def encode_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int | None = None
                 ) -> list[tuple[list[int], list[int]]]:
    """Token ids of each (prompt, completion): the prompt with the tokenizer's special tokens, the completion
    without. When ``max_length`` is given, the prompt is cut from the left (then the completion from the
    right) so that the pair fits."""
    out = []
    for p, c in zip(prompts, completions):
        p_ids = list(tokenizer(p)["input_ids"])
        c_ids = list(tokenizer(c, add_special_tokens=False)["input_ids"])
        if max_length is not None and len(p_ids) + len(c_ids) > max_length:
            c_ids = c_ids[:max_length - 1]
            p_ids = p_ids[len(p_ids) - (max_length - len(c_ids)):] if max_length - len(c_ids) > 0 else []
        out.append((p_ids, c_ids))
    return out


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 8
                        ) -> list[np.ndarray]:
    """Log-prob (temperature 1) of each completion token given the prompt and the earlier tokens.

    Returns one float array per sample, of length = the completion's token count (0 for an empty
    completion). Sequences are right-padded within a micro-batch of ``batch_size``; padding is masked.
    """
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    pairs = encode_pairs(tokenizer, prompts, completions, context)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out: list[np.ndarray] = []
    for chunk in chunked(pairs, batch_size):
        seqs = [p + c for p, c in chunk]
        length = max(1, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)  # (b, L)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)  # (b, L)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # (b, L, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (b, L-1, V): position t predicts token t+1
        tok_logp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()  # (b, L-1)
        for i, (p, c) in enumerate(chunk):
            if not c:
                out.append(np.zeros(0))
                continue
            start = len(p) - 1  # logit at the last prompt token predicts the first completion token
            if start < 0:  # no prompt token at all: the first completion token cannot be scored
                out.append(tok_logp[i, :len(c) - 1].numpy().astype(np.float64))
                continue
            out.append(tok_logp[i, start:start + len(c)].numpy().astype(np.float64))
    return out


def same_vocabulary(tok_a, tok_b) -> bool:
    """True when both tokenizers map text to the same ids (same vocabulary), so their log-probs compare."""
    return tok_a is tok_b or (len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab())
