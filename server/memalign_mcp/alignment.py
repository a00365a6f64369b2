"""Alignment and unalignment: adding feedback to a judge's memory and removing it so that none of it remains.

Order matters for "nothing acknowledged is ever lost": feedback is validated whole, then stored (pending), and
only then distilled; a distillation that fails leaves the items stored and pending, and the next add retries them.
Removal deletes the items and every guideline that cites them before anything is re-derived, so that a failure
half-way cannot leave a guideline shaped by removed feedback.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from memalign_mcp.distill import DistillOutcome, WorkingGuideline
from memalign_mcp.embeddings import text_for_embedding
from memalign_mcp.errors import InvalidInputError, ModelError
from memalign_mcp.evaluation import EvaluationReport, Progress, evaluate
from memalign_mcp.judge import JudgeService, guideline_of
from memalign_mcp.models import (
    AddFeedbackResult,
    FeedbackInput,
    Guideline,
    JudgeSpec,
    LabelledExample,
    RemoveFeedbackResult,
)
from memalign_mcp.prompts import FeedbackView
from memalign_mcp.records import MemoryRow

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")


def content_hash(item: FeedbackInput) -> str:
    """A hash of what a feedback item says (not who said it), to tell a re-send from a correction."""
    canonical = json.dumps(
        [item.inputs, item.outputs, item.expectations, item.value, item.rationale],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _view(row: MemoryRow) -> FeedbackView:
    body = row.body
    return FeedbackView(
        inputs=body["inputs"], outputs=body["outputs"], value=body["value"], rationale=body["rationale"]
    )


class MemAlignService(JudgeService):
    """The full engine: JudgeService plus add_feedback, remove_feedback and evaluate."""

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

    # --- validation ---------------------------------------------------------------------------------------

    def _validated(self, spec: JudgeSpec, items: Sequence[Any]) -> list[FeedbackInput]:
        limit = self.settings.memory.max_items_per_call
        if isinstance(items, (str, bytes)) or not items:
            raise InvalidInputError("feedback", items, "a non-empty list of feedback items")
        if len(items) > limit:
            raise InvalidInputError("feedback", f"{len(items)} items", f"at most {limit} items per call")
        out: list[FeedbackInput] = []
        seen: set[str] = set()
        for i, raw in enumerate(items):
            item = raw if isinstance(raw, FeedbackInput) else FeedbackInput.model_validate(raw)
            where = f"feedback[{i}]"
            self.check_text(f"{where}.inputs", item.inputs)
            self.check_text(f"{where}.outputs", item.outputs)
            self.check_text(f"{where}.expectations", item.expectations, required=False)
            self.check_text(f"{where}.rationale", item.rationale)
            value = spec.check_value(item.value, f"{where}.value")
            if item.source is not None and (not item.source.strip() or len(item.source) > 200):
                raise InvalidInputError(
                    f"{where}.source", item.source, "a non-empty name of at most 200 characters"
                )
            if item.id is not None and not _ID_PATTERN.match(item.id):
                raise InvalidInputError(
                    f"{where}.id", item.id, "1-128 characters: letters, digits and _ . : @ / - (not first)"
                )
            item = item.model_copy(update={"value": value})
            if item.id is None:
                item = item.model_copy(update={"id": "fb-" + content_hash(item)[:16]})
            assert item.id is not None
            if item.id in seen:
                raise InvalidInputError(f"{where}.id", item.id, "an id not used twice in one call")
            seen.add(item.id)
            out.append(item)
        return out

    # --- add ----------------------------------------------------------------------------------------------

    def add_feedback(
        self, name: str, items: Sequence[FeedbackInput | dict[str, Any]], progress: Progress | None = None
    ) -> AddFeedbackResult:
        """Store human feedback (episodic memory) and distil guidelines from it (semantic memory)."""
        spec, _ = self.spec_and_version(name)
        checked = self._validated(spec, items)
        ids = [i.id for i in checked if i.id is not None]
        removed: list[Guideline] = []
        with self.lock(name):
            existing = self.store.get(name, "feedback", ids)
            hashes = {i.id: content_hash(i) for i in checked}
            unchanged = [i for i in ids if i in existing and existing[i].content_hash == hashes[i]]
            replaced = [i for i in ids if i in existing and existing[i].content_hash != hashes[i]]
            fresh = [i for i in checked if i.id not in unchanged]
            if replaced:
                # A correction replaces the old item and every influence it had.
                forgotten = self._forget(name, spec, replaced)
                removed = forgotten.guidelines_removed
            if fresh:
                self._store_items(name, fresh, hashes)
                self.store.bump_version(name)
            # Read once: the working set for distillation and the baseline for what was added or dropped.
            before = self.store.rows(name, "guideline")
            outcome, note = self._distill_pending(name, spec, before, progress)
            added, dropped = self._persist(name, outcome, before) if outcome else ([], [])
            changed = outcome is not None and any(g.changed for g in outcome.guidelines)
            version = self.store.bump_version(name) if (changed or dropped) else None
            pending = [r.item_id for r in self.store.rows(name, "feedback", pending=True)]
        if version is None:
            _, version = self.spec_and_version(name)
        return AddFeedbackResult(
            judge=name,
            judge_version=version,
            feedback_ids=ids,
            guidelines_added=added,
            guidelines_removed=removed + dropped,
            pending_ids=pending,
            unchanged_ids=unchanged,
            replaced_ids=replaced,
            note=note,
        )

    def _store_items(self, name: str, items: Sequence[FeedbackInput], hashes: dict[str | None, str]) -> None:
        fields = self.settings.embedding.embed_fields
        texts = [text_for_embedding(i.inputs, i.outputs, fields) for i in items]
        vectors = self.embedder.embed(texts)
        rows: list[MemoryRow] = []
        for item, text, vector in zip(items, texts, vectors, strict=True):
            assert item.id is not None
            body = {
                "inputs": item.inputs,
                "outputs": item.outputs,
                "expectations": item.expectations,
                "value": item.value,
                "rationale": item.rationale,
                "source": item.source,
            }
            rows.append(
                MemoryRow(
                    judge=name,
                    kind="feedback",
                    item_id=item.id,
                    vector=vector,
                    text=text,
                    body=body,
                    content_hash=hashes[item.id],
                    pending=True,
                )
            )
        self.store.upsert(rows)

    def _distill_pending(
        self, name: str, spec: JudgeSpec, guidelines: Sequence[MemoryRow], progress: Progress | None
    ) -> tuple[DistillOutcome | None, str | None]:
        pending = self.store.rows(name, "feedback", pending=True)
        if not pending:
            return None, None
        reflector = self.reflector()
        if reflector is None:
            return None, (
                "No reflection model is configured, so no guidelines were distilled: the feedback is stored and "
                "used as worked examples, and stays pending until a model is set (MEMALIGN_REFLECTION_MODEL or "
                "MEMALIGN_MODEL) and add_feedback is called again."
            )
        working = [WorkingGuideline(r.item_id, r.text, set(r.sources), r.vector) for r in guidelines]
        outcome = reflector.distill(spec, working, [(r.item_id, _view(r)) for r in pending], progress)
        note = None
        if outcome.error:
            note = (
                f"Distillation failed for {len(outcome.failed_ids)} item(s); they are stored and pending, and the "
                f"next add_feedback retries them. Cause: {outcome.error}"
            )
        return outcome, note

    def _persist(
        self, name: str, outcome: DistillOutcome, before: Sequence[MemoryRow]
    ) -> tuple[list[Guideline], list[Guideline]]:
        """Store what distillation changed; return the guidelines added and those dropped."""
        stored = {r.item_id for r in before}
        keep = {g.id for g in outcome.guidelines}
        dropped = [guideline_of(r) for r in before if r.item_id not in keep]
        added = [
            Guideline(id=g.id, text=g.text, source_feedback_ids=sorted(g.sources))
            for g in outcome.guidelines
            if g.changed and g.id not in stored
        ]
        rows = [
            MemoryRow(
                judge=name,
                kind="guideline",
                item_id=g.id,
                vector=g.vector,
                text=g.text,
                sources=tuple(sorted(g.sources)),
            )
            for g in outcome.guidelines
            if g.changed
        ]
        # New guidelines first, then drop replaced ones, then clear pending: a crash in between leaves items
        # pending (redistilled later), never distilled-but-lost.
        self.store.upsert(rows)
        self.store.delete(name, "guideline", [g.id for g in dropped])
        self.store.set_pending(name, outcome.distilled_ids, False)
        return added, dropped

    # --- remove -------------------------------------------------------------------------------------------

    def remove_feedback(
        self, name: str, feedback_ids: Sequence[str], purge: bool = False
    ) -> RemoveFeedbackResult:
        """Forget feedback: the items, every guideline built only on them, and re-derive the rest."""
        if isinstance(feedback_ids, str) or not feedback_ids:
            raise InvalidInputError("feedback_ids", feedback_ids, "a non-empty list of feedback ids")
        for i, fid in enumerate(feedback_ids):
            if not isinstance(fid, str) or not fid:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise InvalidInputError(f"feedback_ids[{i}]", fid, "a feedback id (see list_feedback)")
        spec, _ = self.spec_and_version(name)
        with self.lock(name):
            result = self._forget(name, spec, list(dict.fromkeys(feedback_ids)))
            if purge:
                self.store.purge()
                result.purged = True
        return result

    def _forget(self, name: str, spec: JudgeSpec, ids: list[str]) -> RemoveFeedbackResult:
        found = self.store.get(name, "feedback", ids)
        removed = [i for i in ids if i in found]
        not_found = [i for i in ids if i not in found]
        gone = set(removed)
        tainted = [g for g in self.store.rows(name, "guideline") if gone & set(g.sources)]
        self.store.delete(name, "feedback", removed)
        self.store.delete(name, "guideline", [g.item_id for g in tainted])
        revised: list[Guideline] = []
        dropped: list[Guideline] = []
        pending: list[str] = []
        reflector = self.reflector()
        for g in tainted:
            kept = sorted(set(g.sources) - gone)
            if not kept:
                dropped.append(guideline_of(g))
                continue
            rows = self.store.get(name, "feedback", kept)
            items = [(i, _view(rows[i])) for i in kept if i in rows]
            new = None
            failed = reflector is None
            if reflector is not None:
                try:
                    new = reflector.rederive(spec, items)
                except ModelError:
                    failed = True
            if failed:
                # Cannot re-derive now: drop the guideline, and let its remaining sources be distilled again.
                dropped.append(guideline_of(g))
                pending.extend(kept)
                continue
            if new is None:
                dropped.append(guideline_of(g))
                continue
            text, sources, vector = new
            row = MemoryRow(
                judge=name,
                kind="guideline",
                item_id=g.item_id,
                vector=vector,
                text=text,
                sources=tuple(sorted(sources)),
            )
            self.store.upsert([row])
            revised.append(guideline_of(row))
        self.store.set_pending(name, pending, True)
        version = self.store.bump_version(name) if removed else self.spec_and_version(name)[1]
        return RemoveFeedbackResult(
            judge=name,
            judge_version=version,
            removed_ids=removed,
            not_found_ids=not_found,
            guidelines_removed=dropped,
            guidelines_revised=revised,
            pending_ids=pending,
        )
