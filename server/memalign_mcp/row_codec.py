"""Memory rows to and from Arrow: the memory table's schema and the conversion both ways.

Pure pyarrow and numpy, no database: store.py reads and writes the table and uses this to turn its Arrow
tables into `MemoryRow`s. Two readings exist: whole rows (content included), and lean rows for the replayed
state of a large judge, which keep only what a transaction checks (ids, hash, pending, time) and no vector, so
a judge of a million items costs a few hundred bytes an item in memory (see BENCHMARKS.md, retrieval at scale).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pyarrow as pa

from memalign_mcp.errors import EmbeddingMismatchError
from memalign_mcp.records import Kind, MemoryRow

# What a lean feedback row is read with: no vector (searches go to the store), no text or body.
LEAN_COLUMNS = ["id", "item_id", "txn", "gen", "pending", "created_at", "content_hash"]
NO_VECTOR = np.zeros(0, dtype=np.float32)
NO_VECTOR.setflags(write=False)
# One empty body shared by every lean row (a dict each would be 64 bytes a row); rows are never edited in place.
_NO_BODY: dict[str, Any] = {}


def memory_schema(dim: int) -> Any:  # pyarrow ships no type stubs
    """The memory table's columns (see store.py for what each row is)."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("judge", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # feedback or guideline
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("gen", pa.string(), nullable=False),
            pa.field("txn", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("text", pa.string()),
            pa.field("body", pa.string()),
            pa.field("sources", pa.list_(pa.string())),
            pa.field("content_hash", pa.string()),
            pa.field("pending", pa.bool_()),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def rows_of(table: Any, dim: int) -> list[MemoryRow]:
    """Whole rows from an Arrow table; the vectors as one matrix (row views), not 384 Python floats each."""
    flat = table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    records = table.drop_columns(["vector"]).to_pylist()
    return [from_record(r | {"vector": vectors[i]}) for i, r in enumerate(records)]


# What a search returns of each row: what tells whether it is live (its key: txn, kind, item id) and what a
# neighbour is used for (its body: verdict, rationale, the example's texts). On object storage each column
# read is a request of its own (BENCHMARKS.md, object storage at scale), so nothing else is read.
SEARCH_COLUMNS = ["judge", "kind", "item_id", "gen", "txn", "body"]


def searched_rows(table: Any) -> list[MemoryRow]:
    """Rows from a search's Arrow table of SEARCH_COLUMNS: key and body, no vector, text, hash or provenance."""
    return [
        MemoryRow(
            judge=r["judge"],
            kind=cast(Kind, r["kind"]),
            item_id=r["item_id"],
            vector=NO_VECTOR,
            text="",
            body=json.loads(r["body"] or "{}"),
            gen=r["gen"],
            txn=r["txn"],
        )
        for r in table.to_pylist()
    ]


def lean_feedback_rows(table: Any, judge: str, dim: int | None = None) -> list[MemoryRow]:
    """Feedback rows without text or body, from a table of LEAN_COLUMNS; with their vectors when `dim` is given
    (the table then has a vector column too), else without.

    Strings repeated across rows (judge, generation, transaction) are shared, not one copy per row, and item
    ids are interned, shared with the commits that list them (records.py).
    """
    columns = {name: table.column(name).to_pylist() for name in LEAN_COLUMNS}
    vectors = None
    if dim is not None:
        flat = table.column("vector").flatten().to_numpy(zero_copy_only=False)
        vectors = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    judge = sys.intern(judge)
    shared: dict[str, str] = {}
    out: list[MemoryRow] = []
    for i, item_id in enumerate(columns["item_id"]):
        out.append(
            MemoryRow(
                judge=judge,
                kind="feedback",
                item_id=sys.intern(item_id),
                vector=NO_VECTOR if vectors is None else vectors[i],
                text="",
                body=_NO_BODY,
                sources=(),
                content_hash=columns["content_hash"][i] or "",
                pending=bool(columns["pending"][i]),
                created_at=columns["created_at"][i] or datetime.now(UTC),
                gen=shared.setdefault(columns["gen"][i], columns["gen"][i]),
                txn=shared.setdefault(columns["txn"][i], columns["txn"][i]),
            )
        )
    return out


def lean(row: MemoryRow, *, keep_vector: bool = False) -> MemoryRow:
    """A feedback row as a lean state holds it (no text or body, a vector only if kept); guidelines stay whole."""
    if row.kind != "feedback":
        return row
    return replace(row, vector=row.vector if keep_vector else NO_VECTOR, text="", body=_NO_BODY)


def to_record(row: MemoryRow, dim: int) -> dict[str, Any]:
    """The table record of one row; EmbeddingMismatchError for a vector of another dimension."""
    vector = np.asarray(row.vector, dtype=np.float32)
    if vector.shape != (dim,):
        raise EmbeddingMismatchError(
            f"A vector of shape {vector.shape} was given to a store of dimension {dim}."
        )
    return {
        "id": row.key,
        "judge": row.judge,
        "kind": row.kind,
        "item_id": row.item_id,
        "gen": row.gen,
        "txn": row.txn,
        "vector": vector,
        "text": row.text,
        "body": json.dumps(row.body, ensure_ascii=False, sort_keys=True),
        "sources": list(row.sources),
        "content_hash": row.content_hash,
        "pending": row.pending,
        "created_at": row.created_at,
    }


def from_record(rec: dict[str, Any]) -> MemoryRow:
    """A row from one table record (a dict of its columns)."""
    return MemoryRow(
        judge=rec["judge"],
        kind=cast(Kind, rec["kind"]),
        item_id=rec["item_id"],
        vector=np.asarray(rec["vector"], dtype=np.float32),
        text=rec.get("text") or "",
        body=json.loads(rec.get("body") or "{}"),
        sources=tuple(rec.get("sources") or ()),
        content_hash=rec.get("content_hash") or "",
        pending=bool(rec["pending"]),
        created_at=rec["created_at"] or datetime.now(UTC),
        gen=rec["gen"],
        txn=rec["txn"],
    )
