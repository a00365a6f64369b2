"""The engine's data shapes: judge specs, feedback, guidelines and every result a caller sees.

These pydantic models are the public surface of the engine and, unchanged, the structured output of the MCP
tools. Validation that needs no storage lives here (names, templates, value types); nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memalign_mcp.errors import InvalidInputError

FeedbackType = Literal["bool", "int", "float", "categorical", "text"]
# A guideline is `active` (used in scoring) or `proposed` (awaiting review_guideline; not used in scoring).
GuidelineStatus = Literal["active", "proposed"]
ReviewAction = Literal["approve", "reject", "edit"]
FEEDBACK_TYPES: tuple[str, ...] = ("bool", "int", "float", "categorical", "text")
JudgedText = str | dict[str, Any]
Value = bool | int | float | str

JUDGE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
TEMPLATE_VARIABLES = ("inputs", "outputs", "expectations")
_TEMPLATE_VAR = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
MEMORY_MODEL = "memory"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
NO_SURROGATES = "text without lone surrogates (half of a UTF-16 pair cannot be stored as UTF-8)"


def has_lone_surrogate(text: str) -> bool:
    """True when `text` holds half of a UTF-16 surrogate pair: JSON can carry one, UTF-8 cannot store it."""
    return _LONE_SURROGATE.search(text) is not None


def is_judge_name(name: str) -> bool:
    """Whether `name` could name a judge: every judge was created with a name of this pattern."""
    return re.fullmatch(JUDGE_NAME_PATTERN, name) is not None


class JudgeSpec(BaseModel):
    """What a judge is: its instructions, the type of verdict it gives, and the model that gives it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Lowercase letters, digits, '-' and '_'; at most 64 characters.")
    instructions: str = Field(
        description="What to judge: a template over {{ inputs }}, {{ outputs }}, optionally {{ expectations }}."
    )
    feedback_type: FeedbackType = Field(default="bool", description="The type of verdict the judge gives.")
    choices: list[str] | None = Field(default=None, description="Allowed verdicts (categorical).")
    min_value: float | None = Field(default=None, description="Lowest verdict (int, float).")
    max_value: float | None = Field(default=None, description="Highest verdict (int, float).")
    model: str | None = Field(
        default=None,
        description="litellm model string, or 'memory' (no model); omit for the server's.",
    )
    retrieval_k: int | None = Field(
        default=None,
        description="Similar past feedback items shown per score, 0-50; omit for the default.",
    )
    review_guidelines: bool = Field(
        default=False,
        description="New guidelines wait, unused, for review_guideline.",
    )

    def validated(self) -> JudgeSpec:
        """Check every field against the rules a caller cannot see in the schema; return self."""
        if not is_judge_name(self.name):
            raise InvalidInputError("name", self.name, f"a name matching {JUDGE_NAME_PATTERN}")
        for field, text in [("instructions", self.instructions), ("model", self.model or "")] + [
            (f"choices[{i}]", c) for i, c in enumerate(self.choices or [])
        ]:
            if has_lone_surrogate(text):
                raise InvalidInputError(field, text, NO_SURROGATES)
        if not self.instructions.strip():
            raise InvalidInputError("instructions", self.instructions, "non-empty instructions")
        used = template_variables(self.instructions)
        unknown = sorted(set(used) - set(TEMPLATE_VARIABLES))
        if unknown:
            raise InvalidInputError(
                "instructions",
                "{{ " + unknown[0] + " }}",
                "only the template variables {{ inputs }}, {{ outputs }} and {{ expectations }}",
            )
        if not {"inputs", "outputs"} & set(used):
            raise InvalidInputError(
                "instructions", self.instructions, "a template that uses {{ inputs }} or {{ outputs }}"
            )
        self._validate_type_fields()
        if self.retrieval_k is not None and not 0 <= self.retrieval_k <= 50:
            raise InvalidInputError("retrieval_k", self.retrieval_k, "an integer from 0 to 50")
        if self.model is not None and not self.model.strip():
            self.model = None
        return self

    def _validate_type_fields(self) -> None:
        if self.feedback_type == "categorical":
            if not self.choices or len(set(self.choices)) < 2 or any(not c.strip() for c in self.choices):
                raise InvalidInputError(
                    "choices", self.choices, "at least two distinct non-empty choices for a categorical judge"
                )
        elif self.choices is not None:
            raise InvalidInputError(
                "choices", self.choices, "no choices unless feedback_type is 'categorical'"
            )
        if self.feedback_type in ("int", "float"):
            for key in ("min_value", "max_value"):
                bound = getattr(self, key)
                if bound is not None and not math.isfinite(bound):
                    raise InvalidInputError(key, bound, "a finite number")
                if bound is not None and self.feedback_type == "int" and bound != int(bound):
                    raise InvalidInputError(key, bound, "a whole number for an int judge")
            if self.min_value is not None and self.max_value is not None and self.min_value >= self.max_value:
                raise InvalidInputError(
                    "max_value", self.max_value, f"a number above min_value {self.min_value}"
                )
        elif self.min_value is not None or self.max_value is not None:
            raise InvalidInputError(
                "min_value" if self.min_value is not None else "max_value",
                self.min_value if self.min_value is not None else self.max_value,
                "no bounds unless feedback_type is 'int' or 'float'",
            )

    def describe_value(self) -> str:
        """In words, what a verdict of this judge must be."""
        if self.feedback_type == "bool":
            return "a boolean (true or false)"
        if self.feedback_type == "categorical":
            return "one of " + ", ".join(repr(c) for c in self.choices or [])
        if self.feedback_type == "text":
            return "a non-empty string"
        kind = "an integer" if self.feedback_type == "int" else "a number"
        lo, hi = self.min_value, self.max_value
        if lo is not None and hi is not None:
            return f"{kind} from {_num(lo)} to {_num(hi)}"
        if lo is not None:
            return f"{kind} of at least {_num(lo)}"
        if hi is not None:
            return f"{kind} of at most {_num(hi)}"
        return kind

    def check_value(self, value: Any, field: str = "value") -> Value:
        """Return the value if it fits this judge's feedback type, else raise naming the field."""
        ok = False
        if self.feedback_type == "bool":
            ok = isinstance(value, bool)
        elif self.feedback_type == "categorical":
            ok = isinstance(value, str) and value in (self.choices or [])
        elif self.feedback_type == "text":
            ok = isinstance(value, str) and bool(value.strip())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            is_int = isinstance(value, int) or value.is_integer()
            ok = math.isfinite(value) and (self.feedback_type == "float" or is_int)
            ok = ok and (self.min_value is None or value >= self.min_value)
            ok = ok and (self.max_value is None or value <= self.max_value)
            if ok and self.feedback_type == "int":
                value = int(value)
            elif ok:
                value = float(value)
        if not ok:
            raise InvalidInputError(field, value, self.describe_value())
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def template_variables(template: str) -> list[str]:
    """The variable names a `{{ name }}` template uses, in order of first use."""
    seen: list[str] = []
    for match in _TEMPLATE_VAR.finditer(template):
        name = match.group(1).strip()
        if name not in seen:
            seen.append(name)
    return seen


