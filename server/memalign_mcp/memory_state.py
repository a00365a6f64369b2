"""A judge's memory as of one commit, and how it is rebuilt by replaying commits.

`MemoryState` is what every reader sees; `replay` and `apply_commits` are the only way one is made, so the
visibility rule lives here: a row counts only through the commit of its transaction (rows of transactions that
never committed are never read), drops apply before puts, and a row a commit put that is no longer stored (a
purge erased it) marks the item missing, so an old version that held purged content is known to be gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property

from memalign_mcp.records import Commit, ItemKey, MemoryRow


def _age(row: MemoryRow) -> tuple[float, str]:
    return (row.created_at.timestamp(), row.item_id)


@dataclass(frozen=True)
class MemoryState:
    """A judge's memory as of one commit: its spec, feedback, guidelines and which feedback is pending."""

    judge: str
    gen: str
    seq: int
    version: int
    spec_json: str
    created_at: datetime
    feedback: dict[str, MemoryRow]
    guidelines: dict[str, MemoryRow]
    pending: frozenset[str]
    whole: bool  # feedback rows carry their content (body and text) and vectors; else ids and hashes only
    # Items this state holds whose rows were purged since (only an older state can have any).
    missing: frozenset[ItemKey] = frozenset()
    vectors: bool = False  # feedback rows carry their vectors (always so when whole): searched in memory

    @cached_property
    def _guidelines_in_order(self) -> list[MemoryRow]:
        return sorted(self.guidelines.values(), key=_age)

    @cached_property
    def _feedback_in_order(self) -> list[MemoryRow]:
        # Sorted once per state: comparing 100k aware datetimes takes a while, and every page would pay it.
        return sorted(self.feedback.values(), key=_age)

    def guideline_rows(self) -> list[MemoryRow]:
        """The guidelines, oldest first."""
        return list(self._guidelines_in_order)

    def feedback_rows(self) -> list[MemoryRow]:
        """The feedback items, oldest first."""
        return list(self._feedback_in_order)


def replay(
    judge: str, commits: Sequence[Commit], rows: Iterable[MemoryRow], *, whole: bool, vectors: bool = False
) -> MemoryState:
    """The state after `commits` (one generation, in order), from the rows their transactions wrote."""
    by_txn: dict[str, list[MemoryRow]] = {}
    for r in rows:
        by_txn.setdefault(r.txn, []).append(r)
    first = commits[0]
    return apply_commits(
        MemoryState(
            judge,
            first.gen,
            0,
            0,
            first.spec_json,
            first.created_at,
            {},
            {},
            frozenset(),
            whole,
            vectors=whole or vectors,
        ),
        commits,
        by_txn,
    )


def apply_commits(
    state: MemoryState, commits: Sequence[Commit], by_txn: dict[str, list[MemoryRow]]
) -> MemoryState:
    """The state after `commits` (newer than `state`, in order), given the rows their transactions wrote."""
    feedback = dict(state.feedback)
    guidelines = dict(state.guidelines)
    pending = set(state.pending)
    missing = set(state.missing)
    last = None
    for c in commits:
        for kind, ids in c.drops.items():
            target = feedback if kind == "feedback" else guidelines
            for i in ids:
                target.pop(i, None)
                missing.discard((kind, i))
                if kind == "feedback":
                    pending.discard(i)
        written = by_txn.get(c.txn, [])
        for r in written:
            missing.discard((r.kind, r.item_id))
            if r.kind == "feedback":
                feedback[r.item_id] = r
                (pending.add if r.pending else pending.discard)(r.item_id)
            else:
                guidelines[r.item_id] = r
        found = {(r.kind, r.item_id) for r in written}
        for kind, ids in c.puts.items():
            for i in ids:
                if (kind, i) not in found:
                    missing.add((kind, i))  # committed, then erased by a purge
                    (feedback if kind == "feedback" else guidelines).pop(i, None)
        pending |= {i for i in c.pending_on if i in feedback}
        pending -= set(c.pending_off)
        last = c
    if last is None:
        return state
    return replace(
        state,
        seq=last.seq,
        version=last.version,
        spec_json=last.spec_json,
        feedback=feedback,
        guidelines=guidelines,
        pending=frozenset(pending),
        missing=frozenset(missing),
    )
