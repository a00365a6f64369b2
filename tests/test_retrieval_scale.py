"""Retrieval at scale, at small sizes: the ANN path and the store path return only a judge's live rows.

The thresholds are set low through settings (`vector_index_min_rows`, `snapshot_budget_mb`, and the state's
whole-rows limit), so LanceDB's ANN index and the lean state of a large judge are exercised in `make test`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import EngineFactory
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.models import JudgeSpec
from memalign_mcp.records import MemoryRow

JUDGE = "big"
OTHER = "neighbour"
SPEC = JudgeSpec(name=JUDGE, instructions="Is {{ outputs }} a good answer to {{ inputs }}?")
TOPICS = ("refund", "delivery", "password", "invoice", "warranty", "opening hours", "discount", "parcel")
INDEX_MIN_ROWS = 300


def _item(n: int, prefix: str, text: str | None = None) -> dict[str, object]:
    return {
        "inputs": text or f"Question {n} about the {TOPICS[n % len(TOPICS)]} of order {n % 17} week {n % 7}",
        "outputs": f"Answer {n}",
        "value": n % 3 != 0,
        "rationale": f"Because of rule {n % 5}.",
        "id": f"{prefix}-{n}",
    }


def _open(engines: EngineFactory, *, budget_mb: int) -> MemAlignService:
    return engines.open(
        with_model=False,
        overrides={
            "memory.vector_index_min_rows": INDEX_MIN_ROWS,
            "memory.snapshot_budget_mb": budget_mb,
            "embedding.embed_fields": "inputs",
        },
    )


def _query(engine: MemAlignService, text: str) -> Any:
    return engine.embedder.embed([text])[0]


def _exact(engine: MemAlignService, vector: Any) -> dict[str, float]:
    """Exact cosine of the query to every live item of the judge (from its whole rows)."""
    state = engine.state(JUDGE)
    ids = sorted(state.feedback)
    rows = engine.ledger.whole_rows(state, ids)
    matrix = np.stack([rows[i].vector for i in ids]).astype(np.float64)
    cosine = matrix @ vector / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(vector))
    return dict(zip(ids, cosine.tolist(), strict=True))


@pytest.fixture
def crowded(engines: EngineFactory, monkeypatch: pytest.MonkeyPatch) -> MemAlignService:
    """A large (lean) judge with an ANN index, among rows that must never be returned for it.

    Near every query sit: another judge's rows with the same texts, superseded versions of replaced items,
    items removed without purge, and orphan rows of a write that died before its commit.
    """
    monkeypatch.setattr("memalign_mcp.transaction.ROWS_IN_MEMORY", 0)  # every judge is held lean
    engine = _open(engines, budget_mb=0)
    engine.create_judge(SPEC)
    engine.create_judge(SPEC.model_copy(update={"name": OTHER}))
    engine.add_feedback(JUDGE, [_item(n, "a") for n in range(400)])
    engine.add_feedback(OTHER, [_item(n, "b") for n in range(400)])
    # Superseded: the same ids with new texts; their old rows (old texts) stay in the table.
    engine.add_feedback(JUDGE, [_item(n, "a", f"Replaced text {n} about umbrellas") for n in range(10)])
    engine.remove_feedback(JUDGE, ["a-20", "a-21", "a-22"])

    def died(*_: object) -> bool:
        raise RuntimeError("killed between appending rows and claiming the commit")

    monkeypatch.setattr(engine.store.log, "claim", died)
    with pytest.raises(RuntimeError):
        engine.add_feedback(JUDGE, [_item(30, "orphan"), _item(31, "orphan")])
    monkeypatch.undo()
    monkeypatch.setattr("memalign_mcp.transaction.ROWS_IN_MEMORY", 0)
    assert engine.store.ensure_vector_index() is True
    assert engine.store.ensure_vector_index() is False  # idempotent: nothing new to index
    assert engine.store.has_vector_index()
    return engine


def test_ann_path_returns_only_the_judges_live_rows(crowded: MemAlignService) -> None:
    engine = crowded
    state = engine.state(JUDGE)
    assert not state.whole
    assert len(state.feedback) == 397
    dead_texts = [_item(n, "a")["inputs"] for n in (*range(10), 20, 21, 22, 30, 31)]
    for text in dead_texts:
        found = engine.nearest(state, _query(engine, str(text)), 5, set())
        assert len(found) == 5
        for n in found:
            assert n.row.judge == JUDGE
            assert n.row.item_id.startswith("a-")
            assert n.row.key == state.feedback[n.row.item_id].key  # the live version, never an old one
        assert not {"a-20", "a-21", "a-22"} & {n.row.item_id for n in found}
    # A replaced item is found by its new text, with its new content.
    top = engine.nearest(state, _query(engine, "Replaced text 3 about umbrellas"), 1, set())[0]
    assert (top.row.item_id, top.row.body["inputs"]) == ("a-3", "Replaced text 3 about umbrellas")


def test_ann_results_match_exact_search(crowded: MemAlignService) -> None:
    engine = crowded
    state = engine.state(JUDGE)
    found = 0
    texts = [str(_item(n, "q")["inputs"]) for n in range(400, 420)]
    for text in texts:
        vector = _query(engine, text)
        exact = _exact(engine, vector)
        fifth = sorted(exact.values(), reverse=True)[4]
        ours = engine.nearest(state, vector, 5, set())
        # Items tied at the fifth place are interchangeable: a hit is any item at least as near as it.
        found += sum(exact[n.row.item_id] >= fifth - 1e-6 for n in ours)
        for n in ours:
            assert n.similarity == pytest.approx(exact[n.row.item_id], abs=1e-4)
    assert found / (5 * len(texts)) >= 0.95


def test_memory_budget_chooses_the_path(engines: EngineFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    held = _open(engines, budget_mb=1)  # 300 items x 384 x 4 bytes = 0.44 MiB: fits
    held.create_judge(SPEC)
    held.add_feedback(JUDGE, [_item(n, "a") for n in range(300)])
    searched = _open(engines, budget_mb=0)
    asked: list[str] = []
    for engine in (held, searched):
        search = engine.store.search_feedback

        def spy(
            judge: str, *args: Any, _search: Any = search, **kwargs: Any
        ) -> list[tuple[MemoryRow, float]]:
            asked.append(judge)
            return _search(judge, *args, **kwargs)

        monkeypatch.setattr(engine.store, "search_feedback", spy)
    text = str(_item(7, "a")["inputs"])
    vector = _query(held, text)
    from_memory = held.nearest(held.state(JUDGE), vector, 5, set())
    assert asked == []  # the snapshot answered
    from_store = searched.nearest(searched.state(JUDGE), vector, 5, set())
    assert asked == [JUDGE]
    # The same neighbours (items tied in similarity may come in either order).
    assert from_memory[0].row.item_id == from_store[0].row.item_id == "a-7"
    assert [n.similarity for n in from_store] == pytest.approx([n.similarity for n in from_memory], abs=1e-5)
    assert searched.score(JUDGE, text, "Answer 7").examples_used[0] == "a-7"


@pytest.mark.parametrize("path", ["snapshot", "store-exact", "store-ann", "store-ann-purge"])
def test_a_removed_item_is_never_returned_after_remove_feedback(
    engines: EngineFactory, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    if path != "snapshot":
        monkeypatch.setattr("memalign_mcp.transaction.ROWS_IN_MEMORY", 0)
    engine = _open(engines, budget_mb=128 if path == "snapshot" else 0)
    engine.create_judge(SPEC)
    engine.add_feedback(JUDGE, [_item(n, "a") for n in range(INDEX_MIN_ROWS + 20)])
    if path.startswith("store-ann"):
        assert engine.store.ensure_vector_index()
    reader = _open(engines, budget_mb=128 if path == "snapshot" else 0)  # another process's view
    text = str(_item(42, "a")["inputs"])
    assert engine.score(JUDGE, text, "Answer 42").examples_used[0] == "a-42"
    assert reader.score(JUDGE, text, "Answer 42").examples_used[0] == "a-42"
    engine.remove_feedback(JUDGE, ["a-42"], purge=path.endswith("purge"))
    # A purge rebuilds the index from the live rows (no quantized copy of the erased vector is kept).
    assert engine.store.has_vector_index() == path.startswith("store-ann")
    for who in (engine, reader):
        used = who.score(JUDGE, text, "Answer 42").examples_used
        assert len(used) == 5
        assert "a-42" not in used


def test_a_judge_holding_most_of_the_table_filters_after_the_index_search(
    crowded: MemAlignService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The big judge holds just over half of the table's feedback rows, its neighbour just under: the first is
    # searched with the filter after the index search (cheap at 1M rows), the second with a prefilter. Either
    # way only the judge's own live rows come back.
    engine = crowded
    searches: list[tuple[str, bool]] = []
    original = engine.store.search_feedback

    def recorded(judge: str, gen: str, vector: Any, limit: int, *, ann: bool, prefilter: bool = True) -> Any:
        searches.append((judge, prefilter))
        return original(judge, gen, vector, limit, ann=ann, prefilter=prefilter)

    monkeypatch.setattr(engine.store, "search_feedback", recorded)
    for judge, prefix in ((JUDGE, "a-"), (OTHER, "b-")):
        state = engine.state(judge)
        for n in range(40, 60):
            found = engine.nearest(state, _query(engine, str(_item(n, "q")["inputs"])), 5, set())
            assert len(found) == 5
            assert all(x.row.judge == judge and x.row.item_id.startswith(prefix) for x in found)
            assert all(x.row.key == state.feedback[x.row.item_id].key for x in found)
    assert {p for j, p in searches if j == JUDGE} == {False}  # never needed the prefiltered search
    assert {p for j, p in searches if j == OTHER} == {True}
