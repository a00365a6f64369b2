"""A judge's feedback vectors at one memory version, searched exactly in memory (one matrix product).

This module owns `VectorSnapshot`; the judge service keeps one per judge, keyed by the commit it was read at. It
reads no store and calls no model: it is handed the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memalign_mcp.records import Matrix, MemoryRow, Vector


class VectorSnapshot:
    """Every feedback vector of one judge at one memory version, for exact cosine search in memory.

    Held for judges small enough to keep whole rows in memory, within `snapshot_budget_mb` (retrieval.py): one
    matrix product and no store read per score. It costs 4 bytes per dimension per item (31 MB for 20k items of
    384 dimensions); float16 or int8 copies would halve or quarter that, but numpy multiplies them 3-10 times
    slower (measured here: 100k x 384 float32 einsum 40 ms, float16 in float32 chunks 433 ms, int8 108 ms).
    """

    def __init__(
        self, item_ids: Sequence[str], vectors: Matrix, rows: dict[str, MemoryRow] | None = None
    ) -> None:
        self.item_ids = list(item_ids)
        self.vectors = vectors
        # Whole rows for judges small enough to hold: the k neighbours then cost no read of the store.
        self.rows = rows
        # Norms apart rather than a normalised copy: one matrix in memory, not two.
        self.inverse_norms = 1.0 / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)

    def top(self, vector: Vector, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        """(item id, cosine similarity) of the k items most similar to the vector, most similar first."""
        n = len(self.item_ids)
        if k <= 0 or n == 0:
            return []
        query = vector.astype(np.float32) / max(float(np.linalg.norm(vector)), 1e-12)
        # einsum runs in this thread: a BLAS product would wake OpenBLAS's threads, whose spinning afterwards
        # slows the embedder and LanceDB on a small machine by more than the product saves.
        similarity = np.einsum("ij,j->i", self.vectors, query) * self.inverse_norms
        # Exclusions are few (leave-one-out excludes one item): take that many more, then drop them.
        wanted = min(n, k + len(exclude))
        pool = np.argpartition(-similarity, wanted - 1)[:wanted] if wanted < n else np.arange(n)
        ranked = pool[np.argsort(-similarity[pool], kind="stable")].tolist()
        found = [(self.item_ids[i], float(similarity[i])) for i in ranked]
        return [pair for pair in found if pair[0] not in exclude][:k]
