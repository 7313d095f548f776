"""TRL's environment contract (``environment_factory=``, ``tools=``) as a text environment.

TRL 1.16's ``GRPOTrainer`` takes ``environment_factory``: a no-argument callable returning an object with
``reset(**row) -> str | None`` whose public methods (type-annotated, Google-style docstrings) are the model's
tools, and an optional ``get_reward() -> float``; ``tools=`` adds plain functions. :class:`ToolEnv` keeps those
semantics and speaks reinlm's text protocol (:mod:`reinlm.envs.protocol`):

- the first observation is the row's prompt followed by what ``reset`` returned (TRL appends it to the last
  user message), then the tools' JSON schemas and how to call them;
- each model turn is parsed for tool calls; with calls, every call runs (a tool that raises answers
  ``{"error": "..."}`` and counts in ``tools/failure_frequency``, as in TRL) and the results are the next
  observation; a turn without a call ends the episode, whose reward is ``get_reward()`` when the environment
  has one (reward functions also get the instances as ``environments=``);
- at most ``max_tool_calling_iterations`` rounds of tool calls (TRL's name), then the episode ends.

**Tool-call format.** A tokenizer with its own parser of responses (transformers' ``response_template``, read
by ``tokenizer.parse_response``) parses the model's calls in its own format, and the first observation lists the
tools without prescribing a format. Otherwise (SmolLM2 and most tokenizers today) calls are
``<tool_call>{"name": NAME, "arguments": {...}}</tool_call>`` blocks, the format of the Hermes / Qwen2.5 / Qwen3 /
SmolLM3 chat templates, stated in words in the first observation (the documented fallback). Results go back as
``<tool_response>{"name": ..., "content": ...}</tool_response>`` either way.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any, Callable

from reinlm.errors import ReinlmError

__all__ = ["ToolEnv", "tool_schema", "find_tools", "parse_tool_calls", "TOOL_CALL_FORMAT"]

TOOL_CALL_FORMAT = '<tool_call>{"name": "TOOL", "arguments": {"ARG": VALUE}}</tool_call>'
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def tool_schema(fn: Callable, owner: str = "") -> dict:
    """The JSON schema of a tool (transformers' ``get_json_schema``: annotations + Google docstring); a tool
    without them is refused (``ReinlmError`` naming it, exit 2)."""
    from transformers.utils import get_json_schema

    name = f"{owner}.{fn.__name__}" if owner else fn.__name__
    try:
        return get_json_schema(fn)
    except Exception as e:  # TypeHintParsingException / DocstringParsingException
        raise ReinlmError(f"tools: {name!r} cannot be a tool: {e}. A tool needs a type annotation on every "
                          "argument and a Google-style docstring with an Args: section (TRL's contract; "
                          "docs/environments.md). Start its name with _ to keep it from the model.") from e


def find_tools(instance) -> list[Callable]:
    """The public methods of an environment (listed on its class, as TRL does), ``reset``/``get_reward``/``step``
    excluded: the tools it offers."""
    out = []
    for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction):
        if name.startswith("_") or name in ("reset", "get_reward", "step"):
            continue
        out.append(getattr(instance, name))
    return out


def own_format(tokenizer) -> bool:
    """Whether ``tokenizer`` parses responses in its own format (a transformers ``response_template``)."""
    return tokenizer is not None and getattr(tokenizer, "response_template", None) is not None


def parse_tool_calls(text: str, tokenizer=None) -> list[dict]:
    """The tool calls written in ``text``: ``[{"name": str, "arguments": dict}]``, or ``{"error": ...}`` entries
    for calls that are not valid (they count as failed calls). With a tokenizer that has its own format
    (:func:`own_format`) its ``parse_response`` finds them; else the fallback's ``<tool_call>`` blocks (an unclosed
    last block is parsed too)."""
    if own_format(tokenizer):
        try:
            found = tokenizer.parse_response(text, prefix="").get("tool_calls") or []
        except Exception as e:  # noqa: BLE001 (a malformed call)
            return [{"error": f"tool call could not be parsed: {e}"}]
        found = [c.get("function", c) if isinstance(c, dict) else c for c in found]  # OpenAI's {"function": ...}
    else:
        found = []
        for body in _CALL.findall(text):
            try:
                found.append(json.loads(body))
            except json.JSONDecodeError as e:
                found.append({"error": f"tool call is not JSON: {e.msg}"})
    calls: list[dict] = []
    for call in found:
        if isinstance(call, dict) and "error" in call:
            calls.append(call)
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            calls.append({"error": "tool call needs a \"name\""})
            continue
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            calls.append({"name": call["name"], "error": "tool call \"arguments\" must be an object"})
            continue
        calls.append({"name": call["name"], "arguments": args})
    return calls


class ToolEnv:
    """A TRL environment instance (or none) plus standalone ``tools``, as a text environment.

    Args:
        env: an instance made by the factory (``reset`` required), or None (``tools=`` only).
        tools: standalone tool functions (TRL's ``tools=``).
        max_tool_calling_iterations: rounds of tool calls before the episode ends (None: no limit).
        describe_tools: put the tools' schemas and the call format in the first observation (False when the
            chat template renders the tools itself).
    """

    def __init__(self, env=None, tools: list[Callable] | None = None, max_tool_calling_iterations: int | None = None,
                 describe_tools: bool = True):
        self.env = env
        funcs = (find_tools(env) if env is not None else []) + list(tools or [])
        owner = type(env).__name__ if env is not None else ""
        self.schemas = [tool_schema(f, owner) for f in funcs]
        self.tools = {f.__name__: f for f in funcs}
        self.max_iterations = max_tool_calling_iterations
        self.describe_tools = describe_tools
        self.has_reward = env is not None and callable(getattr(env, "get_reward", None))
        self.tokenizer = None  # set by the trainer: a tokenizer with its own tool-call format parses the calls

    def tools_text(self) -> str:
        """What the model is told about its tools (the fallback format, module docstring)."""
        if not self.schemas:
            return ""
        lines = [json.dumps(s["function"]) for s in self.schemas]
        how = "" if own_format(self.tokenizer) else f"\nTo call a tool, write {TOOL_CALL_FORMAT}."
        return ("\n\nYou can call these tools:\n" + "\n".join(lines) + how
                + " Answer without a tool call when you are done.")

    def reset(self, **row) -> str:
        self.iterations = 0
        prompt = row.get("prompt", "")
        if isinstance(prompt, list):  # conversational rows: the last message is what the model answers
            prompt = prompt[-1].get("content", "") if prompt and isinstance(prompt[-1], dict) else ""
        prompt = prompt if isinstance(prompt, str) else ""
        first = None
        if self.env is not None:
            first = self.env.reset(**row)
            if first is not None and not isinstance(first, str):
                raise TypeError(f"reset returned {type(first).__name__}; TRL's contract: str or None")
        text = "\n\n".join(t for t in (prompt, first) if t)
        return text + (self.tools_text() if self.describe_tools else "")

    def _run(self, call: dict) -> tuple[Any, bool]:
        """-> (result, failed)."""
        if "error" in call:
            return {"error": call["error"]}, True
        fn = self.tools.get(call["name"])
        if fn is None:
            return {"error": f"Tool {call['name']} not found."}, True
        try:
            return fn(**call["arguments"]), False
        except Exception as e:  # noqa: BLE001 (TRL: a failing tool answers {"error": ...})
            return {"error": str(e)}, True

    def step(self, text: str):
        calls = parse_tool_calls(text, self.tokenizer) if self.tools else []
        limit = self.max_iterations is not None and self.iterations >= self.max_iterations
        if not calls or limit:
            reward = float(self.env.get_reward()) if self.has_reward else 0.0
            return None, reward, True, {}
        self.iterations += 1
        parts, failures = [], 0
        for call in calls:
            result, failed = self._run(call)
            failures += failed
            parts.append("<tool_response>\n" + json.dumps({"name": call.get("name", "unknown"),
                                                           "content": result if isinstance(result, (dict, list))
                                                           else str(result)}) + "\n</tool_response>")
        return "\n".join(parts), 0.0, False, {"tool_calls": len(calls), "tool_failures": failures, "role": "tool"}

    def get_reward(self) -> float:
        return float(self.env.get_reward()) if self.has_reward else 0.0
