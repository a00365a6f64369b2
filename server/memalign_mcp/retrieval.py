"""Retrieval: a judge's k nearest live feedback items, from an in-memory snapshot or from LanceDB's search.

It owns the choice of path. Judges under `vector_index_min_rows` items (their state holds their vectors) get an
exact in-memory snapshot within `[memory] snapshot_budget_mb`; every other judge is searched in the store, with
LanceDB's ANN index once the table has it (store.ensure_vector_index), exactly otherwise.
Whatever the path, only the judge's live rows come back: rows count only through their commit
(memory_state.py), so superseded versions, removed items and orphans, which a store search sees, are dropped.
It reads; it never writes the store.
"""

from __future__ import annotations

import math
import time

import numpy as np

from memalign_mcp.heap import EveryNthCall
from memalign_mcp.memory_state import MemoryState
from memalign_mcp.records import MemoryRow, Neighbour, Vector
from memalign_mcp.settings import MemorySettings
from memalign_mcp.store import MemoryStore
from memalign_mcp.transaction import Ledger
from memalign_mcp.vector_snapshot import VectorSnapshot

# Most extra candidates asked of the store for rows that are not live, before asking again for more.
_OVERFETCH_CAP = 100
# From this share of the table's feedback rows up, a judge is searched with the filter after the index search
# (other judges' rows then take few of the places), not before it: a prefilter is evaluated over every row.
_POSTFILTER_SHARE = 0.5
# How long a process trusts what it read about the table's ANN index (maintenance, maybe in another process, builds it).
_INDEX_RECHECK_S = 30.0
# A store search leaves freed buffers that glibc would keep (about 10 MiB over 200 scores of a 100k judge);
# giving them back takes 2-6 ms, so once in this many searches (heap.py).
_TRIM_EVERY = 64


