"""The error tree of the judge engine.

Every failure a caller can act on is a `MemAlignError`; its message is written to be read by an agent or a
person and says what was wrong and what to do next. The MCP face turns these into tool errors; nothing here
knows about MCP.

    MemAlignError
    ├── InvalidInputError      a field had a value that does not fit (names the field, the value, what was expected)
    ├── UnknownJudgeError      no judge of that name
    ├── JudgeExistsError       create_judge with a name taken by a different spec
    ├── FeedbackNotFoundError  a feedback id that must exist does not
    ├── GuidelineNotFoundError a guideline id that must exist does not (review_guideline)
    ├── PurgedContentError     an old version asked for held content that was purged since
    ├── ConflictError          a change kept colliding with other writers (transaction.py); nothing stored
    ├── JudgeGoneError         the judge was deleted while a change to it was prepared (transaction.py)
    ├── ModelError             the model failed or answered out of schema after retries
    ├── EmbeddingMismatchError the store was built with another embedding model
    ├── StoreUnavailableError  the store (a bucket) could not be opened or read; nothing was done
    └── SettingsError          a bad setting at start (names the key, the value, what was expected)
"""

from __future__ import annotations

from typing import Any

_MAX_SHOWN = 120


def show_value(value: Any) -> str:
    """A short printable form of a rejected value, so errors stay readable for huge inputs."""
    text = repr(value)
    if len(text) > _MAX_SHOWN:
        return f"{text[:_MAX_SHOWN]}... ({len(text)} characters)"
    return text


class MemAlignError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidInputError(MemAlignError, ValueError):
    """A field's value does not fit what the engine accepts."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"Invalid {field}: got {show_value(value)}; expected {expected}.")


class UnknownJudgeError(MemAlignError, LookupError):
    """No judge has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "(none yet)"
        super().__init__(
            f"Unknown judge {show_value(name)}. Known judges: {listed}. "
            "Call list_judges to see them, or create_judge to make one."
        )


class JudgeExistsError(MemAlignError):
    """A judge of this name exists with a different spec."""

    def __init__(self, name: str, differing: list[str]) -> None:
        self.name = name
        super().__init__(
            f"Judge {name!r} already exists with a different {', '.join(differing)}. "
            "Choose another name, or call delete_judge first if you mean to replace it (its memory goes with it)."
        )


class FeedbackNotFoundError(MemAlignError, LookupError):
    """A feedback id that must exist does not."""


class GuidelineNotFoundError(MemAlignError, LookupError):
    """A guideline id that must exist does not."""

    def __init__(self, judge: str, guideline_id: str) -> None:
        self.guideline_id = guideline_id
        super().__init__(
            f"Unknown guideline {show_value(guideline_id)} of judge {judge!r}: it is not in the judge's memory "
            "(never there, rejected, or dropped by a later change). Call list_guidelines to see its guideline ids."
        )


class PurgedContentError(MemAlignError, LookupError):
    """An older memory version was asked for, but content it held has been purged since."""

    def __init__(self, name: str, version: int, items: list[str]) -> None:
        self.items = items
        shown = ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "")
        super().__init__(
            f"Version {version} of judge {name!r} held content that was purged since ({shown}); purged stays "
            "purged, so that version can no longer be used or restored. Call judge_history to pick another."
        )


class ModelError(MemAlignError):
    """The model could not give a usable answer after retries."""


class EmbeddingMismatchError(MemAlignError):
    """The store's vectors were made by a different embedding model than the one configured."""


class StoreUnavailableError(MemAlignError):
    """The store could not be opened or read (object storage unreachable, no such bucket, refused credentials)."""


class SettingsError(MemAlignError):
    """A setting has a value that cannot work; raised at start."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key = key
        super().__init__(f"Bad setting {key}: got {show_value(value)}; expected {expected}.")