class Judge(JudgeSpec):
    """A judge as stored, with the state of its memory."""

    memory_version: int = Field(description="Goes up by one with every change to the judge's memory.")
    feedback_count: int = 0
    guideline_count: int = 0
    pending_count: int = Field(
        default=0, description="Feedback stored but not yet distilled into guidelines."
    )
    effective_model: str = Field(
        default=MEMORY_MODEL, description="The model that scores for this judge now."
    )
    created_at: datetime


class FeedbackInput(BaseModel):
    """One piece of human feedback as a caller gives it."""

    model_config = ConfigDict(extra="forbid")

    inputs: JudgedText = Field(description="The request (a string or JSON object).")
    outputs: JudgedText = Field(description="The judged response (a string or JSON object).")
    value: Value = Field(description="The human's verdict, of the judge's feedback_type.")
    rationale: str = Field(description="Why; guidelines are distilled from it.")
    expectations: JudgedText | None = Field(default=None, description="Reference answer or facts.")
    source: str | None = Field(default=None, description="Who gave it (a person, a team, a tool).")
    id: str | None = Field(default=None, description="Your id; made from the content when absent.")


class FeedbackRecord(BaseModel):
    """A stored piece of feedback: an episodic memory of the judge."""

    id: str
    inputs: JudgedText
    outputs: JudgedText
    value: Value
    rationale: str
    expectations: JudgedText | None = None
    source: str | None = None
    created_at: datetime
    pending: bool = Field(default=False, description="True while not yet distilled into guidelines.")


class Guideline(BaseModel):
    """A distilled rule of the judge's semantic memory, with the feedback it came from."""

    id: str
    text: str
    source_feedback_ids: list[str] = Field(
        default_factory=list[str], description="Feedback it was distilled from; empty for a hand-written one."
    )
    status: GuidelineStatus = Field(
        default="active", description="'proposed': awaiting review_guideline, not used in scoring."
    )


class ListedGuideline(Guideline):
    """A guideline as list_guidelines shows it: with who wrote it where an operator did."""

    provenance: str | None = Field(default=None, description="'operator:<who>' for a hand-written one.")


class ReviewedGuideline(ListedGuideline):
    """A guideline after add_guideline or review_guideline, with the memory version that change made."""

    judge: str
    judge_version: int
    removed: bool = Field(default=False, description="True after reject: no longer in the judge's memory.")


