"""The judge service: judges, scoring, and reading memory. Knows nothing of MCP.

It ties together the store (LanceDB), the embedder, the model client and the reflector. Adding and removing
feedback (alignment) lives in alignment.py on top of this service. Every result that depends on memory carries
the judge's memory version. Bad input raises InvalidInputError before anything is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from memalign_mcp.distill import Reflector
from memalign_mcp.embeddings import Embedder, text_for_embedding
from memalign_mcp.errors import (
    InvalidInputError,
    JudgeExistsError,
    MemAlignError,
    PurgedContentError,
    UnknownJudgeError,
)
from memalign_mcp.limits import ModelGate, check_spec_limits
from memalign_mcp.llm import ModelClient
from memalign_mcp.models import (
    MEMORY_MODEL,
    NO_SURROGATES,
    DeleteJudgeResult,
    FeedbackPage,
    FeedbackRecord,
    Guideline,
    GuidelineList,
    Judge,
    JudgedText,
    JudgeList,
    JudgeSpec,
    ListedGuideline,
    ScoreResult,
    has_lone_surrogate,
)
from memalign_mcp.prompts import (
    SCORE_SCHEMA_NAME,
    ExampleView,
    instructions_with_guidelines,
    score_messages,
    score_schema,
)
from memalign_mcp.records import MemoryRow, Neighbour, Vector
from memalign_mcp.retrieval import Retrieval
from memalign_mcp.settings import Settings
from memalign_mcp.store import MemoryStore
from memalign_mcp.transaction import Ledger, MemoryState
from memalign_mcp.vote import memory_verdict


def guideline_of(row: MemoryRow) -> Guideline:
    """The public view of a stored guideline row."""
    return Guideline(
        id=row.item_id, text=row.text, source_feedback_ids=sorted(row.sources), status=row.status
    )


def listed_guideline(row: MemoryRow) -> ListedGuideline:
    """A stored guideline as list_guidelines shows it, with its provenance."""
    return ListedGuideline(**guideline_of(row).model_dump(), provenance=row.body.get("provenance"))


def active_guidelines(state: MemoryState) -> list[MemoryRow]:
    """The guidelines used in scoring, oldest first: proposed ones wait for an operator's approval."""
    return [g for g in state.guideline_rows() if g.status == "active"]


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
        limits = settings.limits
        # Every model call of this process goes through one gate: scoring, distillation and re-derivation.
        self.gated_client: ModelClient | None = (
            ModelGate(client, limits.model_concurrency, limits.model_wait_s) if client is not None else None
        )
        self.retrieval = Retrieval(settings.memory, store, self.ledger)

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
        if model is None or self.gated_client is None:
            return None
        mem = self.settings.memory
        return Reflector(
            self.gated_client,
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
        check_spec_limits(spec, self.settings.limits)
        spec_json = spec.model_dump_json()
        names = self.ledger.names()
        cap = self.settings.limits.max_judges
        if spec.name not in names and len(names) >= cap:
            raise InvalidInputError(
                "name",
                spec.name,
                f"a store of at most {cap} judges (limits.max_judges), which this one has; delete_judge one first",
            )
        if self.ledger.create(spec.name, spec_json, who=who) is None:
            # Read through the model, so a field added since the judge was made compares as its default.
            stored = JudgeSpec.model_validate_json(self.state(spec.name).spec_json).model_dump(mode="json")
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
        self.retrieval.forget(name)
        self.ledger.freshness.settle()  # no replica scores with the deleted memory once this returns
        return DeleteJudgeResult(
            judge=name,
            deleted=True,
            feedback_deleted=len(state.feedback),
            guidelines_deleted=len(state.guidelines),
        )

    def forget_cached_text(self, name: str) -> None:
        """Drop every cache that may hold a judge's removed text, so a purge leaves no copy in this process.

        The judge's vector snapshot keeps whole rows and the ledger its latest state; the embedder may cache
        the words of every text it embedded. Each fills again from what is left on the next read.
        """
        self.retrieval.forget(name)
        self.ledger.forget_cached(name)
        forget: Callable[[], None] | None = getattr(self.embedder, "forget_cached_text", None)
        if forget is not None:
            forget()

    # --- reading memory -----------------------------------------------------------------------------------

    def nearest(self, state: MemoryState, vector: Vector, k: int, exclude: set[str]) -> list[Neighbour]:
        """The judge's k live feedback items most similar to the vector, most similar first (retrieval.py)."""
        return self.retrieval.nearest(state, vector, k, exclude)

    def list_guidelines(self, name: str) -> GuidelineList:
        """A judge's semantic memory with each guideline's sources."""
        state = self.state(name)
        return GuidelineList(
            judge=name,
            judge_version=state.version,
            guidelines=[listed_guideline(r) for r in state.guideline_rows()],
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
            "review_guidelines": spec.review_guidelines or None,
            "memory_version": state.version,
        }
        shown = {k: v for k, v in header.items() if v is not None}
        document = (
            "\n".join(f"{k}: {v}" for k, v in shown.items())
            + "\n\n"
            + instructions_with_guidelines(spec, [r.text for r in active_guidelines(state)])
        )
        proposed = [r for r in state.guideline_rows() if r.status == "proposed"]
        if proposed:
            # Shown for the operator who reviews them, apart and outside what the model is given.
            document += f"\n\nProposed Guidelines ({len(proposed)}), not used in scoring until approved:\n"
            document += "\n".join(f"- [{r.item_id}] {r.text}" for r in proposed)
        return document

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
        if has_lone_surrogate(text):
            raise InvalidInputError(field, value, NO_SURROGATES)
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
            guidelines = [g for g in active_guidelines(state) if not excluded & set(g.sources)]
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
        if self.gated_client is None:
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

        completion = self.gated_client.complete_json(
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
