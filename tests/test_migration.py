"""A store written by 0.1 (judges and memory tables, rows edited in place) opens in 0.2 with nothing lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import lancedb  # pyright: ignore[reportMissingTypeStubs]  # writes the 0.1 layout, as 0.1 did
import pyarrow as pa

from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.seed_scenario import ALIGNMENT, JUDGE
from store_worker import open_worker_engine

SPEC = {
    "name": JUDGE,
    "instructions": "Is {{ outputs }} a helpful answer to {{ inputs }}?",
    "feedback_type": "bool",
    "choices": None,
    "min_value": None,
    "max_value": None,
    "model": None,
    "retrieval_k": None,
}


def _write_0_1_store(uri: Path) -> None:
    embedder = HashingEmbedder()
    db = lancedb.connect(str(uri))
    dim = embedder.dim
    meta = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])
    db.create_table(
        "store_meta",
        pa.Table.from_pylist(
            [{"key": "embedding_model", "value": embedder.name}, {"key": "dim", "value": str(dim)}],
            schema=meta,
        ),
    )
    judges = pa.schema(
        [
            pa.field("name", pa.string(), nullable=False),
            pa.field("spec", pa.string()),
            pa.field("memory_version", pa.int64()),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    now = datetime.now(UTC)
    db.create_table(
        "judges",
        pa.Table.from_pylist(
            [{"name": JUDGE, "spec": json.dumps(SPEC), "memory_version": 7, "created_at": now}], schema=judges
        ),
    )
    memory = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("judge", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("text", pa.string()),
            pa.field("body", pa.string()),
            pa.field("sources", pa.list_(pa.string())),
            pa.field("content_hash", pa.string()),
            pa.field("pending", pa.bool_()),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    rows = [
        {
            "id": f"{JUDGE}/feedback/{item['id']}",
            "judge": JUDGE,
            "kind": "feedback",
            "item_id": item["id"],
            "vector": embedder.embed([item["inputs"]])[0],
            "text": item["inputs"],
            "body": json.dumps({k: item.get(k) for k in ("inputs", "outputs", "value", "rationale")}),
            "sources": [],
            "content_hash": f"h{n}",
            "pending": n == 0,
            "created_at": now,
        }
        for n, item in enumerate(ALIGNMENT)
    ]
    rows.append(
        {
            "id": f"{JUDGE}/guideline/g-1",
            "judge": JUDGE,
            "kind": "guideline",
            "item_id": "g-1",
            "vector": embedder.embed(["Be polite."])[0],
            "text": "Be polite.",
            "body": "{}",
            "sources": ["returns", "track-order"],
            "content_hash": "",
            "pending": False,
            "created_at": now,
        }
    )
    db.create_table("memory", pa.Table.from_pylist(rows, schema=memory))


def test_a_0_1_store_opens_with_every_item_guideline_pending_flag_and_version(tmp_path: Path) -> None:
    _write_0_1_store(tmp_path / "lancedb")
    engine = open_worker_engine(str(tmp_path))
    state = engine.state(JUDGE)
    assert set(state.feedback) == {i["id"] for i in ALIGNMENT}
    assert state.pending == {ALIGNMENT[0]["id"]}
    assert [g.text for g in engine.list_guidelines(JUDGE).guidelines] == ["Be polite."]
    assert state.version == 7  # the version clients were told goes on from where 0.1 left it
    assert engine.remove_feedback(JUDGE, ["returns"]).judge_version == 8
    # The old tables are gone (their rows held what a purge must be able to erase), and a reopen is a no-op.
    assert not {"judges", "memory"} & set(lancedb.connect(str(tmp_path / "lancedb")).list_tables().tables)
    assert set(open_worker_engine(str(tmp_path)).state(JUDGE).feedback) == {i["id"] for i in ALIGNMENT} - {
        "returns"
    }
