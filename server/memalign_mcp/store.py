"""The LanceDB store: one table for every judge's memory, one small table for judge specs.

This is the only module that imports lancedb. It owns the on-disk layout:
- `memory`: one row per feedback item (episodic memory) and per guideline (semantic memory), each with its vector
  and provenance (judge, kind, source feedback ids, who, when). Primary key `id` = "judge/kind/item_id", declared
  unenforced-primary-key at creation so that concurrent upserts of one id cannot make duplicate rows.
- `judges`: one row per judge (spec as JSON, memory version, created_at).
- `store_meta`: which embedding model and dimension built the vectors; a store refuses to mix models.

Scalar indexes (a B-tree on `id`, a bitmap on `judge`) keep reads of one judge or of rows by key from scanning
every judge's memory; rows written since an index was built are scanned, so it is rebuilt when they pile up.

It knows nothing of judging, prompts or models, and never embeds text itself: vectors come in ready-made.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import lancedb  # pyright: ignore[reportMissingTypeStubs]
import numpy as np
import pyarrow as pa
from lancedb.index import Bitmap, BTree  # pyright: ignore[reportMissingTypeStubs]

from memalign_mcp.errors import EmbeddingMismatchError, MemAlignError
from memalign_mcp.records import JudgeRow, Kind, Matrix, MemoryRow, Neighbour, Vector

_MEMORY = "memory"
_JUDGES = "judges"
_META = "store_meta"
log = logging.getLogger(__name__)
_COMMIT_RETRIES = 20
# Rows outside the scalar indexes that a filter may scan before the indexes are rebuilt.
_UNINDEXED_ROWS = 2_000
# Every write adds a fragment and a version: compact and prune after this many writes of this process.
_TIDY_EVERY = 100
# Versions younger than this are kept, so readers in other processes never lose the version they read.
_KEEP_VERSIONS = timedelta(hours=1)


def _q(text: str) -> str:
    """Quote a string as an SQL literal for a LanceDB filter."""
    return "'" + text.replace("'", "''") + "'"


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(_q(v) for v in values)})"


def _keys(judge: str, kind: str, item_ids: Iterable[str]) -> str:
    """A filter on the primary key (indexed) for rows of one judge and kind with these item ids."""
    return _in("id", (f"{judge}/{kind}/{i}" for i in item_ids))


class MemoryStore:
    """A LanceDB database holding every judge's memory; safe to share between threads of one process."""

    def __init__(self, uri: str, *, embedding_name: str, embedding_dim: int | Callable[[], int]) -> None:
        """Open (or create) the store. `embedding_dim` may be a callable, asked only for a new store.

        A remote embedder learns its dimension by embedding a probe text; a store that recorded it already
        must not make every restart pay for that request.
        """
        self.uri = uri
        self.embedding_name = embedding_name
        # read_consistency_interval=0: a long-lived handle sees other processes' writes at no measured cost.
        self._db = lancedb.connect(uri, read_consistency_interval=timedelta(0))
        self._write_lock = threading.RLock()
        self.dim = self._check_meta(embedding_dim)
        self._memory = self._open_or_create(_MEMORY, self._memory_schema(), "id")
        self._judges = self._open_or_create(_JUDGES, _JUDGES_SCHEMA, "name")
        self._judges_cache: tuple[int, dict[str, JudgeRow]] | None = None
        self._writes = 0
        self._index_memory(only_missing=True)

    # --- layout -------------------------------------------------------------------------------------------

    def _memory_schema(self) -> Any:  # pyarrow ships no type stubs
        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("judge", pa.string(), nullable=False),
                pa.field("kind", pa.string(), nullable=False),
                pa.field("item_id", pa.string(), nullable=False),
                pa.field("vector", pa.list_(pa.float32(), self.dim)),
                pa.field("text", pa.string()),
                pa.field("body", pa.string()),
                pa.field("sources", pa.list_(pa.string())),
                pa.field("content_hash", pa.string()),
                pa.field("pending", pa.bool_()),
                pa.field("created_at", pa.timestamp("us", tz="UTC")),
            ]
        )

    def _table_names(self) -> set[str]:
        return set(self._db.list_tables().tables)

    def _open_or_create(self, name: str, schema: Any, key: str) -> Any:
        with self._write_lock:
            if name in self._table_names():
                return self._db.open_table(name)
            try:
                table: Any = self._db.create_table(name, schema=schema)
            except (ValueError, OSError, RuntimeError):
                # Another process made it between our check and our create: use theirs.
                return self._db.open_table(name)
            # The primary key can be declared only once, so it is declared when the table is made.
            table.set_unenforced_primary_key(key)
            return table

    def _check_meta(self, embedding_dim: int | Callable[[], int]) -> int:
        """Record the embedding model on a new store; refuse a store built with another model."""
        meta = self._open_or_create(_META, _META_SCHEMA, "key")
        found = {r["key"]: r["value"] for r in meta.to_arrow().to_pylist()}
        if not found:
            dim = embedding_dim if isinstance(embedding_dim, int) else embedding_dim()
            rows = [
                {"key": "embedding_model", "value": self.embedding_name},
                {"key": "dim", "value": str(dim)},
            ]
            meta.merge_insert("key").when_not_matched_insert_all().execute(
                pa.Table.from_pylist(rows, schema=_META_SCHEMA)
            )
            return dim
        recorded_model = found.get("embedding_model")
        recorded_dim = int(found.get("dim", "0"))
        dim = embedding_dim if isinstance(embedding_dim, int) else recorded_dim
        if recorded_model != self.embedding_name or recorded_dim != dim:
            raise EmbeddingMismatchError(
                f"The store at {self.uri} was built with embedding model {recorded_model!r} "
                f"(dimension {recorded_dim}), but {self.embedding_name!r} (dimension {dim}) is configured. "
                "Vectors of two models cannot be mixed: set MEMALIGN_EMBEDDING_MODEL back to "
                f"{recorded_model!r}, or use another --data-dir for the new model."
            )
        return dim

    # --- judges -------------------------------------------------------------------------------------------

    def _judges_now(self) -> dict[str, JudgeRow]:
        """Every judge row, read again only when the judges table has a new version (a check of ~0.2 ms).

        Every score reads its judge's memory version; a query of the table costs ten times the check.
        """
        version = self._judges.version
        cached = self._judges_cache
        if cached is None or cached[0] != version:
            # Read after the version: rows newer than it are re-read at the next check, never missed.
            cached = (version, {r["name"]: _judge_row(r) for r in self._judges.to_arrow().to_pylist()})
            self._judges_cache = cached
        return cached[1]

    def judge_rows(self) -> list[JudgeRow]:
        """Every judge, sorted by name."""
        return sorted(self._judges_now().values(), key=lambda r: r.name)

    def judge_row(self, name: str) -> JudgeRow | None:
        """One judge, or None."""
        return self._judges_now().get(name)

    def insert_judge(self, name: str, spec_json: str) -> JudgeRow:
        """Store a new judge at memory version 0; keep the existing row if the name is taken."""
        existing = self.judge_row(name)
        if existing is not None:
            return existing  # no commit: every start re-creates the shipped judges
        row = {"name": name, "spec": spec_json, "memory_version": 0, "created_at": datetime.now(UTC)}
        with self._write_lock:
            self._judges.merge_insert("name").when_not_matched_insert_all().execute(
                pa.Table.from_pylist([row], schema=_JUDGES_SCHEMA)
            )
        stored = self.judge_row(name)
        assert stored is not None
        return stored

    def bump_version(self, name: str) -> int:
        """Add one to a judge's memory version and return the new version."""
        with self._write_lock:
            self._judges.update(
                where=f"name = {_q(name)}", values_sql={"memory_version": "memory_version + 1"}
            )
            self._count_write()
            stored = self.judge_row(name)
        if stored is None:
            raise MemAlignError(f"Judge {name!r} vanished while its memory was being changed.")
        return stored.memory_version

    def delete_judge(self, name: str) -> tuple[int, int]:
        """Delete a judge and all its memory; return (feedback rows, guideline rows) deleted."""
        with self._write_lock:
            n_feedback = self.count(name, "feedback")
            n_guidelines = self.count(name, "guideline")
            self._memory.delete(f"judge = {_q(name)}")
            self._judges.delete(f"name = {_q(name)}")
        return n_feedback, n_guidelines

    # --- scalar indexes -----------------------------------------------------------------------------------

    def _index_memory(self, *, only_missing: bool = False) -> None:
        """Build the B-tree on `id` and the bitmap on `judge` (all of them, or only those that are missing)."""
        with self._write_lock:
            have = {ix.columns[0] for ix in self._memory.list_indices()} if only_missing else set[str]()
            for column, config in (("id", BTree()), ("judge", Bitmap())):
                if column not in have:
                    self._retry(
                        lambda c=column, k=config: self._memory.create_index(c, config=k, replace=True)
                    )

    def _count_write(self) -> None:
        """Count a commit of this process; every _TIDY_EVERY commits, tidy the store."""
        self._writes += 1
        if self._writes % _TIDY_EVERY == 0:
            self.tidy()

    def _after_write(self) -> None:
        """Keep a long-lived store fast: indexes rebuilt when stale, small fragments compacted now and then."""
        self._count_write()
        stats = self._memory.index_stats("id_idx")
        if stats is None or stats.num_unindexed_rows > _UNINDEXED_ROWS:
            self._index_memory()

    def tidy(self) -> None:
        """Compact both tables' small fragments and prune versions older than an hour (housekeeping).

        Each write makes a fragment and a version; without this, reads slow down as they pile up. A conflict
        with another process's write only postpones the work to the next round.
        """
        with self._write_lock:
            for table in (self._memory, self._judges):
                try:
                    table.optimize(cleanup_older_than=_KEEP_VERSIONS)
                except (RuntimeError, OSError) as exc:
                    log.warning("store housekeeping postponed: %s", exc)

    def fragments(self) -> int:
        """How many data fragments the memory table has (for tests and benchmarks of housekeeping)."""
        versions = self._memory.list_versions()
        latest = max(versions, key=lambda v: v["version"])
        return int(latest["metadata"].get("total_fragments", "0"))

    # --- memory rows --------------------------------------------------------------------------------------

    def upsert(self, rows: Sequence[MemoryRow]) -> None:
        """Insert or replace rows by (judge, kind, item_id); touches only these rows."""
        if not rows:
            return
        table = pa.Table.from_pylist([self._to_record(r) for r in rows], schema=self._memory.schema)
        with self._write_lock:
            self._memory.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
                table
            )
            self._after_write()

    def delete(self, judge: str, kind: Kind, item_ids: Iterable[str]) -> None:
        """Delete rows of one judge and kind by item id."""
        ids = list(item_ids)
        if not ids:
            return
        with self._write_lock:
            self._memory.delete(_keys(judge, kind, ids))
            self._count_write()

    def get(self, judge: str, kind: Kind, item_ids: Iterable[str]) -> dict[str, MemoryRow]:
        """Rows of one judge and kind with these item ids, keyed by item id."""
        ids = list(item_ids)
        if not ids:
            return {}
        return {r.item_id: r for r in self._select(_keys(judge, kind, ids))}

    def rows(self, judge: str, kind: Kind, *, pending: bool | None = None) -> list[MemoryRow]:
        """Every row of one judge and kind (optionally only pending ones), oldest first."""
        where = f"judge = {_q(judge)} AND kind = {_q(kind)}"
        if pending is not None:
            where += f" AND pending = {'true' if pending else 'false'}"
        return sorted(self._select(where), key=lambda r: (r.created_at, r.item_id))

    def count(self, judge: str, kind: Kind, *, pending: bool | None = None) -> int:
        """How many rows one judge has of a kind."""
        where = f"judge = {_q(judge)} AND kind = {_q(kind)}"
        if pending is not None:
            where += f" AND pending = {'true' if pending else 'false'}"
        return int(self._memory.count_rows(where))

    def page(self, judge: str, kind: Kind, *, limit: int, offset: int) -> tuple[int, list[MemoryRow]]:
        """A page of one judge's rows of a kind, oldest first, with the total count."""
        where = f"judge = {_q(judge)} AND kind = {_q(kind)}"
        cols = ["item_id", "created_at"]
        keys: list[dict[str, Any]] = (
            self._memory.search().where(where).select(cols).limit(None).to_arrow().to_pylist()
        )
        keys.sort(key=lambda r: (r["created_at"], r["item_id"]))
        chosen = [k["item_id"] for k in keys[offset : offset + limit]]
        found = self.get(judge, kind, chosen)
        return len(keys), [found[i] for i in chosen if i in found]

    def feedback_vectors(self, judge: str) -> tuple[list[str], Matrix]:
        """Item ids and vectors (one row each) of every feedback item of one judge, in one read."""
        where = f"judge = {_q(judge)} AND kind = 'feedback'"
        query = self._memory.search().where(where).select(["item_id", "vector"]).limit(None)
        ids: list[str] = []
        parts: list[Matrix] = [np.zeros((0, self.dim), dtype=np.float32)]
        # Batch by batch, so that at most one extra copy of the vectors is alive while the matrix is built.
        for batch in query.to_batches():
            ids.extend(batch.column("item_id").to_pylist())
            flat = batch.column("vector").values.to_numpy(zero_copy_only=False)
            parts.append(np.asarray(flat, dtype=np.float32).reshape(-1, self.dim))
        return ids, np.concatenate(parts)

    def nearest(self, judge: str, vector: Vector, k: int, *, exclude: Iterable[str] = ()) -> list[Neighbour]:
        """The k feedback rows of one judge most similar to the vector, most similar first."""
        if k <= 0:
            return []
        where = f"judge = {_q(judge)} AND kind = 'feedback'"
        excluded = list(exclude)
        if excluded:
            where += f" AND NOT ({_in('item_id', excluded)})"
        query = (
            self._memory.search(vector.astype(np.float32), vector_column_name="vector")
            .distance_type("cosine")
            .where(where, prefilter=True)
            .limit(k)
        )
        out: list[Neighbour] = []
        for rec in query.to_arrow().to_pylist():
            distance = float(rec.pop("_distance"))
            out.append(Neighbour(row=self._from_record(rec), similarity=1.0 - distance))
        return out

    def set_pending(self, judge: str, item_ids: Iterable[str], pending: bool) -> None:
        """Mark feedback items as waiting for (or done with) distillation."""
        ids = list(item_ids)
        if not ids:
            return
        with self._write_lock:
            self._memory.update(where=_keys(judge, "feedback", ids), values={"pending": pending})
            self._after_write()

    # --- purge --------------------------------------------------------------------------------------------

    def purge(self) -> None:
        """Erase deleted rows from every file: drop tags, compact, rewrite fragments with deletions, prune.

        optimize() alone keeps a fragment in which few rows were deleted (only a deletion vector is written), so
        the removed text would stay inside that data file. When deletions remain after compaction, the table is
        rewritten from its live rows. Old versions are pruned at once (not after 7 days) with unverified files,
        which is safe only while no other process writes to this store: purge is an operator's action.
        """
        with self._write_lock:
            for table in (self._memory, self._judges):
                for tag in list(table.tags.list()):
                    table.tags.delete(tag)
                self._optimize_now(table)
                if self._has_deletions(table):
                    live = table.to_arrow()
                    self._retry(lambda t=table, data=live: t.add(data, mode="overwrite"))
                    self._optimize_now(table)
            # Rebuilt from the live rows, then pruned again, so that no index file keeps a removed row's key.
            self._index_memory()
            self._optimize_now(self._memory)

    def _optimize_now(self, table: Any) -> None:
        with warnings.catch_warnings():
            # lancedb warns that pruning every old version can break concurrent readers; the docstring says why
            # purge accepts that.
            warnings.simplefilter("ignore", UserWarning)
            self._retry(lambda: table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True))

    @staticmethod
    def _has_deletions(table: Any) -> bool:
        versions = table.list_versions()
        latest = max(versions, key=lambda v: v["version"])
        return int(latest["metadata"].get("total_deletion_file_rows", "0")) > 0

    @staticmethod
    def _retry(action: Any) -> None:
        """Run a LanceDB commit again while it fails with a retryable conflict from a concurrent writer."""
        for attempt in range(_COMMIT_RETRIES):
            try:
                action()
                return
            except (RuntimeError, OSError) as exc:
                retryable = "conflict" in str(exc).lower() or "retry" in str(exc).lower()
                if not retryable or attempt == _COMMIT_RETRIES - 1:
                    raise

    def residue(self) -> tuple[int, int]:
        """(versions kept, deleted rows still inside data files) of the memory table: (1, 0) after a purge."""
        versions = self._memory.list_versions()
        latest = max(versions, key=lambda v: v["version"])
        return len(versions), int(latest["metadata"].get("total_deletion_file_rows", "0"))

    # --- conversion ---------------------------------------------------------------------------------------

    def _select(self, where: str) -> list[MemoryRow]:
        records = self._memory.search().where(where).limit(None).to_arrow().to_pylist()
        return [self._from_record(r) for r in records]

    def _to_record(self, row: MemoryRow) -> dict[str, Any]:
        vector = np.asarray(row.vector, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise EmbeddingMismatchError(
                f"A vector of shape {vector.shape} was given to a store of dimension {self.dim}."
            )
        return {
            "id": row.key,
            "judge": row.judge,
            "kind": row.kind,
            "item_id": row.item_id,
            "vector": vector,
            "text": row.text,
            "body": json.dumps(row.body, ensure_ascii=False, sort_keys=True),
            "sources": list(row.sources),
            "content_hash": row.content_hash,
            "pending": row.pending,
            "created_at": row.created_at,
        }

    @staticmethod
    def _from_record(rec: dict[str, Any]) -> MemoryRow:
        return MemoryRow(
            judge=rec["judge"],
            kind=cast(Kind, rec["kind"]),
            item_id=rec["item_id"],
            vector=np.asarray(rec["vector"], dtype=np.float32),
            text=rec["text"] or "",
            body=json.loads(rec["body"] or "{}"),
            sources=tuple(rec["sources"] or ()),
            content_hash=rec["content_hash"] or "",
            pending=bool(rec["pending"]),
            created_at=rec["created_at"],
        )


_JUDGES_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("spec", pa.string()),
        pa.field("memory_version", pa.int64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
_META_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])


def _judge_row(rec: dict[str, Any]) -> JudgeRow:
    return JudgeRow(
        name=rec["name"],
        spec_json=rec["spec"],
        memory_version=int(rec["memory_version"]),
        created_at=rec["created_at"],
    )
