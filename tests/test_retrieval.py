"""Retrieval from a judge's vector snapshot: same neighbours as LanceDB's search, never stale, purge-safe."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import EngineFactory
from memalign_mcp.models import JudgeSpec

JUDGE = "retrieval"
SPEC = JudgeSpec(name=JUDGE, instructions="Is {{ outputs }} a good answer to {{ inputs }}?")


def _items(start: int, count: int, prefix: str = "n") -> list[dict[str, object]]:
    topics = ("refund", "delivery", "password", "invoice", "warranty", "opening hours", "discount")
    return [
        {
            "inputs": f"Question {n} about the {topics[n % len(topics)]} and item {n % 13}",
            "outputs": f"Answer {n}",
            "value": n % 3 != 0,
            "rationale": f"Because of rule {n % 5}.",
            "id": f"{prefix}-{n}",
        }
        for n in range(start, start + count)
    ]


@pytest.mark.parametrize("held", ["whole", "vectors", "ids"])
def test_search_finds_the_exact_nearest_items_whatever_the_state_holds(
    engines: EngineFactory, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    # whole rows: an in-memory snapshot, no read; vectors only: the snapshot, then the k rows read by key;
    # ids only: LanceDB's exact search (no index here), which returns the rows.
    monkeypatch.setattr("memalign_mcp.transaction.ROWS_IN_MEMORY", 20_000 if held == "whole" else 0)
    engine = engines.open(with_model=False)
    if held == "ids":
        engine.store.vector_index_min_rows = 1
    searches: list[str] = []
    search = engine.store.search_feedback

    def counted(judge: str, *args: Any, **kwargs: Any) -> Any:
        searches.append(judge)
        return search(judge, *args, **kwargs)

    monkeypatch.setattr(engine.store, "search_feedback", counted)
    engine.create_judge(SPEC)
    engine.add_feedback(JUDGE, _items(0, 300))
    engine.remove_feedback(JUDGE, ["n-11"])
    state = engine.state(JUDGE)
    expected_state = {"whole": (True, True), "vectors": (False, True), "ids": (False, False)}[held]
    assert (state.whole, state.vectors) == expected_state
    ids = sorted(state.feedback)
    whole = engine.ledger.whole_rows(state, ids)  # a lean state (a large judge) holds no vectors
    matrix = np.stack([whole[i].vector for i in ids]).astype(np.float64)
    rng = np.random.default_rng(3)
    for exclude in (set[str](), {"n-7", "n-8"}):
        for _ in range(5):
            query = rng.standard_normal(engine.embedder.dim).astype(np.float32)
            cosine = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
            expected = [ids[i] for i in np.argsort(-cosine) if ids[i] not in exclude][:5]
            ours = engine.nearest(state, query, 5, exclude)
            assert [n.row.item_id for n in ours] == expected
            np.testing.assert_allclose(
                [n.similarity for n in ours], [cosine[ids.index(i)] for i in expected], atol=1e-5
            )
            # The rows come whole, with the rationale the item was stored with, from memory or the store.
            assert [n.row.body["rationale"] for n in ours] == [
                f"Because of rule {int(i.split('-')[1]) % 5}." for i in expected
            ]
    assert bool(searches) == (held == "ids")  # a state with vectors is searched in memory


@pytest.mark.parametrize("held", ["whole", "vectors", "ids"])
def test_feedback_changed_by_another_process_is_seen_by_the_next_score(
    engines: EngineFactory, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    # ids: searched in LanceDB through a view pinned at one table version (search_view.py), which must move on
    # when the judge's state does, and survive the versions it was pinned at being pruned by a purge elsewhere.
    monkeypatch.setattr("memalign_mcp.transaction.ROWS_IN_MEMORY", 20_000 if held == "whole" else 0)
    first = engines.open(with_model=False)
    if held == "ids":
        first.store.vector_index_min_rows = 1
    first.create_judge(SPEC)
    first.add_feedback(JUDGE, _items(0, 50))
    question, answer = "Can I change the colour of my umbrella order?", "Yes, until it ships."
    assert "umbrella" not in first.score(JUDGE, question, answer).examples_used
    held_state = first.state(JUDGE)
    assert (held_state.whole, held_state.vectors) == (held == "whole", held != "ids")

    other = engines.open(with_model=False)  # same store, as a second server process would open it
    other.add_feedback(
        JUDGE,
        [{"inputs": question, "outputs": answer, "value": False, "rationale": "Wrong.", "id": "umbrella"}],
    )
    assert first.score(JUDGE, question, answer).examples_used[0] == "umbrella"

    other.remove_feedback(JUDGE, ["umbrella"])
    assert "umbrella" not in first.score(JUDGE, question, answer).examples_used

    other.add_feedback(
        JUDGE,
        [{"inputs": question, "outputs": answer, "value": True, "rationale": "Right.", "id": "umbrella-2"}],
    )
    assert first.score(JUDGE, question, answer).examples_used[0] == "umbrella-2"
    other.remove_feedback(JUDGE, ["umbrella-2"], purge=True)  # every older table version is pruned
    after_purge = first.score(JUDGE, question, answer).examples_used
    assert "umbrella-2" not in after_purge
    assert len(after_purge) == 5


def _grep(root: Path, needle: str) -> list[str]:
    found = subprocess.run(["grep", "-rl", needle, str(root)], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_purge_leaves_a_removed_item_only_as_a_history_tombstone(engines: EngineFactory) -> None:
    engine = engines.open(with_model=False)
    engine.create_judge(SPEC)
    secret = "ZQX-7781-CUSTOMER-NAME"
    engine.add_feedback(JUDGE, _items(0, 1000))
    item = _items(0, 1, prefix="leak")[0] | {"outputs": f"Your name is {secret}."}
    engine.add_feedback(JUDGE, [item])
    engine.add_feedback(JUDGE, _items(1000, 1000))
    engine.add_feedback(JUDGE, _items(2000, 1000))  # enough new rows that the indexes are rebuilt
    assert _grep(engines.data_dir, secret), (
        "the text must be on disk before the purge, or this proves nothing"
    )
    assert any("memory_v2" in path for path in _grep(engines.data_dir, "leak-0"))
    engine.remove_feedback(JUDGE, ["leak-0"], purge=True)
    assert _grep(engines.data_dir, secret) == []
    # The id stays in the commit log only: history keeps a tombstone (id, when, who) of what was purged.
    assert all("commits.lance" in path for path in _grep(engines.data_dir, "leak-0"))
    assert engine.judge_history(JUDGE).versions[0].summary.purged == ["leak-0"]
    assert engine.score(JUDGE, "Question 5 about the discount and item 5", "Answer 5").examples_used


def test_a_search_survives_another_process_pruning_the_table_version_it_read(
    engines: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The judge's state does not change, so nothing tells the search view to move on, but a purge of another
    # judge's item elsewhere removed every older table version: the search reads again at the latest one.
    monkeypatch.setattr("memalign_mcp.transaction.ROWS_IN_MEMORY", 0)
    first = engines.open(with_model=False)
    first.store.vector_index_min_rows = 1
    first.create_judge(SPEC)
    first.create_judge(SPEC.model_copy(update={"name": "bystander"}))
    first.add_feedback(JUDGE, _items(0, 50))
    first.add_feedback("bystander", _items(0, 3, prefix="b"))
    question, answer = "Question 5 about the discount and item 5", "Answer 5"
    before = first.score(JUDGE, question, answer).examples_used
    assert len(before) == 5

    other = engines.open(with_model=False)
    other.remove_feedback("bystander", ["b-1"], purge=True)
    assert first.score(JUDGE, question, answer).examples_used == before
