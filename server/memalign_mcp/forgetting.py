"""Forgetting feedback: which guidelines it takes down and what is re-derived from what remains.

Computed off to the side from one state (it may call the reflection model); the caller commits the outcome in
the same transaction as the removal. Guidelines that cited a removed item are grouped by the sources they have
left, and each group is re-derived with one prompt that may return several rules, which then merge with
near-identical rules that stay (union of sources), so distinct rules are neither lost nor collapsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from memalign_mcp.distill import Reflector, WorkingGuideline, new_guideline_id
from memalign_mcp.errors import ModelError
from memalign_mcp.judge import guideline_of
from memalign_mcp.memory_state import MemoryState
from memalign_mcp.models import Guideline, JudgeSpec
from memalign_mcp.prompts import FeedbackView
from memalign_mcp.records import MemoryRow
from memalign_mcp.review import with_review_status, with_statuses


def feedback_view(row: MemoryRow) -> FeedbackView:
    """A stored feedback row as the reflection model sees it."""
    body = row.body
    return FeedbackView(
        inputs=body["inputs"], outputs=body["outputs"], value=body["value"], rationale=body["rationale"]
    )


class Forgetting:
    """What forgetting some feedback does to the guidelines: computed off to the side, stored by a Change."""

    def __init__(self) -> None:
        self.rows: list[MemoryRow] = []
        self.dropped: list[Guideline] = []
        self.revised: list[Guideline] = []
        self.added: list[Guideline] = []
        self.pending: list[str] = []
        self.drop_ids: list[str] = []
        self.tainted: list[str] = []  # guidelines that cited a forgotten item
        self.tainted_sources: set[str] = set()


def plan_forgetting(
    state: MemoryState,
    ids: Sequence[str],
    *,
    reflector: Reflector | None,
    whole_rows: Callable[[MemoryState, Iterable[str]], dict[str, MemoryRow]],
) -> Forgetting:
    """Drop every guideline citing these items and re-derive, once per distinct set of remaining sources."""
    out = Forgetting()
    gone = set(ids)
    tainted = [g for g in state.guideline_rows() if gone & set(g.sources)]
    out.tainted = [g.item_id for g in tainted]
    out.tainted_sources = {s for g in tainted for s in g.sources}
    # Proposed guidelines count as much as active ones; an operator's own (no sources) is never rewritten.
    untouched = [
        WorkingGuideline(g.item_id, g.text, set(g.sources), g.vector)
        for g in state.guideline_rows()
        if not gone & set(g.sources) and not g.by_operator
    ]
    groups: dict[tuple[str, ...], list[MemoryRow]] = {}
    for g in tainted:
        groups.setdefault(tuple(sorted(set(g.sources) - gone)), []).append(g)
    spec = JudgeSpec.model_validate_json(state.spec_json)
    reused: set[str] = set()
    for kept, olds in groups.items():
        if not kept:
            continue
        rows = whole_rows(state, kept)
        items = [(i, feedback_view(rows[i])) for i in kept if i in rows]
        try:
            if reflector is None:
                raise ModelError("no reflection model is configured")
            proposals = reflector.rederive(spec, items, at_most=len(olds))
        except ModelError:
            # Cannot re-derive now: drop the guidelines, and let their remaining sources be distilled again.
            out.pending.extend(i for i in kept if i not in out.pending)
            continue
        for text, sources, vector in proposals:
            twin = reflector.nearest(untouched, vector)
            if twin is not None:
                # Near-identical to a rule that stays: one rule, with the provenance of both.
                twin.sources |= sources
                twin.changed = True
                continue
            old = next((o for o in olds if o.item_id not in reused), None)
            gid = old.item_id if old is not None else new_guideline_id()
            reused.add(gid)
            g = WorkingGuideline(gid, text, set(sources), vector, changed=True)
            untouched.append(g)
            (out.revised if old is not None else out.added).append(
                Guideline(id=gid, text=text, source_feedback_ids=sorted(sources))
            )
    for g in untouched:
        if g.changed:
            out.rows.append(
                MemoryRow(
                    judge=state.judge,
                    kind="guideline",
                    item_id=g.id,
                    vector=g.vector,
                    text=g.text,
                    sources=tuple(sorted(g.sources)),
                )
            )
    # Re-derived text of a judge that reviews guidelines waits for approval (review.py has the rule).
    rederived = {g.id for g in (*out.revised, *out.added)}
    out.rows = with_review_status(out.rows, state, rewritten=rederived)
    out.dropped = [guideline_of(g) for g in tainted if g.item_id not in reused]
    out.drop_ids = [g.id for g in out.dropped]
    revised_ids = {g.id for g in out.revised}
    out.revised += [
        Guideline(id=g.id, text=g.text, source_feedback_ids=sorted(g.sources))
        for g in untouched
        if g.changed and g.id not in revised_ids and g.id not in {a.id for a in out.added}
    ]
    out.revised, out.added = with_statuses(out.revised, out.rows), with_statuses(out.added, out.rows)
    return out
