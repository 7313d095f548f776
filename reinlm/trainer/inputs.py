"""What a run trained on: ``inputs.json`` in the run directory, and the check that a resume trains the same.

``config.yaml`` records the reward and the prompts as names (a SPEC, ``module:qualname``, a file path).
``inputs.json`` adds what names cannot show: the prompts' fingerprint and count, each reward component's
weight and rebuild reference, and a hash of each reward's source file. A resume whose prompts or rewards
differ from the recorded ones is refused (it would silently train something else); a reward whose source
file changed only gives a warning (fixing a bug in a reward and resuming is legitimate).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

from reinlm.data.prompts import PromptSet
from reinlm.errors import ReinlmError
from reinlm.rewards.call import unwrap_partial
from reinlm.rewards.combine import RewardSet
from reinlm.rewards.refs import UNREBUILDABLE, describe_callable, reward_ref
from reinlm.utils.jsonio import write_json

log = logging.getLogger("reinlm")
INPUTS_FILE = "inputs.json"


def _source_hash(fn: Any) -> str | None:
    target = unwrap_partial(fn)
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = type(target)
    try:
        path = inspect.getsourcefile(target)
    except TypeError:
        return None
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def describe_inputs(prompt_set: PromptSet, reward_set: RewardSet) -> dict[str, Any]:
    """The record written to ``inputs.json``: prompts (source, count, fingerprint) and reward components."""
    comps = []
    for c in reward_set.components:
        ref = reward_ref(c.fn) or UNREBUILDABLE + describe_callable(c.fn)
        comps.append({"name": c.name, "weight": c.weight, "ref": ref, "source_sha256": _source_hash(c.fn)})
    return {
        "prompts": {"source": prompt_set.source, "n": len(prompt_set), "fingerprint": prompt_set.fingerprint(),
                    "conversational": prompt_set.conversational},
        "reward": {"on_error": reward_set.on_error, "components": comps},
    }


def write_inputs(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Write ``inputs.json`` (atomically)."""
    write_json(Path(run_dir) / INPUTS_FILE, record)


def check_resume_inputs(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Refuse to resume ``run_dir`` with other prompts or rewards than it was started with.

    Runs started before ``inputs.json`` existed are not checked.
    """
    path = Path(run_dir) / INPUTS_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    old_p, new_p = saved.get("prompts", {}), record["prompts"]
    if old_p.get("fingerprint") != new_p["fingerprint"]:
        problems.append(f"the prompts differ: the run started on {old_p.get('n')} prompts from "
                        f"{old_p.get('source')!r} (fingerprint {old_p.get('fingerprint')}), this resume has "
                        f"{new_p['n']} from {new_p['source']!r} (fingerprint {new_p['fingerprint']})")
    old_r = [(c["name"], c["weight"], c["ref"]) for c in saved.get("reward", {}).get("components", [])]
    new_r = [(c["name"], c["weight"], c["ref"]) for c in record["reward"]["components"]]
    if old_r != new_r:
        problems.append(f"the rewards differ: the run started with {_terms(old_r)}, this resume has {_terms(new_r)}")
    if problems:
        raise ReinlmError(f"resume: {str(run_dir)!r} would continue training on something else: "
                          f"{'; '.join(problems)}. Resume with the same prompts and rewards (as recorded in its "
                          f"config.yaml and inputs.json), or start a new run with another --out.")
    for old, new in zip(saved.get("reward", {}).get("components", []), record["reward"]["components"]):
        if old.get("source_sha256") and new["source_sha256"] and old["source_sha256"] != new["source_sha256"]:
            log.warning("resume: the source file of reward %r changed since the run started (sha256 %s -> %s); "
                        "continuing with the new code", new["name"], old["source_sha256"], new["source_sha256"])


def _terms(comps: list[tuple[str, float, str]]) -> str:
    return " + ".join(f"{w:g}*{ref}" for _, w, ref in comps) or "none"
