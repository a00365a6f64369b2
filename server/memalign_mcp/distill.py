"""Semantic memory: distilling guidelines from feedback, keeping them few and distinct, re-deriving on removal.

Works on an in-memory working set of guidelines and returns what changed; the caller stores it. Every model
reply is checked: item and guideline numbers must point at what the prompt showed, and a new guideline must be
worth keeping (not empty, not too long, not an echo of the prompt's markers, not an order to the judge
(guideline_gate.py), not a copy of the judge's instructions). A reply that does not fit is retried once by the
model client, told why, then raises ModelError. Nothing here stores, and nothing here decides what is pending:
it reports which items were distilled and which were not.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memalign_mcp.embeddings import Embedder
from memalign_mcp.errors import ModelError, show_value
from memalign_mcp.fence import prompt_markup_in
from memalign_mcp.guideline_gate import instruction_to_judge
from memalign_mcp.llm import Completion, ModelClient
from memalign_mcp.models import JudgeSpec
from memalign_mcp.prompts import (
    CONSOLIDATE_SCHEMA_NAME,
    DISTILL_SCHEMA_NAME,
    GUIDELINE_MAX_CHARS,
    REDERIVE_SCHEMA_NAME,
    FeedbackView,
    as_text,
    consolidate_messages,
    consolidate_schema,
    distill_messages,
    distill_schema,
    rederive_messages,
    rederive_schema,
)
from memalign_mcp.records import Vector

log = logging.getLogger(__name__)
# "Be polite always" is about the shortest rule; fewer words were labels a tiny model copied from the prompt.
_MIN_GUIDELINE_WORDS = 3
Progress = Callable[[int, int, str], None]


def new_guideline_id() -> str:
    """A fresh guideline id."""
    return "g-" + uuid.uuid4().hex[:12]


@dataclass
class WorkingGuideline:
    """A guideline being edited: text, sources and vector, plus whether it changed."""

    id: str
    text: str
    sources: set[str]
    vector: Vector
    changed: bool = False


@dataclass
class DistillOutcome:
    """What one round of distillation did."""

    guidelines: list[WorkingGuideline]
    distilled_ids: list[str] = field(default_factory=list[str])
    failed_ids: list[str] = field(default_factory=list[str])
    error: str | None = None


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def guideline_problem(text: str, instructions: str = "") -> str | None:
    """Why a guideline text cannot be kept (empty, too long, markup, an order to the judge, a copy), or None."""
    stripped = text.strip()
    if not stripped:
        return "its text is empty; a new guideline states its rule in words"
    if len(stripped) > GUIDELINE_MAX_CHARS:
        return f"its text is {len(stripped)} characters long; at most {GUIDELINE_MAX_CHARS} are allowed"
    markup = prompt_markup_in(stripped)
    if markup is not None:
        return f"its text echoes the prompt's markup {markup!r}; write the rule in plain words"
    if len(stripped.split()) < _MIN_GUIDELINE_WORDS:
        return f"its text {show_value(stripped)} is not a sentence stating a rule"
    order = instruction_to_judge(stripped)
    if order is not None:
        return (
            f"its text is an instruction to the judge ({order}), not a rule for judging; state what makes "
            "a response good or bad"
        )
    rule, task = _normalized(stripped), _normalized(instructions)
    # A guideline that restates the judge's own instructions teaches nothing the judge was not already told.
    if task and rule and (rule in task or task in rule):
        return "its text copies the judge's instructions; a guideline states a rule they do not already say"
    return None


def _check_sources(
    n_items: int, key: str, *, n_existing: int = 0, instructions: str = ""
) -> Callable[[dict[str, Any]], None]:
    """A reply check: item numbers in range, `existing` null or a guideline shown, new texts fit to keep."""

    def check(data: dict[str, Any]) -> None:
        for number, g in enumerate(data.get("guidelines", []), start=1):
            numbers = g.get(key, [])
            bad = [
                n for n in numbers if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= n_items
            ]
            if bad or not numbers:
                raise ValueError(f"{key} must list item numbers from 1 to {n_items}; got {numbers}")
            existing = g.get("existing")
            if existing is None:
                problem = guideline_problem(str(g.get("text", "")), instructions)
                if problem is not None:
                    raise ValueError(f"guideline {number}: {problem}")
            elif n_existing == 0:
                raise ValueError(f"guideline {number}: `existing` must be null, as no guidelines were shown")
            elif (
                not isinstance(existing, int) or isinstance(existing, bool) or not 1 <= existing <= n_existing
            ):
                raise ValueError(
                    f"guideline {number}: `existing` must be null or a guideline number from 1 to "
                    f"{n_existing}; got {show_value(existing)}"
                )

    return check


class Reflector:
    """Distils, consolidates and re-derives guidelines with a reflection model."""

    def __init__(
        self,
        client: ModelClient,
        model: str,
        embedder: Embedder,
        *,
        merge_threshold: float,
        cap: int,
        batch_size: int,
        batch_chars: int,
        concurrency: int = 4,
    ) -> None:
        self.client = client
        self.model = model
        self.embedder = embedder
        self.merge_threshold = merge_threshold
        self.cap = cap
        self.batch_size = batch_size
        self.batch_chars = batch_chars
        self.concurrency = concurrency

    def batches(self, items: Sequence[tuple[str, FeedbackView]]) -> list[list[tuple[str, FeedbackView]]]:
        """Split items into batches within the item and context budgets."""
        out: list[list[tuple[str, FeedbackView]]] = []
        current: list[tuple[str, FeedbackView]] = []
        size = 0
        for pair in items:
            view = pair[1]
            chars = len(as_text(view.inputs)) + len(as_text(view.outputs)) + len(view.rationale) + 200
            if current and (len(current) >= self.batch_size or size + chars > self.batch_chars):
                out.append(current)
                current, size = [], 0
            current.append(pair)
            size += chars
        if current:
            out.append(current)
        return out

    def distill(
        self,
        spec: JudgeSpec,
        guidelines: list[WorkingGuideline],
        items: Sequence[tuple[str, FeedbackView]],
        progress: Progress | None = None,
    ) -> DistillOutcome:
        """Learn from new items, seeing only them and the existing guideline texts.

        Batches go to the model concurrently, each seeing the guidelines as they were before this round (a real
        model takes seconds a call; 1,000 items would otherwise wait for 20 calls in a row). Replies are applied
        in batch order, so the outcome does not depend on which reply came first, and near-identical
        guidelines from different batches merge by embedding similarity. A failed batch leaves its items
        undistilled (reported as failed); the others still count.
        """
        outcome = DistillOutcome(guidelines=guidelines)
        batches = self.batches(items)
        known = [g.text for g in guidelines]

        def ask(batch: list[tuple[str, FeedbackView]]) -> Completion:
            return self.client.complete_json(
                model=self.model,
                messages=distill_messages(spec, [v for _, v in batch], known),
                schema_name=DISTILL_SCHEMA_NAME,
                schema=distill_schema(len(batch), len(known)),
                check=_check_sources(
                    len(batch), "source_items", n_existing=len(known), instructions=spec.instructions
                ),
            )

        if progress:
            batches_text = "1 batch" if len(batches) == 1 else f"{len(batches)} batches"
            progress(0, len(batches), f"distilling {len(items)} items in {batches_text}")
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(batches)))) as pool:
            futures = [pool.submit(ask, batch) for batch in batches]
            for number, (batch, future) in enumerate(zip(batches, futures, strict=True), start=1):
                ids = [item_id for item_id, _ in batch]
                try:
                    reply = future.result()
                except ModelError as exc:
                    log.warning("distillation failed; %d items stay pending: %s", len(ids), exc)
                    outcome.error = str(exc)
                    outcome.failed_ids.extend(ids)
                else:
                    self._apply(outcome.guidelines, reply.data["guidelines"], ids)
                    outcome.distilled_ids.extend(ids)
                if progress:
                    progress(number, len(batches), f"distilled batch {number} of {len(batches)}")
        if len(outcome.guidelines) > self.cap:
            outcome.guidelines = self.consolidate(spec, outcome.guidelines, outcome)
        return outcome

    def _apply(
        self, guidelines: list[WorkingGuideline], proposed: list[dict[str, Any]], ids: list[str]
    ) -> None:
        fresh: list[tuple[str, set[str]]] = []
        for g in proposed:
            sources = {ids[n - 1] for n in g["source_items"]}
            existing = g.get("existing")
            if existing is None:
                fresh.append((str(g["text"]).strip(), sources))
            elif isinstance(existing, int) and 1 <= existing <= len(guidelines):
                target = guidelines[existing - 1]
                if not sources <= target.sources:
                    target.sources |= sources
                    target.changed = True
            else:
                # Unreachable past the reply check; a number never shown must not become a new, empty guideline.
                log.warning("ignored a reply citing guideline %s, which was not shown", show_value(existing))
        if not fresh:
            return
        vectors = self.embedder.embed([text for text, _ in fresh])
        for (text, sources), vector in zip(fresh, vectors, strict=True):
            twin = self._nearest(guidelines, vector)
            if twin is not None:
                # Near-identical to a guideline we have: keep one rule, with the provenance of both.
                if not sources <= twin.sources:
                    twin.sources |= sources
                    twin.changed = True
                continue
            guidelines.append(WorkingGuideline(new_guideline_id(), text, sources, vector, changed=True))

    def _nearest(self, guidelines: Sequence[WorkingGuideline], vector: Vector) -> WorkingGuideline | None:
        if not guidelines:
            return None
        matrix = np.stack([g.vector for g in guidelines])
        sims = matrix @ vector
        best = int(np.argmax(sims))
        return guidelines[best] if float(sims[best]) >= self.merge_threshold else None

    def consolidate(
        self, spec: JudgeSpec, guidelines: list[WorkingGuideline], outcome: DistillOutcome
    ) -> list[WorkingGuideline]:
        """Merge guidelines down to the cap, each result citing the union of its inputs' sources."""
        n = len(guidelines)
        try:
            reply = self.client.complete_json(
                model=self.model,
                messages=consolidate_messages(spec, [g.text for g in guidelines], self.cap),
                schema_name=CONSOLIDATE_SCHEMA_NAME,
                schema=consolidate_schema(n, self.cap),
                check=_check_consolidation(n, self.cap, spec.instructions),
            )
        except ModelError as exc:
            outcome.error = f"consolidation failed, {n} guidelines kept (cap {self.cap}): {exc}"
            return guidelines
        merged: list[WorkingGuideline] = []
        proposed = reply.data["guidelines"]
        texts = [str(g["text"]).strip() for g in proposed]
        vectors = self.embedder.embed(texts)
        for g, text, vector in zip(proposed, texts, vectors, strict=True):
            parents = [guidelines[k - 1] for k in sorted(set(g["merged_from"]))]
            if len(parents) == 1 and parents[0].text == text:
                merged.append(parents[0])
                continue
            sources = set[str]().union(*(p.sources for p in parents))
            merged.append(WorkingGuideline(new_guideline_id(), text, sources, vector, changed=True))
        return merged

    def nearest(self, guidelines: Sequence[WorkingGuideline], vector: Vector) -> WorkingGuideline | None:
        """The guideline near-identical to this vector (cosine >= merge threshold), if any."""
        return self._nearest(guidelines, vector)

    def rederive(
        self, spec: JudgeSpec, items: Sequence[tuple[str, FeedbackView]], *, at_most: int = 1
    ) -> list[tuple[str, set[str], Vector]]:
        """The guidelines (at most `at_most`, distinct) these items alone support; ModelError on failure.

        Called once per distinct set of remaining sources: guidelines that shared those sources get one
        prompt, and may come back as several rules, so distinct rules are not collapsed into copies of one.
        """
        reply = self.client.complete_json(
            model=self.model,
            messages=rederive_messages(spec, [v for _, v in items], at_most),
            schema_name=REDERIVE_SCHEMA_NAME,
            schema=rederive_schema(len(items), at_most),
            check=_check_sources(len(items), "source_items", instructions=spec.instructions),
        )
        proposed = [g for g in reply.data["guidelines"] if str(g.get("text", "")).strip()][:at_most]
        texts = [str(g["text"]).strip() for g in proposed]
        vectors = self.embedder.embed(texts) if texts else []
        out: list[tuple[str, set[str], Vector]] = []
        for g, text, vector in zip(proposed, texts, vectors, strict=True):
            twin = next((o for o in out if float(o[2] @ vector) >= self.merge_threshold), None)
            sources = {items[n - 1][0] for n in g["source_items"]}
            if twin is not None:
                twin[1].update(sources)  # near-identical rules from one reply: one rule, both provenances
                continue
            out.append((text, sources, vector))
        return out


def _check_consolidation(n: int, cap: int, instructions: str = "") -> Callable[[dict[str, Any]], None]:
    def check(data: dict[str, Any]) -> None:
        proposed = data.get("guidelines", [])
        if len(proposed) > cap:
            raise ValueError(f"returned {len(proposed)} guidelines; at most {cap} allowed")
        for g in proposed:
            numbers = g.get("merged_from", [])
            if not numbers or any(not isinstance(k, int) or not 1 <= k <= n for k in numbers):
                raise ValueError(f"merged_from must list guideline numbers from 1 to {n}; got {numbers}")
            problem = guideline_problem(str(g.get("text", "")), instructions)
            if problem is not None:
                raise ValueError(f"a merged guideline: {problem}")

    return check
