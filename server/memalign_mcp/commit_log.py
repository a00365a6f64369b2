"""The commit log: one small table of commit rows (and the lease row), apart from the memory rows.

A commit row claims a judge's next commit number with an insert-if-absent, and everything a judge is (which rows
count, its history) follows from its commit rows. The table is kept small on purpose: LanceDB's insert-if-absent
joins the new row against the whole table, and must not use a scalar index to do it (measured on LanceDB 0.40:
with a B-tree on the key, 7-21 of 60-200 keys raced for by 4 processes were won by two writers; without, none),
so a commit's cost grows with the number of commits, not with the number of memory rows (with the commit rows in
the memory table, filling a 100k-item judge 1,000 rows a commit took 199 s instead of 44 s).

The lease rows live here too: rows inserted if absent, with an expiry. Purge holds `l:purge` so that it runs
alone (every writer waits for it); the maintainer holds `l:maintain` so that one process maintains the store at
a time (no writer waits for it; see maintenance.py). This module is handed the table by the store and imports
no database library itself.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from memalign_mcp.records import Commit, commit_key

LEASE = "l:purge"
MAINTAIN_LEASE = "l:maintain"
_LEASE_TTL_S = 120.0  # a purge killed half-way blocks writers at most this long
_LEASE_FENCE_S = 0.5  # a write that saw no lease has this long to finish before erasure starts
_LEASE_POLL_S = 0.05

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # c:<judge>:<seq>, or the lease
        pa.field("judge", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # commit or lease
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("txn", pa.string(), nullable=False),
        pa.field("body", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def sql_quote(text: str) -> str:
    """Quote a string as an SQL literal for a LanceDB filter."""
    return "'" + text.replace("'", "''") + "'"


_q = sql_quote


class CommitLog:
    """Commit rows and the lease, over one LanceDB table handle; safe to share between threads."""

    def __init__(self, table: Any, retry: Callable[[Callable[[], Any]], None]) -> None:
        self._table = table
        self._retry = retry
        self._held = threading.local()  # the lease this thread holds, if any

    @property
    def version(self) -> int:
        """The table's version: every commit of any judge, by any process, changes it (a cheap check)."""
        return int(self._table.version)

    def claim(self, commit: Commit) -> bool:
        """Insert the commit row unless its number is taken; True if this writer won the number."""
        row = {
            "id": commit_key(commit.judge, commit.seq),
            "judge": commit.judge,
            "kind": "commit",
            "seq": commit.seq,
            "txn": commit.txn,
            "body": commit.to_json(),
            "created_at": commit.created_at,
        }
        return self._insert_if_absent(row)

    def _insert_if_absent(self, row: dict[str, Any]) -> bool:
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        result = self._table.merge_insert("id").when_not_matched_insert_all().use_index(False).execute(table)
        return int(result.num_inserted_rows) == 1

    def commits(self, judge: str, after: int = 0) -> list[Commit]:
        """A judge name's commits numbered above `after`, in order."""
        return self._where(f"kind = 'commit' AND judge = {_q(judge)} AND seq > {int(after)}")

    def all_commits(self) -> list[Commit]:
        """Every commit of every judge name, in order per name."""
        return self._where("kind = 'commit'")

    def _where(self, where: str) -> list[Commit]:
        cols = ["judge", "seq", "txn", "created_at", "body"]
        records = self._table.search().where(where).select(cols).limit(None).to_arrow().to_pylist()
        unique = {(r["judge"], r["seq"]): r for r in records}
        out = [
            Commit.from_json(r["judge"], r["seq"], r["txn"], r["created_at"], r["body"])
            for r in unique.values()
        ]
        return sorted(out, key=lambda c: (c.judge, c.seq))

    def optimize(self, cleanup_older_than: timedelta) -> None:
        """Compact the log's small fragments, fold new rows into its indexes, prune versions that old."""
        self._retry(lambda: self._table.optimize(cleanup_older_than=cleanup_older_than))

    def versions(self) -> int:
        """How many versions of the log are kept."""
        return len(self._table.list_versions())

    def prune(self, cutoff: Callable[[Sequence[datetime]], datetime | None], margin: timedelta) -> int:
        """Prune the versions made before `cutoff(creation times)`, keeping `margin` more; how many went."""
        versions = self._table.list_versions()
        before = cutoff([v["timestamp"] for v in versions])
        if before is not None:
            self.optimize(datetime.now(UTC) - before + margin)
        return len({v["version"] for v in versions} - {v["version"] for v in self._table.list_versions()})

    # --- the lease ----------------------------------------------------------------------------------------

    def _lease(self, name: str = LEASE) -> dict[str, Any] | None:
        found = self._table.search().where(f"id = {_q(name)}").select(["txn", "body"]).limit(1).to_arrow()
        rows = found.to_pylist()
        return rows[0] if rows else None

    def lease_holder(self, name: str = LEASE) -> str | None:
        """Who holds the lease `name` now (unexpired), or None."""
        lease = self._lease(name)
        if lease is None:
            return None
        return lease["txn"] if time.time() < float(json.loads(lease["body"])["expires"]) else None

    def holding(self) -> bool:
        """True when this thread holds the purge lease."""
        return getattr(self._held, "holder", None) is not None

    def wait_for_lease(self, name: str = LEASE) -> None:
        """Wait while another's lease `name` is active (bounded by its expiry): every writer honours purge's."""
        mine = getattr(self._held, "holder", None) if name == LEASE else None
        while (holder := self.lease_holder(name)) is not None and holder != mine:
            time.sleep(_LEASE_POLL_S)

    @staticmethod
    def _lease_row(name: str, holder: str, ttl_s: float) -> dict[str, Any]:
        return {
            "id": name,
            "judge": name,
            "kind": "lease",
            "seq": 0,
            "txn": holder,
            "body": json.dumps({"expires": time.time() + ttl_s}),
            "created_at": datetime.now(UTC),
        }

    def try_lease(self, name: str, ttl_s: float) -> str | None:
        """Take the lease `name` unless someone holds it unexpired; the new holder's token, or None."""
        stale = self._lease(name)
        if stale is not None:
            if time.time() < float(json.loads(stale["body"])["expires"]):
                return None
            # Expired (its holder died): remove exactly that lease, then race for a new one.
            where = f"id = {_q(name)} AND txn = {_q(stale['txn'])}"
            self._retry(lambda: self._table.delete(where))
        holder = uuid.uuid4().hex
        return holder if self._insert_if_absent(self._lease_row(name, holder, ttl_s)) else None

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Push the lease's expiry `ttl_s` from now; False when it is no longer this holder's."""
        row = pa.Table.from_pylist([self._lease_row(name, holder, ttl_s)], schema=SCHEMA)
        result = (
            self._table.merge_insert("id")
            .when_matched_update_all(where=f"target.txn = {_q(holder)}")
            .use_index(False)
            .execute(row)
        )
        return int(result.num_updated_rows) == 1

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back (only this holder's: an expired one another took is left alone)."""
        self._retry(lambda: self._table.delete(f"id = {_q(name)} AND txn = {_q(holder)}"))

    @contextmanager  # pyright: ignore[reportDeprecated]  # the typeshed deprecation is for generator-less uses
    def exclusive(self, *, fence: bool = True) -> Iterator[None]:
        """Hold the lease: every writer of every process (this thread aside) waits until it is released.

        Purge prunes every old version, which fails any write still working from one, and it judges rows
        without a commit to be orphans, which is true only of writes not in flight. So erasure runs alone.
        The lease is a row inserted if absent (exclusive between processes, as commits are), with an expiry
        so that a purge killed half-way blocks nobody for long; after taking it, purge waits out one fence so
        that writes which checked before it finish first (`fence=False` skips that wait for a change that
        runs alone: a write that slipped in is caught by its commit check). No file lock: it holds on object
        storage.
        """
        if self.holding():
            yield  # this thread holds it already
            return
        holder = uuid.uuid4().hex
        while True:
            self.wait_for_lease()
            stale = self._lease()
            if stale is not None:  # expired: remove exactly that lease, then race for a new one
                where = f"id = {_q(LEASE)} AND txn = {_q(stale['txn'])}"
                self._retry(lambda w=where: self._table.delete(w))
            if self._insert_if_absent(self._lease_row(LEASE, holder, _LEASE_TTL_S)):
                break
        self._held.holder = holder
        try:
            if fence:
                time.sleep(_LEASE_FENCE_S)
            yield
        finally:
            self._held.holder = None
            self._retry(lambda: self._table.delete(f"id = {_q(LEASE)} AND txn = {_q(holder)}"))

    @contextmanager  # pyright: ignore[reportDeprecated]
    def erasing(self) -> Iterator[None]:
        """Hold the purge lease with no maintenance step running: compaction would copy bytes being erased.

        The maintainer checks the purge lease before each step. Erasure waits for the maintenance lease
        before taking its own (so a dead maintainer's expiry holds up no writer), and again after it, for a
        step that began just before the purge lease was written. So a purge waits for at most one step.
        """
        self.wait_for_lease(MAINTAIN_LEASE)
        with self.exclusive():
            self.wait_for_lease(MAINTAIN_LEASE)
            yield
