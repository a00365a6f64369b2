"""Alignment and unalignment: adding feedback to a judge's memory and removing it so that none of it remains.

Each public call is one or two memory transactions (transaction.py): everything is computed from one state, off
to the side, and committed at once; a failure at any step before the commit leaves the judge as it was.
Adding feedback is two transactions so that nothing acknowledged waits on a model: the items are committed
(pending) first, then distilled in a second transaction; if distillation fails or collides with other writers,
the items stay pending and `distill_pending` (or the next add) completes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from memalign_mcp.distill import DistillOutcome, WorkingGuideline
from memalign_mcp.embeddings import text_for_embedding
from memalign_mcp.errors import InvalidInputError
from memalign_mcp.evaluation import EvaluationReport, Progress, evaluate
from memalign_mcp.feedback_checks import content_hash, validated_feedback
from memalign_mcp.forgetting import Forgetting, feedback_view, plan_forgetting
from memalign_mcp.judge import guideline_of
from memalign_mcp.models import (
    NO_SURROGATES,
    AddFeedbackResult,
    FeedbackInput,
    Guideline,
    JudgeSpec,
    LabelledExample,
    RemoveFeedbackResult,
    has_lone_surrogate,
)
from memalign_mcp.records import MemoryRow, Summary, Vector
from memalign_mcp.review import ReviewService, with_review_status, with_statuses
from memalign_mcp.transaction import Change, ConflictError, MemoryState


def _body(item: FeedbackInput) -> dict[str, Any]:
    return {
        "inputs": item.inputs,
        "outputs": item.outputs,
        "expectations": item.expectations,
        "value": item.value,
        "rationale": item.rationale,
        "source": item.source,
    }


class MemAlignService(ReviewService):
    """The full engine: judges, scoring, history and review, plus add_feedback, remove_feedback and evaluate."""

    def evaluate(
        self,
        name: str,
        dataset: Sequence[LabelledExample] | None = None,
        *,
        compare_baseline: bool = False,
        progress: Progress | None = None,
    ) -> EvaluationReport:
        """Agreement with human verdicts on a labelled set, or leave-one-out over the judge's own feedback."""
        return evaluate(self, name, dataset, compare_baseline=compare_baseline, progress=progress)

    # --- add ----------------------------------------------------------------------------------------------

    def add_feedback(
        self,
        name: str,
        items: Sequence[FeedbackInput | dict[str, Any]],
        progress: Progress | None = None,
        *,
        who: str | None = None,
    ) -> AddFeedbackResult:
        """Store human feedback (episodic memory) and distil guidelines from it (semantic memory)."""
        spec, _ = self.spec_and_version(name)
        checked = validated_feedback(
            spec, items, max_items=self.settings.memory.max_items_per_call, check_text=self.check_text
        )
        ids = [i.id for i in checked if i.id is not None]
        hashes = {i.id: content_hash(i) for i in checked}
        sources = sorted({i.source for i in checked if i.source})
        who = who or (", ".join(sources)[:200] if sources else None)
        fields = self.settings.embedding.embed_fields
        vectors: dict[str, Vector] = {}  # embedded once, even when the change is prepared again
        outcome: dict[str, Any] = {}

        def prepare(state: MemoryState) -> Change:
            spec_now = JudgeSpec.model_validate_json(state.spec_json)
            for n, item in enumerate(checked):
                spec_now.check_value(item.value, f"feedback[{n}].value")
            existing = self.ledger.whole_rows(state, [i for i in ids if i in state.feedback])
            unchanged = [i for i in ids if i in existing and existing[i].content_hash == hashes[i]]
            replaced = [i for i in ids if i in existing and existing[i].content_hash != hashes[i]]
            fresh = [i for i in checked if i.id not in existing or i.id in replaced]
            # A re-send that changes only the source updates provenance and is not distilled again.
            relabelled = [
                i for i in checked if i.id in unchanged and existing[i.id].body.get("source") != i.source
            ]
            texts = {
                str(i.id): text_for_embedding(i.inputs, i.outputs, fields)
                for i in fresh
                if i.id not in vectors
            }
            if texts:
                vectors.update(zip(texts, self.embedder.embed(list(texts.values())), strict=True))
            forgetting = self._forgetting(state, replaced) if replaced else Forgetting()
            rows = [self._feedback_row(name, i, hashes, vectors) for i in fresh]
            # The same row version with the new source (the ledger gives it this transaction's id).
            rows += [
                replace(r, body=r.body | {"source": i.source}, pending=r.item_id in state.pending)
                for i in relabelled
                for r in [existing[str(i.id)]]
            ]
            outcome.update(unchanged=unchanged, replaced=replaced, forgetting=forgetting)
            return Change(
                op="add",
                rows=rows + forgetting.rows,
                drops={"guideline": forgetting.drop_ids},
                pending_on=forgetting.pending,
                reads={("feedback", i) for i in ids} | {("guideline", g) for g in forgetting.tainted},
                dropped_sources=forgetting.tainted_sources,
                summary=Summary(
                    feedback_added=tuple(str(i.id) for i in fresh if i.id not in replaced),
                    feedback_replaced=tuple(replaced),
                    guidelines_removed=tuple(g.id for g in forgetting.dropped),
                    guidelines_revised=tuple(g.id for g in forgetting.revised),
                    guidelines_added=tuple(g.id for g in forgetting.added),
                ),
            )

        stored, _ = self.ledger.change(name, prepare, who=who)
        forgetting: Forgetting = outcome["forgetting"]
        distilled = self._distill(name, progress, who=who)
        last = distilled.commit_version or (stored.version if stored is not None else None)
        return AddFeedbackResult(
            judge=name,
            judge_version=last if last is not None else self.state(name).version,
            feedback_ids=ids,
            guidelines_added=forgetting.added + distilled.added,
            guidelines_removed=forgetting.dropped + distilled.dropped,
            pending_ids=distilled.pending,
            unchanged_ids=outcome["unchanged"],
            replaced_ids=outcome["replaced"],
            note=distilled.note,
        )

    def _feedback_row(
        self, name: str, item: FeedbackInput, hashes: dict[str | None, str], vectors: dict[str, Vector]
    ) -> MemoryRow:
        assert item.id is not None
        fields = self.settings.embedding.embed_fields
        return MemoryRow(
            judge=name,
            kind="feedback",
            item_id=item.id,
            vector=vectors[item.id],
            text=text_for_embedding(item.inputs, item.outputs, fields),
            body=_body(item),
            content_hash=hashes[item.id],
            pending=True,
        )

    def distill_pending(
        self, name: str, progress: Progress | None = None, *, who: str | None = None
    ) -> AddFeedbackResult:
        """Distil a judge's pending feedback now (after a model was configured, or a failed distillation)."""
        before = sorted(self.state(name).pending)
        done = self._distill(name, progress, who=who)
        return AddFeedbackResult(
            judge=name,
            judge_version=done.commit_version or self.state(name).version,
            feedback_ids=before,
            guidelines_added=done.added,
            guidelines_removed=done.dropped,
            pending_ids=done.pending,
            note=done.note or (None if before else "Nothing was pending."),
        )

    def _distill(self, name: str, progress: Progress | None, *, who: str | None) -> _Distilled:
        """Distil the pending feedback in one transaction; on failure the items simply stay pending."""
        result = _Distilled()
        reflector = self.reflector()

        def prepare(state: MemoryState) -> Change | None:
            pending = [r for r in state.feedback_rows() if r.item_id in state.pending]
            if not pending:
                return None
            if reflector is None:
                result.note = (
                    "No reflection model is configured, so no guidelines were distilled: the feedback is stored "
                    "and used as worked examples, and stays pending until a model is set "
                    "(MEMALIGN_REFLECTION_MODEL or MEMALIGN_MODEL) and distill_pending is called."
                )
                return None
            whole = self.ledger.whole_rows(state, [r.item_id for r in pending])
            # An operator's own guidelines are never merged into or consolidated (they cite no feedback).
            before = [r for r in state.guideline_rows() if not r.by_operator]
            working = [WorkingGuideline(r.item_id, r.text, set(r.sources), r.vector) for r in before]
            spec = JudgeSpec.model_validate_json(state.spec_json)
            outcome = reflector.distill(
                spec, working, [(i, feedback_view(r)) for i, r in whole.items()], progress
            )
            result.note = _failure_note(outcome)
            if not outcome.distilled_ids:
                return None
            return self._distilled_change(state, outcome, before, result)

        try:
            commit, _ = self.ledger.change(name, prepare, who=who)
        except (ConflictError, OSError, RuntimeError, ValueError) as exc:
            # The feedback is committed already: failing to store its distillation loses nothing, so it is
            # reported in the result (the items stay pending) rather than failing a call whose data is safe.
            result.note = (
                f"Distillation was not stored ({exc}); the feedback is stored and stays pending: call "
                "distill_pending to finish it."
            )
            commit = None
        if commit is not None:
            result.commit_version = commit.version
        else:
            result.added, result.dropped = [], []
        result.pending = sorted(self.state(name).pending)
        return result

    @staticmethod
    def _distilled_change(
        state: MemoryState, outcome: DistillOutcome, before: Sequence[MemoryRow], result: _Distilled
    ) -> Change:
        stored = {r.item_id for r in before}
        keep = {g.id for g in outcome.guidelines}
        dropped = [guideline_of(r) for r in before if r.item_id not in keep]
        changed = [g for g in outcome.guidelines if g.changed]
        result.added = [
            Guideline(id=g.id, text=g.text, source_feedback_ids=sorted(g.sources))
            for g in changed
            if g.id not in stored
        ]
        result.dropped = dropped
        rows = [
            MemoryRow(
                judge=state.judge,
                kind="guideline",
                item_id=g.id,
                vector=g.vector,
                text=g.text,
                sources=tuple(sorted(g.sources)),
            )
            for g in changed
        ]
        rows = with_review_status(rows, state)  # new text of a judge that reviews guidelines is proposed
        result.added = with_statuses(result.added, rows)
        return Change(
            op="distill",
            rows=rows,
            drops={"guideline": [g.id for g in dropped]},
            pending_off=list(outcome.distilled_ids),
            reads={("feedback", i) for i in outcome.distilled_ids},
            reads_all_guidelines=True,
            dropped_sources={s for g in dropped for s in g.source_feedback_ids},
            summary=Summary(
                guidelines_added=tuple(g.id for g in result.added),
                guidelines_removed=tuple(g.id for g in dropped),
                guidelines_revised=tuple(g.id for g in changed if g.id in stored),
            ),
        )

    # --- remove -------------------------------------------------------------------------------------------

    def remove_feedback(
        self, name: str, feedback_ids: Sequence[str], purge: bool = False, *, who: str | None = None
    ) -> RemoveFeedbackResult:
        """Forget feedback: the items, every guideline built only on them, and re-derive the rest."""
        if isinstance(feedback_ids, str) or not feedback_ids:
            raise InvalidInputError("feedback_ids", feedback_ids, "a non-empty list of feedback ids")
        cap = self.settings.limits.max_ids_per_call
        if len(feedback_ids) > cap:
            raise InvalidInputError(
                "feedback_ids",
                f"{len(feedback_ids)} ids",
                f"at most {cap} ids per call (limits.max_ids_per_call); remove them in several calls",
            )
        for i, fid in enumerate(feedback_ids):
            if not isinstance(fid, str) or not fid or len(fid) > 128:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise InvalidInputError(
                    f"feedback_ids[{i}]", fid, "a feedback id of 1-128 characters (see list_feedback)"
                )
            if has_lone_surrogate(fid):  # never stored, and a purge's tombstone would record it
                raise InvalidInputError(f"feedback_ids[{i}]", fid, NO_SURROGATES)
        if not isinstance(purge, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidInputError("purge", purge, "true or false")
        wanted = list(dict.fromkeys(feedback_ids))
        self.state(name)
        found: dict[str, list[str]] = {}
        forgotten: dict[str, Forgetting] = {}

        def prepare(state: MemoryState) -> Change | None:
            removed = [i for i in wanted if i in state.feedback]
            found["removed"] = removed
            if not removed:
                return None
            forgetting = self._forgetting(state, removed)
            forgotten["f"] = forgetting
            return Change(
                op="remove",
                rows=forgetting.rows,
                drops={"feedback": removed, "guideline": forgetting.drop_ids},
                pending_on=forgetting.pending,
                reads={("feedback", i) for i in removed} | {("guideline", g) for g in forgetting.tainted},
                dropped_sources=forgetting.tainted_sources,
                summary=Summary(
                    feedback_removed=tuple(removed),
                    guidelines_removed=tuple(g.id for g in forgetting.dropped),
                    guidelines_revised=tuple(g.id for g in forgetting.revised),
                    guidelines_added=tuple(g.id for g in forgetting.added),
                    purged=tuple(removed) if purge else (),
                ),
            )

        commit, _ = self.ledger.change(name, prepare, who=who)
        removed = found["removed"] if commit is not None else []
        forgetting = forgotten.get("f", Forgetting()) if commit is not None else Forgetting()
        if purge:
            self.purge_feedback(name, wanted, who=who, recorded=commit is not None)
            self.forget_cached_text(name)
        # Returns only once every replica's next read checks for this commit: none scores with removed items.
        self.ledger.freshness.settle()
        return RemoveFeedbackResult(
            judge=name,
            judge_version=commit.version if commit is not None else self.state(name).version,
            removed_ids=removed,
            not_found_ids=[i for i in wanted if i not in removed],
            guidelines_removed=forgetting.dropped,
            guidelines_revised=forgetting.revised + forgetting.added,
            pending_ids=forgetting.pending,
            purged=purge,
        )

    def _forgetting(self, state: MemoryState, ids: Sequence[str]) -> Forgetting:
        """What forgetting these items does to the guidelines (model calls; nothing stored)."""
        return plan_forgetting(state, ids, reflector=self.reflector(), whole_rows=self.ledger.whole_rows)


class _Distilled:
    """What one distillation transaction did, for the call's result."""

    def __init__(self) -> None:
        self.added: list[Guideline] = []
        self.dropped: list[Guideline] = []
        self.pending: list[str] = []
        self.note: str | None = None
        self.commit_version: int | None = None


def _failure_note(outcome: DistillOutcome) -> str | None:
    if not outcome.error:
        return None
    return (
        f"Distillation failed for {len(outcome.failed_ids)} item(s); they are stored and pending, and "
        f"distill_pending (or the next add_feedback) retries them. Cause: {outcome.error}"
    )
