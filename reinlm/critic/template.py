"""Critique templates: the task description, worked examples and answer format sent to the critic.

A template is a YAML file (the built-in ones live in ``reinlm/critic/templates/``):

```yaml
task: sentiment              # sentiment | toxicity | summarization | custom: fixes the required slots
labels:                      # answer-line label -> reward polarity (positive | negative), with aliases
  positive: {polarity: positive, aliases: [pos]}
system: |                    # instructions and the strict answer format
  ...
user: |                      # one message per text; slots {text}, {source}, {score}
  Text: {text}
examples:                    # worked examples: slot values + the expected answer (sent as chat turns)
  - {text: "...", answer: "Positive: \\"...\\""}
```

Required slots (:data:`REQUIRED_SLOTS`) are checked when the template is loaded, so a user's template
that forgets ``{text}`` (or ``{source}`` for summarization) fails at start-up with a ConfigError naming
the slot, not in the middle of training.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reinlm.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "templates"
BUILTIN_TASKS = ("sentiment", "toxicity", "summarization")
SLOTS = ("text", "source", "score")
REQUIRED_SLOTS: dict[str, tuple[str, ...]] = {
    "sentiment": ("text",),
    "toxicity": ("text",),
    "summarization": ("text", "source", "score"),
    "custom": ("text",),
}
POLARITIES = ("positive", "negative")
_SLOT_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Label:
    """One answer-line label: its canonical name, the reward polarity and accepted spellings."""

    name: str
    polarity: str
    aliases: tuple[str, ...] = ()


@dataclass
class CritiqueTemplate:
    """A loaded, validated template; :meth:`messages` renders the chat sent for one text."""

    name: str
    task: str
    labels: tuple[Label, ...]
    system: str
    user: str
    examples: list[dict] = field(default_factory=list)
    source_path: str | None = None

    @property
    def slots(self) -> set[str]:
        """Slot names used in the user message."""
        return set(_SLOT_RE.findall(self.user))

    @property
    def fingerprint(self) -> str:
        """A short hash of everything that shapes the critic's input (the cache key's template part)."""
        blob = repr((self.system, self.user, self.examples, [(lab.name, lab.polarity) for lab in self.labels]))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def label(self, name: str) -> Label:
        for lab in self.labels:
            if lab.name == name:
                return lab
        raise KeyError(name)

    def render_user(self, text: str, source: str | None = None, score: float | str | None = None) -> str:
        """The user message for one text (unused slots are simply not filled)."""
        values = {"text": text, "source": source if source is not None else "(not given)",
                  "score": _format_score(score)}
        return _SLOT_RE.sub(lambda m: str(values.get(m.group(1), m.group(0))), self.user).strip()

    def messages(self, text: str, source: str | None = None, score: float | str | None = None) -> list[dict]:
        """Chat messages: system, then each worked example as a user/assistant pair, then the text."""
        msgs = [{"role": "system", "content": self.system.strip()}]
        for ex in self.examples:
            msgs.append({"role": "user", "content": self.render_user(ex["text"], ex.get("source"), ex.get("score"))})
            msgs.append({"role": "assistant", "content": str(ex["answer"]).strip()})
        msgs.append({"role": "user", "content": self.render_user(text, source, score)})
        return msgs


def _format_score(score) -> str:
    if score is None:
        return "unknown"
    if isinstance(score, str):
        return score
    return f"{float(score):.3g}"


def load_template(task: str | Path | CritiqueTemplate) -> CritiqueTemplate:
    """Load a built-in task (``sentiment`` | ``toxicity`` | ``summarization``) or a user's YAML template file."""
    if isinstance(task, CritiqueTemplate):
        return task
    name = str(task)
    if name in BUILTIN_TASKS:
        path = TEMPLATE_DIR / f"{name}.yaml"
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"critic_task: got {name!r}; allowed: one of {', '.join(BUILTIN_TASKS)}, or the path "
                              "of a YAML template file (see docs/critic.md).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"critic_task: {str(path)!r} is not valid YAML ({e}).") from e
    return template_from_dict(data, name=path.stem, source_path=str(path))


def template_from_dict(data, name: str = "custom", source_path: str | None = None) -> CritiqueTemplate:
    """Validate a template mapping (see the module docstring) and build a :class:`CritiqueTemplate`."""
    where = f"critic template {source_path or name!r}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with keys task, labels, system, user, examples.")
    task = str(data.get("task", "custom"))
    if task not in REQUIRED_SLOTS:
        raise ConfigError(f"{where}: task: got {task!r}; allowed: {', '.join(REQUIRED_SLOTS)}.")
    for key in ("system", "user"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{where}: missing the {key!r} message (a non-empty string).")
    labels = _parse_labels(data.get("labels"), where)
    user = data["user"]
    used = set(_SLOT_RE.findall(user))
    unknown = sorted(used - set(SLOTS))
    if unknown:
        raise ConfigError(f"{where}: unknown slot {{{unknown[0]}}} in the user message; allowed slots: "
                          f"{', '.join('{' + s + '}' for s in SLOTS)}.")
    for slot in REQUIRED_SLOTS[task]:
        if slot not in used:
            raise ConfigError(f"{where}: the user message lacks the required slot {{{slot}}} (task {task!r} needs "
                              f"{', '.join('{' + s + '}' for s in REQUIRED_SLOTS[task])}).")
    examples = data.get("examples") or []
    if not isinstance(examples, list):
        raise ConfigError(f"{where}: examples must be a list of mappings with 'text' and 'answer'.")
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or "text" not in ex or "answer" not in ex:
            raise ConfigError(f"{where}: example {i} needs 'text' and 'answer' keys.")
    return CritiqueTemplate(name=name, task=task, labels=labels, system=data["system"], user=user,
                            examples=examples, source_path=source_path)


def _parse_labels(raw, where: str) -> tuple[Label, ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: labels must map each answer label to {{polarity: positive|negative}}.")
    out = []
    for name, spec in raw.items():
        spec = spec if isinstance(spec, dict) else {"polarity": spec}
        pol = str(spec.get("polarity", "negative")).lower()
        if pol not in POLARITIES:
            raise ConfigError(f"{where}: label {name!r}: polarity got {pol!r}; allowed: {', '.join(POLARITIES)}.")
        aliases = tuple(str(a).lower() for a in spec.get("aliases", []) or [])
        out.append(Label(str(name).lower(), pol, aliases))
    return tuple(out)
