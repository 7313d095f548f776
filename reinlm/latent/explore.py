"""What each latent action does: the BWArea card's "I like eating" table (../shared/seeds/001).

For a prompt, the world model writes a few greedy tokens while one fixed action is taken at every step, for
each of the K actions (one batch of K rows); the policy's most likely actions for the prompt are listed
beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reinlm.latent.model import LatentActionModel


@dataclass
class Exploration:
    prompt: str
    continuations: list[str]  # (K,) text written under action k
    policy_top: list[tuple[int, float]]  # (action, probability), most likely first


@torch.no_grad()
def explore(model: LatentActionModel, prompt: str, new_tokens: int = 4, top: int = 8) -> Exploration:
    """Greedy continuations of ``prompt`` under each fixed action, and the policy's ``top`` actions."""
    tok = model.tokenizer
    K = model.config.num_actions
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
    seqs = model.generate(ids.expand(K, -1), mask.expand(K, -1), max_new_tokens=new_tokens,
                          fixed_action=torch.arange(K, device=model.device))  # (K, P+R)
    texts = tok.batch_decode(seqs[:, ids.shape[1]:], skip_special_tokens=True)
    probs = model.policy_logits_from_hidden(model.head_input(ids, mask), mask)[0, -1].softmax(-1)  # (K,)
    p, a = probs.topk(min(top, K))
    model.reset_action_info()
    return Exploration(prompt, texts, [(int(i), float(q)) for i, q in zip(a, p)])


def format_exploration(ex: Exploration) -> str:
    lines = [f"prompt: {ex.prompt!r}", "", f"{'action':>6}  world model continuation (greedy)"]
    lines += [f"{k:>6}  {ex.prompt}|{' '.join(t.splitlines()) if t else ''}" for k, t in enumerate(ex.continuations)]
    distinct = len(set(ex.continuations))
    lines += ["", f"{distinct} distinct continuations over {len(ex.continuations)} actions", "",
              "policy's top actions:  " + "  ".join(f"{a}: {p:.3f}" for a, p in ex.policy_top)]
    return "\n".join(lines)
