"""Retrieval from a judge's vector snapshot: same neighbours as LanceDB's search, never stale, purge-safe."""

from __future__ import annotations

import subprocess
from pathlib import Path

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


@pytest.mark.parametrize("rows_in_memory", [20_000, 0], ids=["rows-held", "rows-read-from-store"])
def test_snapshot_search_finds_what_lancedb_finds(
    engines: EngineFactory, monkeypatch: pytest.MonkeyPatch, rows_in_memory: int
) -> None:
    monkeypatch.setattr("memalign_mcp.judge._ROWS_IN_MEMORY", rows_in_memory)
    engine = engines.open(with_model=False)
    engine.create_judge(SPEC)
    engine.add_feedback(JUDGE, _items(0, 300))
    row = engine.store.judge_row(JUDGE)
    assert row is not None
    rng = np.random.default_rng(3)
    for exclude in (set[str](), {"n-7", "n-8"}):
        for _ in range(5):
            query = rng.standard_normal(engine.embedder.dim).astype(np.float32)
            ours = engine.nearest(row, query, 5, exclude)
            theirs = engine.store.nearest(JUDGE, query, 5, exclude=exclude)
            assert [n.row.item_id for n in ours] == [n.row.item_id for n in theirs]
            np.testing.assert_allclose(
                [n.similarity for n in ours], [n.similarity for n in theirs], atol=1e-5
            )
            assert not exclude & {n.row.item_id for n in ours}
            assert [n.row.body["rationale"] for n in ours] == [n.row.body["rationale"] for n in theirs]


def test_feedback_changed_by_another_process_is_seen_by_the_next_score(engines: EngineFactory) -> None:
    first = engines.open(with_model=False)
    first.create_judge(SPEC)
    first.add_feedback(JUDGE, _items(0, 50))
    question, answer = "Can I change the colour of my umbrella order?", "Yes, until it ships."
    assert "umbrella" not in first.score(JUDGE, question, answer).examples_used

    other = engines.open(with_model=False)  # same store, as a second server process would open it
    other.add_feedback(
        JUDGE,
        [{"inputs": question, "outputs": answer, "value": False, "rationale": "Wrong.", "id": "umbrella"}],
    )
    assert first.score(JUDGE, question, answer).examples_used[0] == "umbrella"

    other.remove_feedback(JUDGE, ["umbrella"])
    assert "umbrella" not in first.score(JUDGE, question, answer).examples_used


def _grep(root: Path, needle: str) -> list[str]:
    found = subprocess.run(["grep", "-rl", needle, str(root)], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_purge_leaves_a_removed_id_in_no_index_file(engines: EngineFactory) -> None:
    engine = engines.open(with_model=False)
    engine.create_judge(SPEC)
    secret = "ZQX-7781-CUSTOMER-NAME"
    engine.add_feedback(JUDGE, _items(0, 1000))
    engine.add_feedback(JUDGE, [_items(0, 1, prefix=secret)[0]])
    engine.add_feedback(JUDGE, _items(1000, 1000))
    engine.add_feedback(JUDGE, _items(2000, 1000))  # enough new rows that the indexes are rebuilt
    assert any("_indices" in path for path in _grep(engines.data_dir, secret)), (
        "the id must be inside an index file before the purge, or this test proves nothing"
    )
    engine.remove_feedback(JUDGE, [f"{secret}-0"], purge=True)
    assert _grep(engines.data_dir, secret) == []
    assert engine.score(JUDGE, "Question 5 about the discount and item 5", "Answer 5").examples_used
