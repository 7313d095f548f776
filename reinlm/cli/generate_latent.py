"""``reinlm generate --latent DIR``: sampling through policy + world model (called by reinlm/cli/generate.py).

The randomness lives in the actions (DESIGN.md section 4): ``--temperature`` / ``--top-k`` / ``--top-p``
shape the policy's action distribution (tau = temperature; ``--temperature 0`` = greedy actions), and the
world model's tokens are decoded greedily.
"""

from __future__ import annotations

import torch

from reinlm.cli.jsonout import print_json
from reinlm.errors import ConfigError
from reinlm.latent.model import LatentActionModel
from reinlm.utils.rng import seed_everything


def _prompts(args) -> list[str]:
    prompts = list(getattr(args, "prompt", None) or [])
    if isinstance(getattr(args, "prompt", None), str):
        prompts = [args.prompt]
    spec = getattr(args, "prompts", None)
    if spec:
        from reinlm.data import load_prompts

        prompts += load_prompts(spec, limit=getattr(args, "limit", None)).prompts
    if not prompts:
        raise ConfigError("prompt: none given; allowed: --prompt TEXT (repeatable) and/or --prompts SPEC.")
    return prompts


def run_latent_generate(args) -> int:
    """Generate ``num_samples`` continuations per prompt with the latent model in ``args.latent``; prints text
    (and with ``show_actions`` the action ids), or a JSON list with ``--json``. Returns 0."""
    for name, neutral in (("min_p", 0.0), ("repetition_penalty", 1.0)):  # token-sampling rules the policy has not
        value = getattr(args, name, None)
        if value is not None and value != neutral:
            raise ConfigError(f"{name}: got {value!r} with --latent; latent generation samples actions with "
                              f"--temperature/--top-k/--top-p only (leave {name} at {neutral!r}).")
    seed = getattr(args, "seed", None) or 0
    n = getattr(args, "num_samples", None) or 1
    max_new = getattr(args, "max_new_tokens", None) or 20
    temperature = getattr(args, "temperature", None)
    temperature = 1.0 if temperature is None else temperature
    device = getattr(args, "device", None) or "cpu"
    device = "cpu" if device == "auto" and not torch.cuda.is_available() else device
    model = LatentActionModel.from_pretrained(args.latent, device=device)
    model.set_action_sampling(greedy=temperature <= 0, tau=temperature if temperature > 0 else 1.0,
                              top_k=getattr(args, "top_k", None) or 0, top_p=getattr(args, "top_p", None) or 1.0)
    tok = model.tokenizer
    records = []
    from reinlm.data import render_prompts

    raw = _prompts(args)
    texts_in = render_prompts(raw, tok, bool(getattr(args, "chat_template", False)))  # conversations: chat template
    for i, (prompt, text_in) in enumerate(zip(raw, texts_in)):
        seed_everything(seed + i)  # a prompt's samples do not depend on the other prompts
        enc = tok([text_in] * n, return_tensors="pt", add_special_tokens=False)
        out = model.generate(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device),
                             max_new_tokens=max_new, return_dict=True)
        texts = tok.batch_decode(out.response_ids, skip_special_tokens=True)
        for j, text in enumerate(texts):
            live = out.response_mask[j].bool()
            records.append({"prompt": prompt, "sample": j, "completion": text,
                            "actions": out.actions[j][live].tolist()})
    if getattr(args, "json", False):
        print_json(records, indent=2)
        return 0
    for r in records:
        shown = r["prompt"] if isinstance(r["prompt"], str) else f"[{r['prompt'][-1]['role']}] {r['prompt'][-1]['content']}\n"
        print(f"[{r['sample']}] {shown}{r['completion']}")
        if getattr(args, "show_actions", False):
            print(f"    actions: {' '.join(map(str, r['actions']))}")
    return 0
