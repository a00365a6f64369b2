"""Structured replies: asking a chat model for one JSON object of a schema, and reading what it said.

This module owns the text side of structured output, with no I/O: the four ways of asking (`json_schema`
structured output; the same without length and range limits, which some providers' strict mode refuses; JSON
mode with the schema in the prompt; the schema in the prompt alone), finding the JSON
object in a reply (bare, fenced in markdown, or wrapped in prose), validating it against the same schema in
every mode (the length limits included), and the corrective message that makes a retry differ from the request
that failed. It never invents a value: a reply either fits, or is refused with the reason.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from memalign_mcp.errors import show_value

Check = Callable[[dict[str, Any]], None]
Messages = list[dict[str, str]]
ResponseMode = Literal["json_schema", "json_schema_basic", "json_object", "prompt"]
ProblemKind = Literal["empty", "no_json", "invalid"]

# From the strictest to the plainest; a server that refuses or ignores one mode gets the next.
MODES: tuple[ResponseMode, ...] = ("json_schema", "json_schema_basic", "json_object", "prompt")
# Keywords left out in json_schema_basic: strict modes that compile the schema may refuse them (Azure names
# maxLength as an example). They are still checked here on every reply.
_LIMIT_KEYWORDS = frozenset({"maxLength", "minLength", "maxItems", "minItems", "minimum", "maximum"})
_FENCED = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_MAX_CANDIDATES = 20
_ECHOED_REPLY_CHARS = 600
_MAX_SCHEMA_ERRORS = 3


@dataclass(frozen=True)
class Completion:
    """A parsed JSON answer from a model, with what it cost to get."""

    data: dict[str, Any]
    model: str
    latency_ms: float
    prompt_tokens: int | None  # summed over attempts; None when the provider reports no usage
    completion_tokens: int | None
    cost_usd: float | None  # None when litellm has no price for the model
    attempts: int  # completion requests this answer took, unusable replies and transport retries included


def _usage(response: Any) -> tuple[int | None, int | None]:
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def _cost(response: Any) -> float | None:
    """litellm's price for a response, or None for a model it has no price for.

    litellm runs `completion_cost` on every response and stores the result in its hidden params (None when
    the model is unpriced); calling `completion_cost` again would raise ModelNotMappedError, or a bare
    Exception, for such models.
    """
    hidden = getattr(response, "_hidden_params", None)
    if not isinstance(hidden, dict):
        return None
    cost = hidden.get("response_cost")
    return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None


def _total_tokens(parts: list[int | None]) -> int | None:
    return None if None in parts else sum(part for part in parts if part is not None)


def _total_cost(parts: list[float | None]) -> float | None:
    return None if None in parts else sum(part for part in parts if part is not None)


@dataclass
class Tally:
    """What the requests behind one answer cost, summed over attempts."""

    started: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    prompt_tokens: list[int | None] = field(default_factory=list[int | None])
    completion_tokens: list[int | None] = field(default_factory=list[int | None])
    costs: list[float | None] = field(default_factory=list[float | None])

    def add(self, response: Any, attempts: int) -> None:
        """Count one response and the requests it took."""
        self.attempts += attempts
        used_prompt, used_completion = _usage(response)
        self.prompt_tokens.append(used_prompt)
        self.completion_tokens.append(used_completion)
        self.costs.append(_cost(response))

    def completion(self, data: dict[str, Any], model: str) -> Completion:
        """The answer, with the latency, tokens and cost of every attempt behind it."""
        return Completion(
            data=data,
            model=model,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            prompt_tokens=_total_tokens(self.prompt_tokens),
            completion_tokens=_total_tokens(self.completion_tokens),
            cost_usd=_total_cost(self.costs),
            attempts=self.attempts,
        )


def first_choice(response: Any) -> tuple[Any, Any]:
    """The reply text and finish_reason of a response's first choice."""
    choices = getattr(response, "choices", None) or [None]
    content = getattr(getattr(choices[0], "message", None), "content", None)
    return content, getattr(choices[0], "finish_reason", None)


@dataclass(frozen=True)
class Reading:
    """A reply read against a schema: its JSON object, or what was wrong with it."""

    data: dict[str, Any] | None
    problem: str = ""
    kind: ProblemKind | None = None
    cut_off: bool = False


def next_mode(mode: ResponseMode) -> ResponseMode:
    """The plainer mode to fall back to when a server refuses this one (prompt-only is the last)."""
    return MODES[min(MODES.index(mode) + 1, len(MODES) - 1)]


def mode_after_prose(mode: ResponseMode) -> ResponseMode:
    """The mode to try when prose came back: a server that ignores a JSON schema ignores a smaller one too."""
    return "json_object" if mode in ("json_schema", "json_schema_basic") else "prompt"


def without_limits(schema: Any) -> Any:
    """The schema with every length and range keyword removed, at any depth."""
    if isinstance(schema, dict):
        return {
            k: without_limits(v) for k, v in cast(dict[str, Any], schema).items() if k not in _LIMIT_KEYWORDS
        }
    if isinstance(schema, list):
        return [without_limits(v) for v in cast(list[Any], schema)]
    return schema


