"""The LanceDB store: memory rows, the commit log that makes them visible, and the store's metadata.

This is the only module that imports lancedb. It owns the on-disk layout:
- `memory_v2`: immutable row versions of feedback items and guidelines (vector, text, body, provenance), each
  tagged with the transaction (`txn`) that wrote it and the judge generation (`gen`) it belongs to, keyed
  `r:<txn>:<kind>:<item id>`. Rows are appended, never edited (purge aside).
- `commits` (commit_log.py): one row per change of a judge, keyed `c:<judge>:<seq>`, and the lease row.
- `store_meta`: which embedding model and dimension built the vectors; a store refuses to mix models.

A change appends its rows, then claims its commit number with an insert-if-absent into the commit log (measured
on LanceDB 0.40 to be exclusive between processes when the merge uses no scalar index; see commit_log.py). Rows
count only through their commit (transaction.py replays commits), so a crash between the two steps, or a lost
claim, leaves invisible orphans, which the loser deletes at once and purge collects after a crash. No file lock
is used, so this holds on object storage too.

It knows nothing of judging, prompts or models, and never embeds text itself: vectors come in ready-made.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import lancedb  # pyright: ignore[reportMissingTypeStubs]
import numpy as np
import pyarrow as pa
from lancedb.index import Bitmap, BTree, IvfSq  # pyright: ignore[reportMissingTypeStubs]

from memalign_mcp.commit_log import SCHEMA as COMMITS_SCHEMA
from memalign_mcp.commit_log import CommitLog
from memalign_mcp.commit_log import sql_quote as _q
from memalign_mcp.errors import EmbeddingMismatchError, StoreUnavailableError
from memalign_mcp.records import Commit, MemoryRow
from memalign_mcp.row_codec import (
    LEAN_COLUMNS,
    SEARCH_COLUMNS,
    from_record,
    lean_feedback_rows,
    memory_schema,
    rows_of,
    searched_rows,
    to_record,
)
from memalign_mcp.search_view import SearchView
from memalign_mcp.vector_index import ensure_vector_index, indexed_rows, nearest_rows

_MEMORY = "memory_v2"
_COMMITS = "commits"
_META = "store_meta"
log = logging.getLogger(__name__)
_COMMIT_RETRIES = 20
# Rows outside the scalar indexes that a filter may scan before maintenance rebuilds the indexes.
_UNINDEXED_ROWS = 2_000
_REASON_CHARS = 300  # of a LanceDB error quoted in ours (its own can run to kilobytes)
# Compaction without pruning: LanceDB's optimize prunes versions older than this, i.e. none.
_NEVER = timedelta(days=36_500)
# Lance's clock runs on after we compute a cutoff: keep this much more so the version we meant stays.
_CUTOFF_MARGIN = timedelta(seconds=1)


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(_q(v) for v in values)})"


class MemoryStore:
    """A LanceDB database holding every judge's memory; safe to share between threads and processes."""

    def __init__(
        self,
        uri: str,
        *,
        embedding_name: str,
        embedding_dim: int | Callable[[], int],
        vector_index_min_rows: int = 20_000,
        index_cache_mb: int | None = None,
        storage_options: Mapping[str, str] | None = None,
        any_embedding: bool = False,
    ) -> None:
        """Open (or create) the store. `embedding_dim` may be a callable, asked only for a new store.

        `vector_index_min_rows`: feedback rows from which the table gets an ANN index (ensure_vector_index);
        `index_cache_mb`: LanceDB's index cache in this process (None: LanceDB's default, gigabytes).

        A remote embedder learns its dimension by embedding a probe text; a store that recorded it already
        must not make every restart pay for that request. `any_embedding` takes the recorded model whatever
        is configured, for work that embeds nothing (maintenance). `storage_options` go to LanceDB as they are (an
        object store's endpoint, region, keys); the standard AWS_* variables are read by LanceDB itself.
        Their values are never logged or put in an error.
        """
        self.uri = uri
        self.embedding_name = embedding_name
        self.vector_index_min_rows = vector_index_min_rows
        self._any_embedding = any_embedding
        self._secrets = [v for v in (storage_options or {}).values() if len(v) >= 4]
        self._write_lock = threading.RLock()
        try:
            # read_consistency_interval=0: a long-lived handle sees other processes' writes at once; how often
            # a replica asks is bounded above this layer (Ledger's freshness), not by a stale handle.
            # index_cache_mb: LanceDB's own default cache is gigabytes (BENCHMARKS.md, retrieval at scale).
            cache = (
                None
                if index_cache_mb is None
                else lancedb.Session(index_cache_size_bytes=index_cache_mb << 20)
            )
            self._db = lancedb.connect(
                uri,
                read_consistency_interval=timedelta(0),
                storage_options=dict(storage_options or {}),
                session=cache,
            )
            self.dim = self._check_meta(embedding_dim)
            self._memory = self._open_or_create(_MEMORY, memory_schema(self.dim), "id")
            # Searches read a handle that checks for new versions only when told (search_view.py).
            options = dict(storage_options or {})
            self._search_view = SearchView(
                lambda: lancedb.connect(uri, storage_options=options, session=cache).open_table(_MEMORY)
            )
            self.log = CommitLog(self._open_or_create(_COMMITS, COMMITS_SCHEMA, "id"), self._retry)
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.unavailable("opened", exc) from exc
        self._held = threading.local()  # the lease this thread holds, if any (see exclusive)
        # Told of every write (rows written) after it is done; the background maintainer listens here.
        # It must be cheap and never touch the store: it runs on the writer's (a user's) call.
        self.on_write: Callable[[int], None] | None = None
        self._index_memory(only_missing=True)

    # --- layout -------------------------------------------------------------------------------------------

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
        if self._any_embedding and recorded_model:
            self.embedding_name = recorded_model
            return recorded_dim
        dim = embedding_dim if isinstance(embedding_dim, int) else recorded_dim
        if recorded_model != self.embedding_name or recorded_dim != dim:
            raise EmbeddingMismatchError(
                f"The store at {self.uri} was built with embedding model {recorded_model!r} "
                f"(dimension {recorded_dim}), but {self.embedding_name!r} (dimension {dim}) is configured. "
                "Vectors of two models cannot be mixed: set MEMALIGN_EMBEDDING_MODEL back to "
                f"{recorded_model!r}, or use another --data-dir for the new model."
            )
        return dim

    # --- commits ------------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The commit log's version: every commit by any process changes it (~0.2 ms locally, a request on S3).

        StoreUnavailableError when the store cannot be read: a replica that cannot check for commits elsewhere
        must not score with what it cached (see Ledger's freshness).
        """
        try:
            return self.log.version
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.unavailable("read", exc) from exc

    def unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        """The one-line error for a store that could not be opened or read, with no secret in it."""
        reason = " ".join(str(exc).split())
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        if len(reason) > _REASON_CHARS:
            reason = reason[:_REASON_CHARS] + "..."
        return StoreUnavailableError(
            f"The store at {self.uri} could not be {what} ({type(exc).__name__}: {reason}); nothing was "
            "changed. Check that it is reachable and that [store] data_dir, the AWS_* variables and "
            "[store.storage_options] are right, then call again."
        )

    # --- 0.1 stores ----------------------------------------------------------------------------------------

    def legacy_judges(self) -> list[tuple[str, str, int, list[MemoryRow]]]:
        """The judges of a 0.1 store (tables `judges` and `memory`): (name, spec JSON, version, rows)."""
        if not {"judges", "memory"} <= self._table_names():
            return []
        judges = self._db.open_table("judges").to_arrow().to_pylist()
        memory = self._db.open_table("memory").to_arrow().to_pylist()
        out: list[tuple[str, str, int, list[MemoryRow]]] = []
        for j in judges:
            rows = [from_record(r | {"gen": "", "txn": ""}) for r in memory if r["judge"] == j["name"]]
            out.append((j["name"], j["spec"], int(j["memory_version"]), rows))
        return out

    def drop_legacy_tables(self) -> None:
        """Drop a migrated 0.1 store's tables, so that their rows (removed text included) are in no file."""
        for name in ("judges", "memory"):
            try:
                self._db.drop_table(name)
            except (ValueError, OSError, RuntimeError) as exc:  # another process dropped it first
                log.info("0.1 table %r already gone: %s", name, exc)

    # --- the lease (see commit_log.py) ---------------------------------------------------------------------

    def exclusive(self, *, fence: bool = True) -> Any:
        """Hold the lease that every writer of every process waits for (see CommitLog.exclusive)."""
        return self.log.exclusive(fence=fence)

    def holding(self) -> bool:
        """True when this thread holds the lease."""
        return self.log.holding()

    def lease_holder(self) -> str | None:
        """Who holds the lease now, or None."""
        return self.log.lease_holder()

    def wait_for_lease(self) -> None:
        """Wait while another's lease is active."""
        self.log.wait_for_lease()

    def commit(self, commit: Commit, rows: Sequence[MemoryRow]) -> bool:
        """Append a change's rows, then claim its commit number; False if another writer had claimed it.

        The rows are invisible until the commit row exists (readers replay commits), so a crash between the
        two leaves only orphans. A False return means another writer committed that number first: our rows
        are deleted here before returning.
        """
        self.wait_for_lease()
        with self._write_lock:
            if rows:
                table = pa.Table.from_pylist(
                    [to_record(r, self.dim) for r in rows], schema=self._memory.schema
                )
                self._memory.add(table)
            won = self.log.claim(commit)
        self._wrote(len(rows))
        if not won and rows:
            self.delete_orphans([commit.txn])
        return won

    def delete_orphans(self, txns: Iterable[str]) -> None:
        """Delete the rows of transactions that never committed (invisible already; this frees the space)."""
        where = " OR ".join(self._txn_range(t) for t in txns)
        if where:
            self.wait_for_lease()
            with self._write_lock:
                self._retry(lambda w=where: self._memory.delete(w))
            self._wrote(0)

    def delete_generation(self, judge: str, gen: str) -> None:
        """Delete every data row of a judge generation (after the commit that deleted the judge hid them)."""
        self.wait_for_lease()
        with self._write_lock:
            self._retry(lambda: self._memory.delete(f"judge = {_q(judge)} AND gen = {_q(gen)}"))
        self._wrote(0)

    def _wrote(self, rows: int) -> None:
        if self.on_write is not None:
            self.on_write(rows)

    @staticmethod
    def _txn_range(txn: str) -> str:
        # ';' sorts right after ':', so this range is exactly the keys "r:<txn>:..." (the B-tree on id serves it).
        return f"(id >= {_q(f'r:{txn}:')} AND id < {_q(f'r:{txn};')})"

    def commits(self, judge: str, after: int = 0) -> list[Commit]:
        """A judge name's commits numbered above `after`, in order."""
        return self.log.commits(judge, after)

    def all_commits(self) -> list[Commit]:
        """Every commit of every judge name, in order per name."""
        return self.log.all_commits()

    # --- memory rows --------------------------------------------------------------------------------------

    def count_all_feedback_rows(self) -> int:
        """How many feedback row versions the table holds, every judge's."""
        return int(self._memory.count_rows("kind = 'feedback'"))

    def count_feedback_rows(self, judge: str, gen: str) -> int:
        """How many feedback row versions one judge generation has stored (orphans and old versions included)."""
        return int(self._memory.count_rows(f"judge = {_q(judge)} AND gen = {_q(gen)} AND kind = 'feedback'"))

    def rows_of_generation(
        self, judge: str, gen: str, *, content: bool, vectors: bool = False
    ) -> list[MemoryRow]:
        """Every data row version of one judge generation, orphans included; without `content` for feedback.

        Guidelines always come whole (they are few); feedback without content is lean (ids, pending, hash; no
        text or body, and a vector only with `vectors`), so a judge of a million items stays small.
        """
        base = f"judge = {_q(judge)} AND gen = {_q(gen)}"
        return self._data_rows(base, judge, content=content, vectors=vectors)

    def rows_of_txns(
        self, judge: str, txns: Sequence[str], *, content: bool, vectors: bool = False
    ) -> list[MemoryRow]:
        """The data rows written by these transactions (a key range each, served by the B-tree on id)."""
        if not txns:
            return []
        base = "(" + " OR ".join(self._txn_range(t) for t in txns) + ")"
        return self._data_rows(base, judge, content=content, vectors=vectors)

    def _data_rows(self, base: str, judge: str, *, content: bool, vectors: bool) -> list[MemoryRow]:
        guidelines = self._select(base + " AND kind = 'guideline'")
        where = base + " AND kind = 'feedback'"
        if content:
            return guidelines + self._select(where)
        columns = [*LEAN_COLUMNS, "vector"] if vectors else LEAN_COLUMNS
        query = self._memory.search().where(where).select(columns).limit(None)
        out: list[MemoryRow] = []
        for batch in query.to_batches():
            out.extend(lean_feedback_rows(batch, judge, self.dim if vectors else None))
        return guidelines + out

    def rows_by_key(self, keys: Iterable[str]) -> dict[str, MemoryRow]:
        """Whole row versions by primary key."""
        wanted = list(keys)
        if not wanted:
            return {}
        return {r.key: r for r in self._select(_in("id", wanted))}

    # --- vector search (vector_index.py) -------------------------------------------------------------------

    def search_feedback(
        self, judge: str, gen: str, vector: Any, limit: int, *, ann: bool, prefilter: bool = True
    ) -> list[tuple[MemoryRow, float]]:
        """Feedback row versions of one judge generation nearest the vector, with cosine similarity: their key
        and body only (row_codec.SEARCH_COLUMNS), read through the search view (search_view.py).

        Candidates only: orphans, superseded versions and removed items are among them (the caller keeps the
        live ones). `ann` uses the vector index where the table has one; otherwise the search is exact. Without
        `prefilter`, other judges' rows take some of the `limit` places (see vector_index.nearest_rows).
        """
        where = f"judge = {_q(judge)} AND gen = {_q(gen)} AND kind = 'feedback'"
        vector = np.asarray(vector, np.float32)
        found = self._search_view.read(
            lambda table: nearest_rows(
                table, vector, where, limit, ann=ann, prefilter=prefilter, columns=SEARCH_COLUMNS
            )
        )
        distances = found.column("_distance").to_pylist()
        rows = searched_rows(found.drop_columns(["_distance"]))
        return [(r, 1.0 - float(d)) for r, d in zip(rows, distances, strict=True)]

    def refresh_search_view(self) -> None:
        """Let the next search see every row committed by now (by any process): one request on object storage."""
        self._search_view.refresh()

    def has_vector_index(self) -> bool:
        """True when the memory table has an ANN index on its vectors."""
        return indexed_rows(self._memory) is not None

    def ensure_vector_index(self, *, rebuild: bool = False) -> bool:
        """Build the ANN index once the table holds `vector_index_min_rows` feedback rows, and rebuild it when
        many rows are outside it (or, with `rebuild`, whenever one exists); True when it was (re)built now.
        Idempotent; a maintenance step, and erase's with `rebuild`."""
        feedback = int(self._memory.count_rows("kind = 'feedback'"))
        # No write lock: a build takes minutes at 1M rows, and LanceDB arbitrates it against writers (a write
        # committed meanwhile stays outside the index until the next build, and search covers unindexed rows).
        built: list[bool] = []
        self._retry(
            lambda: built.append(
                ensure_vector_index(
                    self._memory,
                    lambda n: IvfSq(distance_type="cosine", num_partitions=n),
                    feedback_rows=feedback,
                    min_rows=self.vector_index_min_rows,
                    rebuild=rebuild,
                )
            )
        )
        return bool(built and built[-1])

    # --- scalar indexes and maintenance: maintenance.py's primitives, never run on a user's call ------------
    # They take no write lock: LanceDB arbitrates them against writers of this process as of any other.

    def _index_memory(self, *, only_missing: bool = False) -> list[str]:
        """Build the B-tree on `id` and the bitmaps on `judge` and `kind` (all, or only the missing ones)."""
        have = {ix.columns[0] for ix in self._memory.list_indices()} if only_missing else set[str]()
        todo = [
            (c, k) for c, k in (("id", BTree()), ("judge", Bitmap()), ("kind", Bitmap())) if c not in have
        ]
        for column, config in todo:
            self._retry(lambda c=column, k=config: self._memory.create_index(c, config=k, replace=True))
        return [c for c, _ in todo]

    def compact(self) -> None:
        """Merge small fragments of both tables and fold new rows into the scalar indexes; prune nothing."""
        self._retry(lambda: self._memory.optimize(cleanup_older_than=_NEVER))
        self.log.optimize(_NEVER)

    def refresh_indexes(self) -> tuple[list[str], int]:
        """Build missing scalar indexes, rebuild them when many rows are unindexed; (built, rows unindexed)."""
        built = self._index_memory(only_missing=True)
        stats = self._memory.index_stats("id_idx")
        if stats is not None and stats.num_unindexed_rows > _UNINDEXED_ROWS:
            built = self._index_memory()
            stats = self._memory.index_stats("id_idx")
        return built, int(stats.num_unindexed_rows) if stats is not None else 0

    def versions(self) -> int:
        """How many versions both tables keep."""
        return len(self._memory.list_versions()) + self.log.versions()

    def prune(self, cutoff: Callable[[Sequence[datetime]], datetime | None]) -> int:
        """Prune the versions of both tables made before `cutoff(their creation times)`; how many went.

        `cutoff` is maintenance.py's rule. Files that no version lists (a write in flight elsewhere) are never
        touched: `delete_unverified` is off.
        """
        versions = self._memory.list_versions()
        before = cutoff([v["timestamp"] for v in versions])
        if before is not None:
            older = datetime.now(UTC) - before + _CUTOFF_MARGIN
            self._retry(lambda: self._memory.optimize(cleanup_older_than=older))
        gone = {v["version"] for v in versions} - {v["version"] for v in self._memory.list_versions()}
        return len(gone) + self.log.prune(cutoff, _CUTOFF_MARGIN)

    def erasing(self) -> Any:
        """Hold the purge lease while no maintenance step runs (see CommitLog.erasing)."""
        return self.log.erasing()

    def fragments(self) -> int:
        """How many data fragments the memory table has."""
        return int(self._latest_metadata().get("total_fragments", "0"))

    def _latest_metadata(self) -> dict[str, str]:
        versions = self._memory.list_versions()
        return dict(max(versions, key=lambda v: v["version"])["metadata"])

    # --- erasure ------------------------------------------------------------------------------------------

    def erase_keys(self, keys: Sequence[str]) -> int:
        """Erase these row versions from every file (see erase); prune old versions even when there are none."""
        return self.erase(_in("id", keys) if keys else "false")

    def erase(self, where: str) -> int:
        """Delete the rows matching `where` so that their bytes are in no file of the store; return how many.

        A plain delete only marks rows in a deletion vector: the text stays inside the data file. So the rows
        that share a data fragment with an erased row are rewritten in the same merge that deletes it, which
        leaves those fragments wholly deleted and dropped from the new version; then every older version is
        pruned. All of it goes through LanceDB's own commits, so writers in other processes lose nothing: a
        conflicting write is retried by LanceDB, and files that no version lists yet (a write in flight) are
        kept. A reader in another process that is mid-way through a pruned version fails that one read.
        """
        with self._write_lock:
            found = (
                self._memory.search()
                .where(where)
                .with_row_address(True)
                .select(["id", "_rowaddr"])
                .limit(None)
                .to_arrow()
                .to_pylist()
            )
            if found:
                keys = [r["id"] for r in found]
                fragments = sorted({int(r["_rowaddr"]) >> 32 for r in found})
                self._retry(lambda: self._rewrite_without(fragments, keys))
            # Rebuilt from the live rows before pruning, so no index file keeps an erased row's key, nor the
            # vector index a quantized copy of its vector (slow at scale: minutes at 1M rows, see BENCHMARKS).
            self._index_memory()
            if found:
                self.ensure_vector_index(rebuild=True)
            self._prune_now()
        return len(found)

    def _rewrite_without(self, fragments: list[int], keys: list[str]) -> None:
        seen = set(keys)
        neighbours = self._memory.search().with_fragments(fragments).limit(None).to_arrow()
        # Measured on LanceDB 0.40: a fragment scan can return one row twice, and a merge refuses a source
        # with two rows of one key; rows are immutable versions, so the first copy is the row.
        wanted: list[bool] = []
        for key in neighbours.column("id").to_pylist():
            wanted.append(key not in seen)
            seen.add(key)
        keep = neighbours.filter(pa.array(wanted, type=pa.bool_()))
        if keep.num_rows == 0:
            # Nothing shares their fragments: a delete leaves those fragments wholly deleted, hence dropped.
            self._memory.delete(_in("id", keys))
            return
        (
            self._memory.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_by_source_delete(_in("id", keys))
            .execute(keep.cast(self._memory.schema))
        )

    def _prune_now(self) -> None:
        with warnings.catch_warnings():
            # LanceDB warns that pruning every old version fails a concurrent reader of one; erase() accepts it.
            warnings.simplefilter("ignore", UserWarning)
            self._retry(lambda: self._memory.optimize(cleanup_older_than=timedelta(0)))

    def residue(self) -> tuple[int, int]:
        """(versions kept, deleted rows still inside data files) of the memory table."""
        versions = self._memory.list_versions()
        return len(versions), int(self._latest_metadata().get("total_deletion_file_rows", "0"))

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

    # --- conversion ---------------------------------------------------------------------------------------

    def _select(self, where: str) -> list[MemoryRow]:
        return rows_of(self._memory.search().where(where).limit(None).to_arrow(), self.dim)


_META_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])
