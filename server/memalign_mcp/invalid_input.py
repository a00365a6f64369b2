"""One-line descriptions of pydantic validation errors, in the shape of `InvalidInputError`'s message.

Tool arguments are checked by the MCP SDK and JSONL lines by the command line, both with pydantic, whose own
message is many lines with a URL. This module turns such an error into `Invalid <field>: got <value>; expected
<what>.`, naming the field as a path into the data the caller sent (`feedback[0].value`). It knows nothing of MCP:
`argument_error` words the advice for a tool call, and the command line words its own.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from memalign_mcp.errors import show_value

# Error types whose pydantic message ("Input should be a valid dictionary") reads badly to an agent.
_EXPECTED = {
    "missing": "a value (it is required)",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "list_type": "a list",
    "none_required": "null",
    "extra_forbidden": "no field of this name",
}
# pydantic names the member of a union a value failed to be in the error's location: 'str', 'dict[str,any]'.
_SCALAR_TAGS = {"str", "int", "float", "bool", "dict", "list"}
_MISSING = object()


@dataclass(frozen=True)
class InvalidField:
    """The first field a validation error names, what it got and what it expected."""

    field: str
    value: Any
    expected: str
    others: int

    @property
    def missing(self) -> bool:
        """True when the field was not sent at all."""
        return self.value is _MISSING

    def sentence(self) -> str:
        """`Invalid <field>: got <value>; expected <what>.`, plus how many other fields were wrong."""
        got = "nothing" if self.missing else show_value(self.value)
        more = f" ({self.others} more field(s) are invalid too.)" if self.others else ""
        return f"Invalid {self.field}: got {got}; expected {self.expected}.{more}"


def _walk(loc: Sequence[int | str], data: Any) -> tuple[list[int | str], Any]:
    """The part of `loc` that leads through `data`, and the value found there.

    What is left of `loc` is a union member's tag (pydantic's 'str', 'dict[str,any]'), which names a type the
    value failed to be, not a place in the data; only a missing key is kept, since it is the field itself.
    """
    path: list[int | str] = []
    current = data
    for part in loc:
        if isinstance(current, dict) and isinstance(part, str):
            if part not in current:
                if not _is_union_tag(part):
                    path.append(part)  # a missing key: the field itself
                    current = _MISSING
                break
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            break
        path.append(part)
    return path, current


def _is_union_tag(part: str) -> bool:
    return part in _SCALAR_TAGS or "[" in part


def _show_path(path: Sequence[int | str]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "arguments"


def _expected(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in ("int_type", "float_type") and isinstance(error["input"], bool):
        # JSON's true is no number, though Python's bool is an int: say so, or "got True; expected an integer" puzzles.
        return f"{_EXPECTED[kind]} (a boolean is not a number)"
    if kind == "literal_error":
        return "one of " + str((error.get("ctx") or {}).get("expected", "the allowed values"))
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    message = error["msg"]
    for prefix in ("Input should be ", "Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:]


def _join(phrases: list[str]) -> str:
    unique = list(dict.fromkeys(phrases))
    return unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " or " + unique[-1]


def first_invalid_field(exc: ValidationError, data: Any) -> InvalidField:
    """The first field named by `exc`, as a path into `data` (the input that failed), with what it expected."""
    by_field: dict[str, tuple[Any, list[str]]] = {}
    for error in exc.errors():
        path, value = _walk(error["loc"], data)
        name = _show_path(path)
        found = by_field.setdefault(name, (value, []))
        found[1].append(_expected(error))
    name, (value, expected) = next(iter(by_field.items()))
    return InvalidField(name, value, _join(expected), len(by_field) - 1)


def _members(annotations: list[Any]) -> Iterator[Any]:
    """The types in these annotations, with `Annotated` unwrapped and unions split into their members."""
    for annotation in annotations:
        origin = get_origin(annotation)
        if origin is Annotated:
            yield from _members([get_args(annotation)[0]])
        elif origin is Union or origin is types.UnionType:
            yield from _members(list(get_args(annotation)))
        else:
            yield annotation


def _field_names_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The field names of the object at `loc` inside `model`'s data (`feedback`, 0: FeedbackInput's fields)."""
    found: list[Any] = [model]
    for part in loc:
        inner: list[Any] = []
        for member in _members(found):
            if isinstance(part, str) and isinstance(member, type) and issubclass(member, BaseModel):
                field = member.model_fields.get(part)
                inner += [field.annotation] if field else []
            elif isinstance(part, int) and get_origin(member) is list:
                inner += list(get_args(member))
        found = inner
    return [
        field.alias or name
        for member in _members(found)
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name, field in member.model_fields.items()
    ]


def _unknown_field(tool: str, exc: ValidationError, model: type[BaseModel]) -> str | None:
    """The first unknown argument (or field of a nested object) with the closest known name, or None if none is."""
    unknown = next((error for error in exc.errors() if error["type"] == "extra_forbidden"), None)
    if unknown is None:
        return None
    *parent, name = unknown["loc"]
    known = _field_names_at(model, parent)
    close = get_close_matches(str(name), known, n=1)
    where = (
        f"argument {name!r} for {tool}" if not parent else f"field {name!r} in {_show_path(parent)} of {tool}"
    )
    guess = f"; did you mean {close[0]!r}?" if close else "."
    field = _show_path([*parent, close[0]]) if close else ""
    fix = f"with {field} instead" if close else f"without {_show_path(unknown['loc'])}"
    return (
        f"Unknown {where}{guess} Got {show_value(unknown['input'])}; expected "
        f"{'one of ' + ', '.join(known) if known else 'no arguments'}. "
        f"Call {tool} again {fix}."
    )


def argument_error(tool: str, exc: ValidationError, arguments: dict[str, Any], model: type[BaseModel]) -> str:
    """What an agent reads when a tool's arguments do not fit its schema (`model`): the field, and to call again.

    An unknown name comes first, with the closest known one: a misspelt optional argument would otherwise be
    dropped and its default used, a verdict type the caller never asked for.
    """
    unknown = _unknown_field(tool, exc, model)
    if unknown is not None:
        return unknown
    invalid = first_invalid_field(exc, arguments)
    fix = "set" if invalid.missing else "corrected (tools/list gives each argument's type)"
    return f"{invalid.sentence()} Call {tool} again with {invalid.field} {fix}."