def response_format(mode: ResponseMode, schema_name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` request field for a mode (None: the request carries none)."""
    if mode in ("json_schema", "json_schema_basic"):
        sent = schema if mode == "json_schema" else without_limits(schema)
        return {"type": "json_schema", "json_schema": {"name": schema_name, "schema": sent, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def messages_for(
    mode: ResponseMode, messages: Messages, schema_name: str, schema: dict[str, Any]
) -> Messages:
    """The messages to send in a mode: without json_schema, the schema is described in the system message."""
    if mode in ("json_schema", "json_schema_basic"):
        return list(messages)
    described = (
        f"Reply with only one JSON object, no prose and no code fences, that fits this JSON Schema "
        f"(named {schema_name}); respect its maxLength, maxItems, minimum and maximum:\n"
        + json.dumps(schema, separators=(",", ":"))
    )
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first.get('content', '')}\n\n{described}"
        return [first, *messages[1:]]
    return [{"role": "system", "content": described}, *messages]


def _balanced_objects(text: str) -> Iterator[str]:
    """Every balanced {...} span in `text`, in order of its opening brace, strings and escapes respected."""
    starts = [i for i, char in enumerate(text) if char == "{"][:_MAX_CANDIDATES]
    for start in starts:
        depth = 0
        in_string = escaped = False
        for end in range(start, len(text)):
            char = text[end]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : end + 1]
                    break


def _candidates(text: str) -> Iterator[Any]:
    """JSON values the reply may hold: the whole text, each fenced block, then each balanced object."""
    seen: set[str] = set()
    pieces = [text, *(block.strip() for block in _FENCED.findall(text)), *_balanced_objects(text)]
    for piece in pieces:
        if not piece or piece in seen:
            continue
        seen.add(piece)
        try:
            yield json.loads(piece)
        except json.JSONDecodeError:
            continue


def schema_problems(schema: dict[str, Any], data: Any) -> list[str]:
    """What in `data` does not fit `schema`, in words a model can act on (empty when it fits)."""
    from jsonschema import Draft202012Validator

    problems: list[str] = []
    for error in sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path)):
        where = error.json_path.removeprefix("$").removeprefix(".") or "the object"
        instance: Any = error.instance
        limit: Any = error.validator_value
        if error.validator == "maxLength" and isinstance(instance, str):
            problems.append(f"{where} is {len(instance)} characters long; at most {limit} are allowed")
        elif error.validator == "maxItems" and isinstance(instance, list):
            problems.append(f"{where} has {len(instance)} entries; at most {limit} are allowed")
        elif error.validator in ("minimum", "maximum"):
            bound = "at least" if error.validator == "minimum" else "at most"
            problems.append(f"{where} is {show_value(instance)}; it must be {bound} {limit}")
        else:
            problems.append(f"{where}: {show_value(error.message)}")
        if len(problems) == _MAX_SCHEMA_ERRORS:
            break
    return problems


def read_reply(
    content: Any, finish_reason: Any, schema: dict[str, Any], check: Check | None = None
) -> Reading:
    """The first JSON object in a reply that fits `schema` and passes `check`, or why there is none."""
    cut_off = finish_reason == "length"
    cut = " (it was cut off at the output token limit)" if cut_off else ""
    if not isinstance(content, str) or not content.strip():
        return Reading(None, f"the reply was empty{cut}", "empty", cut_off)
    text = content.strip()
    problem = ""
    found_json = False
    for data in _candidates(text):
        found_json = True
        if not isinstance(data, dict):
            problem = problem or f"the reply was JSON but not an object: {show_value(data)}"
            continue
        fitted: dict[str, Any] = data
        misfits = schema_problems(schema, fitted)
        if misfits:
            problem = problem or "the reply did not fit the schema: " + "; ".join(misfits)
            continue
        if check is not None:
            try:
                check(fitted)
            except ValueError as exc:
                problem = problem or f"the reply did not fit: {exc}"
                continue
        return Reading(fitted, cut_off=cut_off)
    if not found_json:
        return Reading(
            None, f"the reply was not valid JSON{cut}; it began {show_value(text[:80])}", "no_json", cut_off
        )
    return Reading(None, problem + cut, "invalid", cut_off)


def correction(reply: Any, reading: Reading, *, schema_name: str, max_tokens: int | None) -> Messages:
    """The turns that make a retry differ: the unusable reply (shortened) and what was wrong with it."""
    turns: Messages = []
    if isinstance(reply, str) and reply.strip():
        shown = reply if len(reply) <= _ECHOED_REPLY_CHARS else reply[:_ECHOED_REPLY_CHARS] + " [...]"
        turns.append({"role": "assistant", "content": shown})
    if reading.cut_off:
        limit = f" of {max_tokens} tokens" if max_tokens else ""
        why = (
            f"Your reply was cut off at the output limit{limit} before it was complete. Answer again, much "
            "shorter: keep every text brief, say each thing once and never repeat yourself"
        )
    elif reading.kind == "no_json":
        why = "Your reply was not valid JSON. Answer again with the JSON object alone, no prose and no code fences"
    elif reading.kind == "empty":
        why = "Your reply was empty. Answer again"
    else:
        why = f"Your reply could not be used: {reading.problem}. Answer again and fix that"
    turns.append(
        {
            "role": "user",
            "content": f"{why}: reply with only one JSON object that fits the {schema_name} schema.",
        }
    )
    return turns
