"""TRL-style rewards for gsm_mini.jsonl, written exactly as for TRL's GRPOTrainer (conversational data: each
completion is [{"role": "assistant", "content": text}])."""

import re

_ANSWER = re.compile(r"answer\s*[:=]?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def _final_number(text):
    """The number after 'Answer:', else the last number in the text (None when there is none)."""
    found = _ANSWER.findall(text) or _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def correctness(completions, answer, log_extra=None, **kwargs):
    """1.0 when the reply's final number equals the `answer` column, else 0.0."""
    predicted = [_final_number(c[0]["content"]) for c in completions]
    if log_extra is not None:
        log_extra("predicted", [str(p) for p in predicted])
    return [1.0 if p is not None and float(p) == float(a) else 0.0 for p, a in zip(predicted, answer)]


def answer_format(completions, **kwargs):
    """0.2 when the reply ends with 'Answer: N', as the system prompt asks."""
    return [0.2 if re.search(r"answer\s*:\s*-?[\d,.]+\s*\.?\s*$", c[0]["content"], re.IGNORECASE) else 0.0
            for c in completions]
