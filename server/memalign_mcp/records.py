"""The records the store reads and writes: memory rows, commits, search neighbours.

Plain frozen dataclasses with no storage behind them, so that the engine's modules can speak of stored memory
without importing the database.

Rows are immutable versions: a change never edits a row, it writes new rows tagged with its transaction id and
names the rows it drops in its commit. A row is visible only once the commit of its transaction exists, so rows of
an interrupted or losing transaction ("orphans") are never read as memory.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from memalign_mcp.models import GuidelineStatus

Kind = Literal["feedback", "guideline"]
ItemKey = tuple[str, str]  # (kind, item id): what a change reads or writes, for conflict checks
KINDS: tuple[Kind, Kind] = ("feedback", "guideline")
Vector = NDArray[np.float32]
Matrix = NDArray[np.float32]

# What a commit did to the judge: create, feed, distil, remove, delete and the rest (see transaction.py).
Op = Literal[
    "create", "add", "distill", "remove", "delete", "update", "rollback", "guideline", "review", "purge"
]


def new_txn() -> str:
    """A fresh transaction id: its start time (ns, hex) then randomness, so an orphan's age can be read off it."""
    return f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"


def txn_age_s(txn: str) -> float:
    """Seconds since a transaction (made by new_txn) started; infinite for an id of another form."""
    try:
        return (time.time_ns() - int(txn[:16], 16)) / 1e9
    except ValueError:
        return float("inf")


def row_key(txn: str, kind: str, item_id: str) -> str:
    """The primary key of one row version: its transaction first, so a transaction's rows are one key range."""
    return f"r:{txn}:{kind}:{item_id}"


def commit_key(judge: str, seq: int) -> str:
    """The primary key of a judge's commit number `seq`; two writers of the same number collide on it."""
    return f"c:{judge}:{seq:012d}"


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """One stored memory: a version of a feedback item or of a guideline of one judge.

    Slotted: a replayed judge holds one per item, and a per-instance dict would double its size.
    """

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
    gen: str = ""
    txn: str = ""

    @property
    def key(self) -> str:
        """The table's primary key for this row version."""
        return row_key(self.txn, self.kind, self.item_id)

    @property
    def status(self) -> GuidelineStatus:
        """A guideline's review status, kept in its body (absent: active, as every guideline before 0.2)."""
        return "proposed" if self.body.get("status") == "proposed" else "active"

    @property
    def by_operator(self) -> bool:
        """True for a guideline an operator wrote by hand (add_guideline): distillation never rewrites it."""
        return str(self.body.get("provenance", "")).startswith("operator:")


@dataclass(frozen=True)
class Summary:
    """What one commit changed, by id only (never content): the history a judge shows."""

    feedback_added: tuple[str, ...] = ()
    feedback_removed: tuple[str, ...] = ()
    feedback_replaced: tuple[str, ...] = ()
    guidelines_added: tuple[str, ...] = ()
    guidelines_removed: tuple[str, ...] = ()
    guidelines_revised: tuple[str, ...] = ()
    purged: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, list[str]]:
        """The summary as lists, for JSON."""
        return {k: list(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Commit:
    """One committed change to a judge: the unit of atomicity, of history and of cache invalidation.

    `seq` numbers every commit of a judge name (across deletes and re-creations) and is what two writers race
    for; `version` is the memory version the contract shows, counted from 0 at the judge's creation; `gen` is
    the judge's generation, new at each creation, so rows of a deleted judge never reach a new one.
    """

    judge: str
    seq: int
    gen: str
    txn: str
    version: int
    op: Op
    who: str | None
    created_at: datetime
    spec_json: str
    puts: dict[Kind, tuple[str, ...]] = field(default_factory=dict[Kind, tuple[str, ...]])
    drops: dict[Kind, tuple[str, ...]] = field(default_factory=dict[Kind, tuple[str, ...]])
    pending_on: tuple[str, ...] = ()
    pending_off: tuple[str, ...] = ()
    # Feedback cited by the guidelines this commit wrote or dropped: it changed those items' influence.
    cites: tuple[str, ...] = ()
    summary: Summary = field(default_factory=Summary)
    restore_of: int | None = None  # rollback: the version whose state this commit restored

    @property
    def deleted(self) -> bool:
        """True for the commit that deleted the judge."""
        return self.op == "delete"

    def touched(self) -> set[ItemKey]:
        """Every (kind, item id) whose state this commit changed."""
        out: set[ItemKey] = {(k, i) for k, ids in (*self.puts.items(), *self.drops.items()) for i in ids}
        out |= {("feedback", i) for i in (*self.pending_on, *self.pending_off, *self.cites)}
        return out

    def to_json(self) -> str:
        """The commit's body as stored in its row (ids and spec only, never feedback content)."""
        return json.dumps(
            {
                "gen": self.gen,
                "version": self.version,
                "op": self.op,
                "who": self.who,
                "spec": self.spec_json,
                "puts": {k: list(v) for k, v in self.puts.items()},
                "drops": {k: list(v) for k, v in self.drops.items()},
                "pending_on": list(self.pending_on),
                "pending_off": list(self.pending_off),
                "cites": list(self.cites),
                "summary": self.summary.as_dict(),
                "restore_of": self.restore_of,
            },
            sort_keys=True,
        )

    @staticmethod
    def from_json(judge: str, seq: int, txn: str, created_at: datetime, text: str) -> Commit:
        """A commit read back from its row."""
        d = json.loads(text)
        return Commit(
            judge=judge,
            seq=seq,
            gen=d["gen"],
            txn=txn,
            version=int(d["version"]),
            op=d["op"],
            who=d.get("who"),
            created_at=created_at,
            spec_json=d.get("spec", ""),
            puts={k: _shared(v) for k, v in d.get("puts", {}).items()},
            drops={k: tuple(v) for k, v in d.get("drops", {}).items()},
            pending_on=tuple(d.get("pending_on", ())),
            pending_off=tuple(d.get("pending_off", ())),
            cites=tuple(d.get("cites", ())),
            summary=Summary(**{k: _shared(v) for k, v in d.get("summary", {}).items()}),
            restore_of=d.get("restore_of"),
        )


def _shared(ids: list[str]) -> tuple[str, ...]:
    """Item ids as interned strings: a commit lists them twice (puts, summary), and the replayed state's rows
    (row_codec.py) intern theirs too, so a judge of a million items holds each id once, not three times."""
    return tuple(sys.intern(i) for i in ids)


@dataclass(frozen=True)
class Neighbour:
    """A feedback row returned by similarity search, with its cosine similarity to the query."""

    row: MemoryRow
    similarity: float