class Retrieval:
    """Nearest-neighbour search over judges' memories for one process; thread-safe."""

    def __init__(self, settings: MemorySettings, store: MemoryStore, ledger: Ledger) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self._snapshots: dict[str, tuple[tuple[str, int], VectorSnapshot]] = {}
        # judge -> ((gen, seq), when read, stored feedback rows, all judges' feedback rows, table has an index)
        self._facts: dict[str, tuple[tuple[str, int], float, int, int, bool]] = {}
        self._heap = EveryNthCall(_TRIM_EVERY)

    def forget(self, judge: str) -> None:
        """Drop what is cached for a judge (it was deleted)."""
        self._snapshots.pop(judge, None)
        self._facts.pop(judge, None)

    def nearest(self, state: MemoryState, vector: Vector, k: int, exclude: set[str]) -> list[Neighbour]:
        """The judge's k live feedback items most similar to the vector, most similar first.

        From the judge's in-memory snapshot where it has one (see _snapshot_for), else from LanceDB.
        """
        if k <= 0 or not state.feedback:
            return []
        snapshot = self._snapshot_for(state)
        if snapshot is None:
            return self._search_store(state, vector, k, exclude)
        best = snapshot.top(vector, k, exclude)
        rows = snapshot.rows
        if rows is None:
            rows = self.ledger.whole_rows(state, [item_id for item_id, _ in best])
        return [Neighbour(rows[i], similarity) for i, similarity in best if i in rows]

    def _snapshot_for(self, state: MemoryState) -> VectorSnapshot | None:
        """The judge's snapshot, made if it pays and fits the budget; None means search the store.

        Only a state that holds its vectors has one: its k neighbours then cost no read at all where it holds
        its rows whole too, and one read by key where it holds vectors only (a mid-sized judge). A lean state
        (a large judge) holds no vectors; LanceDB's index search returns its neighbours' rows in the same query.
        Judges past `snapshot_budget_mb`, counted over every snapshot this process holds, search the store too.
        """
        # Keyed by generation and commit number: every commit changes it, and a re-made judge has a new one.
        key = (state.gen, state.seq)
        cached = self._snapshots.get(state.judge)
        if cached is not None and cached[0] == key:
            return cached[1]
        latest = state is self.ledger.state(state.judge)
        if latest:
            self._snapshots.pop(state.judge, None)  # stale: its memory counts against the budget no more
        if not state.vectors:
            return None
        held = sum(s.vectors.nbytes for _, s in list(self._snapshots.values()))
        wanted = len(state.feedback) * self.store.dim * 4
        if held + wanted > self.settings.snapshot_budget_mb * 2**20:
            return None
        snapshot = self._snapshot(state)
        if latest:  # an older version's snapshot is used once, not kept
            self._snapshots[state.judge] = (key, snapshot)
        return snapshot

    def _search_store(self, state: MemoryState, vector: Vector, k: int, exclude: set[str]) -> list[Neighbour]:
        """The k nearest live rows by LanceDB's search: ANN for a judge of `vector_index_min_rows` or more
        items once the table has its index, else exact; falls back to exact when ANN finds too few.

        The search filters on the judge's generation, and its candidates include row versions that are not
        live (superseded, removed without purge, orphans): as many more are asked for as the judge has such
        rows (up to a cap), those are dropped, and the search is asked again for more if too few remain.
        """
        self._heap.tick()
        stored, everyone, indexed = self._store_facts(state)
        dead = max(0, stored - len(state.feedback))
        ann = indexed and len(state.feedback) >= self.settings.vector_index_min_rows
        limit = k + len(exclude) + min(dead, _OVERFETCH_CAP)
        if ann and everyone and stored / everyone >= _POSTFILTER_SHARE:
            # Asked for enough places that other judges' rows, in proportion, still leave `limit` of ours, with
            # k more for chance; with no other judge's rows in the table, `limit` is enough (5 rows fewer to read
            # took a 100k-item search from 14.6 to 12.5 ms: BENCHMARKS.md).
            wanted = math.ceil(limit * everyone / stored) + (k if everyone > stored else 0)
            found = self.store.search_feedback(
                state.judge, state.gen, vector, wanted, ann=True, prefilter=False
            )
            live = self._live(state, found, exclude)
            if len(live) >= k:
                return live[:k]
        while True:
            found = self.store.search_feedback(state.judge, state.gen, vector, limit, ann=ann)
            live = self._live(state, found, exclude)
            if len(live) >= k or (not ann and (len(found) < limit or limit >= stored)):
                return live[:k]
            if ann:
                ann = False  # the index's candidates ran short: search exactly
            else:
                limit *= 4

    @staticmethod
    def _live(state: MemoryState, found: list[tuple[MemoryRow, float]], exclude: set[str]) -> list[Neighbour]:
        """The candidates that are the judge's live rows (not excluded), in the order found."""
        return [
            Neighbour(row, similarity)
            for row, similarity in found
            if row.item_id not in exclude
            and (current := state.feedback.get(row.item_id)) is not None
            and current.key == row.key
        ]

    def _store_facts(self, state: MemoryState) -> tuple[int, int, bool]:
        """(feedback row versions stored for the judge's generation, and for every judge, whether the table has
        an ANN index), read once per memory version; the index's presence again after _INDEX_RECHECK_S."""
        key = (state.gen, state.seq)
        now = time.monotonic()
        cached = self._facts.get(state.judge)
        if cached is None or cached[0] != key or now - cached[1] > _INDEX_RECHECK_S:
            if cached is None or cached[0] != key:
                self.store.refresh_search_view()  # a newer state: the search must see the rows it counts
            stored = self.store.count_feedback_rows(state.judge, state.gen)
            everyone = self.store.count_all_feedback_rows()
            cached = (key, now, stored, everyone, self.store.has_vector_index())
            self._facts[state.judge] = cached
        return cached[2], cached[3], cached[4]

    def _snapshot(self, state: MemoryState) -> VectorSnapshot:
        rows = state.feedback_rows()
        matrix = np.stack([r.vector for r in rows]) if rows else np.zeros((0, self.store.dim), np.float32)
        whole = {r.item_id: r for r in rows} if state.whole else None
        return VectorSnapshot([r.item_id for r in rows], matrix, whole)
