"""The records the store reads and writes: memory rows, search neighbours and judge rows.

Plain frozen dataclasses with no storage behind them, so that the engine's modules can speak of stored memory
without importing the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Kind = Literal["feedback", "guideline"]
Vector = NDArray[np.float32]
Matrix = NDArray[np.float32]


@dataclass(frozen=True)
class MemoryRow:
    """One stored memory: a feedback item or a guideline of one judge."""

    judge: str
    kind: Kind
    item_id: str
    vector: Vector
    text: str
    body: dict[str, Any] = field(default_factory=dict[str, Any])
    sources: tuple[str, ...] = ()
    content_hash: str = ""
    pending: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        """The table's primary key for this row."""
        return f"{self.judge}/{self.kind}/{self.item_id}"


@dataclass(frozen=True)
class Neighbour:
    """A feedback row returned by similarity search, with its cosine similarity to the query."""

    row: MemoryRow
    similarity: float


@dataclass(frozen=True)
class JudgeRow:
    """A judge as stored: its spec (JSON text), memory version and creation time."""

    name: str
    spec_json: str
    memory_version: int
    created_at: datetime
