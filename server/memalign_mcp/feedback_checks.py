"""The checks a batch of feedback items passes before anything of it is stored, and an item's content hash.

This module owns what makes a feedback item acceptable: its texts (through the service's `check_text`, which
knows the size limits), its verdict against the judge's type, its source and id, and one id per item in a call.
It stores nothing and calls no model; a batch with any bad item is refused whole, naming the first bad field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, Protocol

from memalign_mcp.errors import InvalidInputError
from memalign_mcp.models import NO_SURROGATES, FeedbackInput, JudgeSpec, has_lone_surrogate

# \Z, not $: "$" also matches before a trailing newline, which would let "abc\n" through.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}\Z")


class CheckText(Protocol):
    """Refuses judged text that is missing, of the wrong type, empty, unstorable or over the size limit."""

    def __call__(self, field: str, value: Any, *, required: bool = True) -> None: ...


def content_hash(item: FeedbackInput) -> str:
    """A hash of what a feedback item says (not who said it), to tell a re-send from a correction."""
    canonical = json.dumps(
        [item.inputs, item.outputs, item.expectations, item.value, item.rationale],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validated_feedback(
    spec: JudgeSpec, items: Sequence[Any], *, max_items: int, check_text: CheckText
) -> list[FeedbackInput]:
    """The items as they will be stored (ids made, values typed, repeats taken once), or InvalidInputError."""
    if isinstance(items, (str, bytes)) or not items:
        raise InvalidInputError("feedback", items, "a non-empty list of feedback items")
    if len(items) > max_items:
        raise InvalidInputError(
            "feedback",
            f"{len(items)} items",
            f"at most {max_items} items per call (memory.max_items_per_call); send them in several calls",
        )
    out: list[FeedbackInput] = []
    seen: dict[str, tuple[int, str, str | None]] = {}
    for i, raw in enumerate(items):
        item = raw if isinstance(raw, FeedbackInput) else FeedbackInput.model_validate(raw)
        where = f"feedback[{i}]"
        check_text(f"{where}.inputs", item.inputs)
        check_text(f"{where}.outputs", item.outputs)
        check_text(f"{where}.expectations", item.expectations, required=False)
        check_text(f"{where}.rationale", item.rationale)
        value = spec.check_value(item.value, f"{where}.value")
        if isinstance(value, str):
            check_text(f"{where}.value", value)  # a text verdict is bounded like a rationale
        _check_source_and_id(item, where)
        item = item.model_copy(update={"value": value})
        given_id = item.id is not None
        if item.id is None:
            item = item.model_copy(update={"id": "fb-" + content_hash(item)[:16]})
        assert item.id is not None
        digest = content_hash(item)
        if item.id in seen:
            first, first_digest, first_source = seen[item.id]
            if first_digest == digest and first_source == item.source:
                continue  # the same item twice in one call: taken once
            what = f"the id {item.id!r}" if given_id else "the same content (and so the same made-up id)"
            raise InvalidInputError(
                f"{where}",
                f"an item with {what} as feedback[{first}]",
                f"each id once per call; feedback[{first}] and {where} differ, so send only the right one",
            )
        seen[item.id] = (i, digest, item.source)
        out.append(item)
    return out


def _check_source_and_id(item: FeedbackInput, where: str) -> None:
    if item.source is not None and has_lone_surrogate(item.source):
        raise InvalidInputError(f"{where}.source", item.source, NO_SURROGATES)
    if item.source is not None and (not item.source.strip() or len(item.source) > 200):
        raise InvalidInputError(f"{where}.source", item.source, "a non-empty name of at most 200 characters")
    if item.id is not None and not _ID_PATTERN.match(item.id):
        raise InvalidInputError(
            f"{where}.id", item.id, "1-128 characters: letters, digits and _ . : @ / - (not first)"
        )