class ScoreResult(BaseModel):
    """A judge's verdict on one response, traceable to the memory it used."""

    rationale: str = Field(description="Why the judge gave this verdict.")
    value: Value | None = Field(description="The verdict; null when a memory-only judge cannot decide.")
    judge: str
    judge_version: int = Field(description="The judge's memory version this verdict saw.")
    guidelines_used: list[str] = Field(description="Ids of the guidelines shown to the judge.")
    examples_used: list[str] = Field(description="Ids of the past feedback items shown as examples.")
    model: str = Field(
        description="The model that gave the verdict, or 'memory' for a vote of past human verdicts."
    )
    latency_ms: float
    cost_usd: float | None = Field(default=None, description="Model cost where litellm knows the price.")
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    confidence: float | None = Field(
        default=None,
        description="Memory judge only: the vote's weighted share for the winning verdict (0..1).",
    )


class AddFeedbackResult(BaseModel):
    """What adding feedback changed in a judge's memory."""

    judge: str
    judge_version: int
    feedback_ids: list[str] = Field(description="Ids of the items of this call, in the order given.")
    guidelines_added: list[Guideline]
    guidelines_removed: list[Guideline]
    pending_ids: list[str] = Field(
        description="Items stored but not yet distilled; the next add_feedback retries."
    )
    unchanged_ids: list[str] = Field(default_factory=list[str], description="Items already stored as given.")
    replaced_ids: list[str] = Field(default_factory=list[str], description="Existing ids given new content.")
    note: str | None = None


class RemoveFeedbackResult(BaseModel):
    """What removing feedback took out of a judge's memory."""

    judge: str
    judge_version: int
    removed_ids: list[str]
    not_found_ids: list[str]
    guidelines_removed: list[Guideline]
    guidelines_revised: list[Guideline] = Field(
        description="Guidelines re-derived from their remaining sources."
    )
    pending_ids: list[str] = Field(
        default_factory=list[str],
        description="Sources of a guideline that could not be re-derived; see distill_pending.",
    )
    purged: bool = Field(default=False, description="True when removed text was also erased from every file.")


class GuidelineList(BaseModel):
    """A judge's semantic memory."""

    judge: str
    judge_version: int
    guidelines: list[ListedGuideline]


class FeedbackPage(BaseModel):
    """A page of a judge's episodic memory, oldest first."""

    judge: str
    judge_version: int
    total: int
    feedback: list[FeedbackRecord]


class JudgeList(BaseModel):
    """Every judge the server knows."""

    judges: list[Judge]


class DeleteJudgeResult(BaseModel):
    """What delete_judge took away."""

    judge: str
    deleted: bool
    feedback_deleted: int
    guidelines_deleted: int


class LabelledExample(BaseModel):
    """A response with the human verdict it should get, for evaluation."""

    model_config = ConfigDict(extra="forbid")

    inputs: JudgedText
    outputs: JudgedText
    value: Value
    expectations: JudgedText | None = None
    id: str | None = None


class VersionSummary(BaseModel):
    """What one memory version changed, by id only (never content)."""

    feedback_added: list[str] = Field(default_factory=list[str])
    feedback_removed: list[str] = Field(default_factory=list[str])
    feedback_replaced: list[str] = Field(default_factory=list[str])
    guidelines_added: list[str] = Field(default_factory=list[str])
    guidelines_removed: list[str] = Field(default_factory=list[str])
    guidelines_revised: list[str] = Field(default_factory=list[str])
    purged: list[str] = Field(default_factory=list[str], description="Feedback whose content was erased.")


class VersionRecord(BaseModel):
    """One memory version of a judge: when, by whom, what kind of change and what it changed."""

    version: int
    created_at: datetime
    who: str | None = Field(description="Who made the change (the feedback's source, or the caller).")
    change: str = Field(
        description="create, add, distill, remove, update, rollback, purge, guideline (added by hand) or review."
    )
    summary: VersionSummary
    restored_version: int | None = Field(default=None, description="rollback: the version restored.")


class JudgeHistory(BaseModel):
    """A judge's memory versions, newest first."""

    judge: str
    judge_version: int
    total: int
    versions: list[VersionRecord]


class JudgeDiff(BaseModel):
    """How a judge's memory differs between two versions."""

    judge: str
    from_version: int
    to_version: int
    feedback_added: list[str]
    feedback_removed: list[str]
    feedback_changed: list[str] = Field(description="Ids present in both versions with other content.")
    guidelines_added: list[Guideline]
    guidelines_removed: list[Guideline]
    guidelines_changed: list[Guideline] = Field(description="As they are at to_version.")


class RollbackResult(BaseModel):
    """A rollback: a new memory version whose memory equals an older one's."""

    judge: str
    judge_version: int = Field(description="The new version made by the rollback.")
    restored_version: int
    summary: VersionSummary = Field(description="What the rollback changed, by id (as judge_history shows).")
