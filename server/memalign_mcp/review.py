"""Guideline review: which guidelines wait for an operator, and the operator's own edits of semantic memory.

This module owns the review rule ("for a judge with `review_guidelines`, new guideline text is `proposed` and
unused in scoring until an operator approves it") and the two operator actions, `add_guideline` (a rule written
by hand, active at once) and `review_guideline` (approve, reject or edit). Each action is one memory transaction
(transaction.py), so it is versioned, shows in the history and can be rolled back. It must never import MCP,
lancedb or litellm; it knows callers only by the `who` it is handed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

from memalign_mcp.distill import new_guideline_id
from memalign_mcp.errors import GuidelineNotFoundError, InvalidInputError
from memalign_mcp.fence import prompt_markup_in
from memalign_mcp.history import HistoryService
from memalign_mcp.judge import listed_guideline
from memalign_mcp.models import (
    NO_SURROGATES,
    Guideline,
    GuidelineStatus,
    JudgeSpec,
    ReviewAction,
    ReviewedGuideline,
    has_lone_surrogate,
)
from memalign_mcp.prompts import GUIDELINE_MAX_CHARS
from memalign_mcp.records import MemoryRow, Summary
from memalign_mcp.transaction import Change, MemoryState

ACTIONS: tuple[ReviewAction, ...] = ("approve", "reject", "edit")


def with_review_status(
    rows: Sequence[MemoryRow], state: MemoryState, *, rewritten: Collection[str] = ()
) -> list[MemoryRow]:
    """Rows about to be written, each guideline with its status as of `state`.

    A guideline whose text is unchanged keeps its status (a merge that only adds sources to an approved rule
    does not take it out of use), unless it is in `rewritten` (re-derived from fewer sources: the operator
    approved it on evidence that is gone). New or rewritten text is `proposed` when the judge reviews
    guidelines; otherwise a new guideline is active and a rewritten one keeps its status (a proposal stays a
    proposal until reviewed).
    """
    review = JudgeSpec.model_validate_json(state.spec_json).review_guidelines
    out: list[MemoryRow] = []
    for row in rows:
        if row.kind != "guideline":
            out.append(row)
            continue
        old = state.guidelines.get(row.item_id)
        status: GuidelineStatus
        if old is not None and old.text == row.text and row.item_id not in rewritten:
            status = old.status
        elif review:
            status = "proposed"
        else:
            status = old.status if old is not None else "active"
        out.append(replace(row, body=_with_status(row.body, status)))
    return out


def with_statuses(guidelines: Sequence[Guideline], rows: Sequence[MemoryRow]) -> list[Guideline]:
    """The public guidelines of a result, each with the status its row is written with."""
    status = {r.item_id: r.status for r in rows if r.kind == "guideline"}
    return [g.model_copy(update={"status": status.get(g.id, g.status)}) for g in guidelines]


def _with_status(body: dict[str, Any], status: GuidelineStatus) -> dict[str, Any]:
    kept = {k: v for k, v in body.items() if k != "status"}
    return (kept | {"status": "proposed"}) if status == "proposed" else kept


def _reviewed(name: str, version: int, row: MemoryRow, *, removed: bool = False) -> ReviewedGuideline:
    shown = listed_guideline(row).model_dump()
    return ReviewedGuideline(**shown, judge=name, judge_version=version, removed=removed)


def guideline_text(text: Any) -> str:
    """An operator's guideline text on one line (whitespace and newlines collapsed); refused when unusable."""
    if not isinstance(text, str):
        raise InvalidInputError("text", text, "the guideline's rule as a string")
    if has_lone_surrogate(text):
        raise InvalidInputError("text", text, NO_SURROGATES)
    clean = " ".join(text.split())
    if not clean:
        raise InvalidInputError("text", text, "a non-empty rule, e.g. 'Apologise before explaining a delay.'")
    if len(clean) > GUIDELINE_MAX_CHARS:
        raise InvalidInputError(
            "text",
            f"{len(clean)} characters",
            f"one rule of at most {GUIDELINE_MAX_CHARS} characters; shorten it",
        )
    markup = prompt_markup_in(clean)
    if markup is not None:
        raise InvalidInputError("text", markup, "plain words, without the judge prompt's markup; remove it")
    return clean


class ReviewService(HistoryService):
    """HistoryService plus the operator's guideline actions: add_guideline and review_guideline."""

    def add_guideline(self, name: str, text: str, *, who: str | None = None) -> ReviewedGuideline:
        """Add a guideline written by hand: active at once, provenance `operator:<who>`, no source feedback."""
        clean = guideline_text(text)
        self.state(name)  # an unknown judge is refused before the text is embedded
        gid = new_guideline_id()
        row = MemoryRow(
            judge=name,
            kind="guideline",
            item_id=gid,
            vector=self.embedder.embed([clean])[0],
            text=clean,
            body={"provenance": f"operator:{who or 'local'}"},
        )

        def prepare(_: MemoryState) -> Change:
            return Change(
                op="guideline",
                rows=[row],
                reads={("guideline", gid)},
                summary=Summary(guidelines_added=(gid,)),
            )

        commit, _ = self.ledger.change(name, prepare, who=who)
        assert commit is not None  # a new id always changes memory
        return _reviewed(name, commit.version, row)

    def review_guideline(
        self, name: str, guideline_id: str, action: str, text: str | None = None, *, who: str | None = None
    ) -> ReviewedGuideline:
        """Approve (use in scoring), reject (remove) or edit (new text, same sources, active) one guideline."""
        if action not in ACTIONS:
            raise InvalidInputError("action", action, "one of approve, reject, edit")
        if not isinstance(guideline_id, str) or not guideline_id:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidInputError("guideline_id", guideline_id, "a guideline id (see list_guidelines)")
        if action == "edit" and text is None:
            raise InvalidInputError("text", None, "the guideline's new text, which action 'edit' needs")
        if action != "edit" and text is not None:
            raise InvalidInputError("text", text, f"no text with action {action!r}; text is for 'edit' only")
        clean = guideline_text(text) if action == "edit" else ""
        self.state(name)
        vector = self.embedder.embed([clean])[0] if clean else None
        after: dict[str, MemoryRow] = {}

        def prepare(state: MemoryState) -> Change | None:
            row = state.guidelines.get(guideline_id)
            if row is None:
                raise GuidelineNotFoundError(name, guideline_id)
            reads = {("guideline", guideline_id)}
            if action == "reject":
                after["row"] = row
                return Change(
                    op="review",
                    drops={"guideline": [guideline_id]},
                    reads=reads,
                    dropped_sources=set(row.sources),
                    summary=Summary(guidelines_removed=(guideline_id,)),
                )
            # Approve, or edit (which approves too: the operator wrote the text that will be used).
            new = replace(row, body=_with_status(row.body, "active"))
            if vector is not None:
                new = replace(new, text=clean, vector=vector)
            after["row"] = new
            if new.text == row.text and row.status == "active":
                return None  # approved already, or edited to the text it has: nothing changes
            return Change(
                op="review", rows=[new], reads=reads, summary=Summary(guidelines_revised=(guideline_id,))
            )

        commit, state = self.ledger.change(name, prepare, who=who)
        version = commit.version if commit is not None else state.version
        if action == "reject" and commit is not None:
            self.ledger.freshness.settle()  # like a removal: no replica scores with it once this returns
        return _reviewed(name, version, after["row"], removed=action == "reject")
