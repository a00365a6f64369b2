"""The judge service: judges, scoring, and reading memory. Knows nothing of MCP.

It ties together the store (LanceDB), the embedder, the model client and the reflector. Adding and removing
feedback (alignment) lives in alignment.py on top of this service. Every result that depends on memory carries
the judge's memory version. Bad input raises InvalidInputError before anything is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from memalign_mcp.distill import Reflector
from memalign_mcp.embeddings import Embedder, text_for_embedding
from memalign_mcp.errors import (
    InvalidInputError,
    JudgeExistsError,
    MemAlignError,
    PurgedContentError,
    UnknownJudgeError,
)
from memalign_mcp.llm import ModelClient
from memalign_mcp.models import (
    MEMORY_MODEL,
    DeleteJudgeResult,
    FeedbackPage,
    FeedbackRecord,
    Guideline,
    GuidelineList,
    Judge,
    JudgedText,
    JudgeList,
    JudgeSpec,
    ScoreResult,
)
from memalign_mcp.prompts import (
    SCORE_SCHEMA_NAME,
    ExampleView,
    instructions_with_guidelines,
    score_messages,
    score_schema,
)
from memalign_mcp.records import Matrix, MemoryRow, Neighbour, Vector
from memalign_mcp.settings import Settings
from memalign_mcp.store import MemoryStore
from memalign_mcp.transaction import Ledger, MemoryState
from memalign_mcp.vote import memory_verdict


def guideline_of(row: MemoryRow) -> Guideline:
    """The public view of a stored guideline row."""
    return Guideline(id=row.item_id, text=row.text, source_feedback_ids=sorted(row.sources))


def feedback_of(row: MemoryRow, *, pending: bool) -> FeedbackRecord:
    """The public view of a stored feedback row."""
    body = row.body
    return FeedbackRecord(
        id=row.item_id,
        inputs=body["inputs"],
        outputs=body["outputs"],
        expectations=body.get("expectations"),
        value=body["value"],
        rationale=body["rationale"],
        source=body.get("source"),
        created_at=row.created_at,
        pending=pending,
    )


def example_of(row: MemoryRow) -> ExampleView:
    """A stored feedback row as a worked example for the judge."""
    body = row.body
    return ExampleView(
        feedback_id=row.item_id,
        inputs=body["inputs"],
        outputs=body["outputs"],
        expectations=body.get("expectations"),
        value=body["value"],
        rationale=body["rationale"],
    )


class VectorSnapshot:
    """Every feedback vector of one judge at one memory version, for exact cosine search in memory.

    Reading the judge's vectors once per memory version and searching them with one matrix product keeps a
    score's retrieval to a few milliseconds at 100k items, where LanceDB's scan takes tens. It costs 4 bytes
    per dimension per item in memory (154 MB for 100k items of 384 dimensions).
    """

    def __init__(
        self, item_ids: Sequence[str], vectors: Matrix, rows: dict[str, MemoryRow] | None = None
    ) -> None:
        self.item_ids = list(item_ids)
        self.vectors = vectors
        # Whole rows for judges small enough to hold: the k neighbours then cost no read of the store.
        self.rows = rows
        # Norms apart rather than a normalised copy: one matrix in memory, not two.
        self.inverse_norms = 1.0 / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)

    def top(self, vector: Vector, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        """(item id, cosine similarity) of the k items most similar to the vector, most similar first."""
        n = len(self.item_ids)
        if k <= 0 or n == 0:
            return []
        query = vector.astype(np.float32) / max(float(np.linalg.norm(vector)), 1e-12)
        # einsum runs in this thread: a BLAS product would wake OpenBLAS's threads, whose spinning afterwards
        # slows the embedder and LanceDB on a small machine by more than the product saves.
        similarity = np.einsum("ij,j->i", self.vectors, query) * self.inverse_norms
        # Exclusions are few (leave-one-out excludes one item): take that many more, then drop them.
        wanted = min(n, k + len(exclude))
        pool = np.argpartition(-similarity, wanted - 1)[:wanted] if wanted < n else np.arange(n)
        ranked = pool[np.argsort(-similarity[pool], kind="stable")].tolist()
        found = [(self.item_ids[i], float(similarity[i])) for i in ranked]
        return [pair for pair in found if pair[0] not in exclude][:k]


class JudgeService:
    """Judges with two memories over one store; thread-safe, one instance per process.

    Every change goes through the ledger (transaction.py); this class only reads states and scores.
    """

    def __init__(
        self, settings: Settings, store: MemoryStore, embedder: Embedder, client: ModelClient | None
    ) -> None:
        self.settings = settings
        self.store = store
        self.ledger = Ledger(store, freshness_s=settings.store.freshness_s())
        self.embedder = embedder
        self.client = client
        self._snapshots: dict[str, tuple[tuple[str, int], VectorSnapshot]] = {}

    # --- judges -------------------------------------------------------------------------------------------

    def model_for(self, spec: JudgeSpec) -> str:
        """The model that scores for a judge: its own, else the server default, else the memory vote."""
        return (spec.model or "").strip() or self.settings.model.default_judge_model

    def k_for(self, spec: JudgeSpec) -> int:
        """How many examples a judge is shown: its own setting, else the server default."""
        return spec.retrieval_k if spec.retrieval_k is not None else self.settings.memory.retrieval_k

    def reflector(self) -> Reflector | None:
        """The reflection model's wrapper, or None when no reflection model is configured."""
        model = self.settings.model.reflection_model
        if model is None or self.client is None:
            return None
        mem = self.settings.memory
        return Reflector(
            self.client,
            model,
            self.embedder,
            merge_threshold=mem.merge_threshold,
            cap=mem.guideline_cap,
            batch_size=mem.distill_batch_size,
            batch_chars=mem.distill_batch_chars,
            concurrency=mem.distill_concurrency,
        )

    def state(self, name: str) -> MemoryState:
        """A judge's memory as of its latest commit; UnknownJudgeError if there is no such judge."""
        if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidInputError("judge", name, "the name of a judge (call list_judges to see them)")
        return self.ledger.state(name)

    def state_at(self, name: str, version: int) -> MemoryState:
        """A judge's memory as it was at an older version; PurgedContentError if purged items were in it."""
        self.state(name)
        if isinstance(version, bool) or not isinstance(version, int):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidInputError("version", version, "a memory version (an integer; see judge_history)")
        state = self.ledger.state_at(name, version)
        if state.missing:
            raise PurgedContentError(name, version, sorted(f"{k} {i}" for k, i in state.missing))
        return state

    def spec_and_version(self, name: str) -> tuple[JudgeSpec, int]:
        """A judge's spec and current memory version; UnknownJudgeError if absent."""
        state = self.state(name)
        return JudgeSpec.model_validate_json(state.spec_json), state.version

    def create_judge(self, spec: JudgeSpec, *, who: str | None = None) -> Judge:
        """Create a judge; the same spec again returns the existing judge, a different one is refused."""
        spec = spec.model_copy().validated()
        spec_json = spec.model_dump_json()
        if self.ledger.create(spec.name, spec_json, who=who) is None:
            stored = json.loads(self.state(spec.name).spec_json)
            wanted = json.loads(spec_json)
            differing = [k for k in wanted if stored.get(k) != wanted[k]]
            if differing:
                raise JudgeExistsError(spec.name, differing)
        return self.get_judge(spec.name)

    def seed_judge(self, spec: JudgeSpec) -> bool:
        """Create a shipped judge unless its name was ever used in this store; True if it was made now.

        Shipped judges are made once per store: one an operator deleted stays deleted across restarts.
        """
        spec = spec.model_copy().validated()
        return (
            self.ledger.create(spec.name, spec.model_dump_json(), who="config", only_if_new_name=True)
            is not None
        )

    def get_judge(self, name: str) -> Judge:
        """One judge with the state of its memory."""
        return self._judge_of(self.state(name))

    def _judge_of(self, state: MemoryState) -> Judge:
        spec = JudgeSpec.model_validate_json(state.spec_json)
        return Judge(
            **spec.model_dump(),
            memory_version=state.version,
            feedback_count=len(state.feedback),
            guideline_count=len(state.guidelines),
            pending_count=len(state.pending),
            effective_model=self.model_for(spec),
            created_at=state.created_at,
        )

    def list_judges(self) -> JudgeList:
        """Every judge with its memory version and counts."""
        judges: list[Judge] = []
        for name in self.ledger.names():
            try:
                judges.append(self.get_judge(name))
            except UnknownJudgeError:
                continue  # deleted by another process since the names were read
        return JudgeList(judges=judges)

    def delete_judge(self, name: str, *, who: str | None = None) -> DeleteJudgeResult:
        """Delete a judge and all of its memory."""
        self.state(name)
        _, state = self.ledger.delete(name, who=who)
        self._snapshots.pop(name, None)
        self.ledger.freshness.settle()  # no replica scores with the deleted memory once this returns
        return DeleteJudgeResult(
            judge=name,
            deleted=True,
            feedback_deleted=len(state.feedback),
            guidelines_deleted=len(state.guidelines),
        )

    # --- reading memory -----------------------------------------------------------------------------------

    def nearest(self, state: MemoryState, vector: Vector, k: int, exclude: set[str]) -> list[Neighbour]:
        """The judge's k feedback items most similar to the vector, searched in its cached vector snapshot."""
        if k <= 0:
            return []
        # Keyed by generation and commit number: every commit changes it, and a re-made judge has a new one.
        key = (state.gen, state.seq)
        cached = self._snapshots.get(state.judge)
        if cached is None or cached[0] != key:
            cached = (key, self._snapshot(state))
            if state is self.ledger.state(state.judge):
                self._snapshots[state.judge] = cached  # an older version's snapshot is used once, not kept
        snapshot = cached[1]
        best = snapshot.top(vector, k, exclude)
        rows = snapshot.rows
        if rows is None:
            rows = self.ledger.whole_rows(state, [item_id for item_id, _ in best])
        return [Neighbour(rows[i], similarity) for i, similarity in best if i in rows]

    def _snapshot(self, state: MemoryState) -> VectorSnapshot:
        rows = state.feedback_rows()
        matrix = np.stack([r.vector for r in rows]) if rows else np.zeros((0, self.store.dim), np.float32)
        whole = {r.item_id: r for r in rows} if state.whole else None
        return VectorSnapshot([r.item_id for r in rows], matrix, whole)

    def list_guidelines(self, name: str) -> GuidelineList:
        """A judge's semantic memory with each guideline's sources."""
        state = self.state(name)
        return GuidelineList(
            judge=name,
            judge_version=state.version,
            guidelines=[guideline_of(r) for r in state.guideline_rows()],
        )

    def list_feedback(self, name: str, limit: int = 50, offset: int = 0) -> FeedbackPage:
        """A page of a judge's episodic memory, oldest first."""
        if not 1 <= limit <= 500:
            raise InvalidInputError("limit", limit, "an integer from 1 to 500")
        if offset < 0:
            raise InvalidInputError("offset", offset, "an integer of at least 0")
        state = self.state(name)
        chosen = [r.item_id for r in state.feedback_rows()[offset : offset + limit]]
        rows = self.ledger.whole_rows(state, chosen)
        return FeedbackPage(
            judge=name,
            judge_version=state.version,
            total=len(state.feedback),
            feedback=[feedback_of(rows[i], pending=i in state.pending) for i in chosen if i in rows],
        )

    def judge_document(self, name: str) -> str:
        """The judge as its model sees it: spec, then instructions with the guidelines appended."""
        state = self.state(name)
        spec = JudgeSpec.model_validate_json(state.spec_json)
        header = {
            "name": spec.name,
            "feedback_type": spec.feedback_type,
            "choices": spec.choices,
            "min_value": spec.min_value,
            "max_value": spec.max_value,
            "model": self.model_for(spec),
            "retrieval_k": self.k_for(spec),
            "memory_version": state.version,
        }
        shown = {k: v for k, v in header.items() if v is not None}
        return (
            "\n".join(f"{k}: {v}" for k, v in shown.items())
            + "\n\n"
            + instructions_with_guidelines(spec, [r.text for r in state.guideline_rows()])
        )

    # --- scoring ------------------------------------------------------------------------------------------

    def check_text(self, field: str, value: Any, *, required: bool = True) -> None:
        """Refuse judged text that is missing, of the wrong type, empty or over the size limit."""
        if value is None and not required:
            return
        if not isinstance(value, (str, dict)):
            raise InvalidInputError(field, value, "a string or a JSON object")
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if not text.strip() or value == {}:
            raise InvalidInputError(field, value, "non-empty text or a non-empty JSON object")
        limit = self.settings.memory.max_field_chars
        if len(text) > limit:
            raise InvalidInputError(field, value, f"at most {limit} characters (memory.max_field_chars)")

    def score(
        self,
        name: str,
        inputs: JudgedText,
        outputs: JudgedText,
        expectations: JudgedText | None = None,
        *,
        exclude_ids: Iterable[str] = (),
        use_memory: bool = True,
        version: int | None = None,
    ) -> ScoreResult:
        """Judge one response with the judge's guidelines and its most similar past feedback.

        With `version`, the memory as it was at that memory version (refused where purged content was in it).
        """
        started = time.perf_counter()
        self.check_text("inputs", inputs)
        self.check_text("outputs", outputs)
        self.check_text("expectations", expectations, required=False)
        state = self.state(name) if version is None else self.state_at(name, version)
        spec, version = JudgeSpec.model_validate_json(state.spec_json), state.version
        excluded = set(exclude_ids)
        guidelines: list[MemoryRow] = []
        neighbours: list[Neighbour] = []
        if use_memory:
            # Leave-one-out: a guideline distilled from an excluded item would leak its verdict.
            guidelines = [g for g in state.guideline_rows() if not excluded & set(g.sources)]
            text = text_for_embedding(inputs, outputs, self.settings.embedding.embed_fields)
            vector = self.embedder.embed([text])[0]
            neighbours = self.nearest(state, vector, self.k_for(spec), excluded)
        model = self.model_for(spec)
        if model == MEMORY_MODEL:
            verdict = memory_verdict(spec, neighbours, self.settings.memory.vote_margin)
            return ScoreResult(
                rationale=verdict.rationale,
                value=verdict.value,
                judge=name,
                judge_version=version,
                guidelines_used=[],
                examples_used=[n.row.item_id for n in neighbours],
                model=MEMORY_MODEL,
                latency_ms=(time.perf_counter() - started) * 1000,
                confidence=verdict.confidence,
            )
        if self.client is None:
            raise MemAlignError(f"Judge {name!r} uses model {model!r}, but no model client is configured.")
        messages = score_messages(
            spec,
            inputs=inputs,
            outputs=outputs,
            expectations=expectations,
            guidelines=[g.text for g in guidelines],
            examples=[example_of(n.row) for n in neighbours],
        )

        def check(data: dict[str, Any]) -> None:
            spec.check_value(data.get("value"))

        completion = self.client.complete_json(
            model=model,
            messages=messages,
            schema_name=SCORE_SCHEMA_NAME,
            schema=score_schema(spec),
            check=check,
        )
        return ScoreResult(
            rationale=str(completion.data.get("rationale", "")),
            value=spec.check_value(completion.data["value"]),
            judge=name,
            judge_version=version,
            guidelines_used=[g.item_id for g in guidelines],
            examples_used=[n.row.item_id for n in neighbours],
            model=completion.model or model,
            latency_ms=(time.perf_counter() - started) * 1000,
            cost_usd=completion.cost_usd,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        )
