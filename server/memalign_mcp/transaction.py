"""Memory transactions: the one owner of "every change is all or nothing, versioned, and never lost".

Every change to a judge (create, feedback added or removed, guidelines distilled, spec updated, rollback, delete)
goes through `Ledger.change`, and nothing else in the engine writes to the store. A change is made in three steps:
1. read the judge's state at its latest commit (number `seq`);
2. `prepare` computes everything off to the side from that state: embeddings, distillation, re-derivation,
   merges. It may call models and may fail; nothing has been written yet, so a failure leaves the judge as it
   was, for every reader in every process;
3. commit: the rows are appended to the memory table, then a commit row numbered seq+1 is inserted into the
   commit log if that number is free (see commit_log.py for why this is exclusive between processes, on local
   disk and object storage alike). If another writer took it, the commits in between are compared with what
   the change read and wrote: when they touched none of it (two adds of different items), the change is
   committed on top of them unchanged; when they did (a removal of an item this change distilled from, a
   guideline edited meanwhile, the judge deleted), the change is prepared again from the new state. A change
   overlapped three times runs alone under the lease, so a slow one is not starved by fast ones.

Readers build a judge's state by replaying its commits: rows become visible only through the commit of their
transaction, so a change interrupted at any instant (an exception, a SIGKILL) leaves either no commit (its rows
are orphans: invisible, deleted later) or the whole commit. Caches are keyed by (generation, commit number), which
every commit changes, and a deleted and re-created judge has a new generation, so it never sees the old rows.

What LanceDB 0.40 offered and what it did not (measured; see BENCHMARKS.md and the transactions issue's note):
- offered: atomic single-table commits; `merge_insert` insert-if-absent arbitrated across processes with a
  truthful `num_inserted_rows`, but only when the merge uses no scalar index on the key (with a B-tree, 7-21 of
  60-200 contended keys were won twice); `when_not_matched_by_source_delete` with a condition (purge); row
  addresses; version checks cheap enough to run on every read.
- not offered: multi-table atomic commits; a conditional commit on a logical predicate ("only if the judge is
  still at version v"): `when_matched_update_all(where=...)` skips the rows that fail but commits the rest;
  an index-backed insert-if-absent that stays exclusive. Hence the commit log, invisible rows and the replay.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from memalign_mcp.errors import InvalidInputError, MemAlignError, UnknownJudgeError
from memalign_mcp.freshness import Freshness
from memalign_mcp.heap import give_back_free_memory
from memalign_mcp.memory_state import MemoryState, apply_commits, replay
from memalign_mcp.models import is_judge_name
from memalign_mcp.records import Commit, ItemKey, Kind, MemoryRow, Op, Summary, new_txn
from memalign_mcp.row_codec import lean
from memalign_mcp.store import MemoryStore

log = logging.getLogger(__name__)
# Judges with at most this many stored feedback rows keep whole rows in their cached state (content and vector,
# about 10 KB each with FeedbackQA's texts); up to the store's `vector_index_min_rows`, ids and vectors only
# (2 KB), for an exact search in memory (retrieval.py); larger judges hold ids only (0.5 KB) and are searched
# in LanceDB's index. BENCHMARKS.md, retrieval at scale, has what each costs.
ROWS_IN_MEMORY = 2_000
# How many times a change is prepared again after commits of others overlapped it.
_REDO_LIMIT = 12
_REREAD_LIMIT = 3
_ALONE_AFTER = 3  # attempts before a change takes the lease and runs alone


class ConflictError(MemAlignError):
    """A change kept colliding with changes from other callers and was given up; nothing of it was stored."""


class StoreReadError(MemAlignError):
    """The store read back something that cannot be (a gap in a judge's commits), even after reading again."""


class JudgeGoneError(MemAlignError):
    """The judge was deleted (or deleted and made again) while a change to it was being prepared."""


@dataclass
class Change:
    """What a transaction will commit, computed by its `prepare` step from one state."""

    op: Op
    rows: list[MemoryRow] = field(default_factory=list[MemoryRow])
    drops: dict[Kind, list[str]] = field(default_factory=dict[Kind, list[str]])
    pending_on: list[str] = field(default_factory=list[str])
    pending_off: list[str] = field(default_factory=list[str])
    # What the change depended on: a commit of another writer touching any of it forces a new prepare.
    reads: set[ItemKey] = field(default_factory=set[ItemKey])
    reads_all_guidelines: bool = False
    dropped_sources: set[str] = field(default_factory=set[str])  # sources of the guidelines it drops
    summary: Summary = field(default_factory=Summary)
    spec_json: str | None = None  # a new spec (create, update)
    restore_of: int | None = None

    def empty(self) -> bool:
        """True when committing would change nothing."""
        return not (self.rows or any(self.drops.values()) or self.pending_on or self.pending_off) and (
            self.spec_json is None and self.op not in ("create", "delete", "purge")
        )

    def footprint(self) -> set[ItemKey]:
        """Every (kind, id) the change read or writes."""
        out: set[ItemKey] = set(self.reads) | {(r.kind, r.item_id) for r in self.rows}
        out |= {(k, i) for k, ids in self.drops.items() for i in ids}
        out |= {("feedback", i) for i in (*self.pending_on, *self.pending_off, *self.cites())}
        return out

    def cites(self) -> set[str]:
        """Feedback whose influence the change alters: sources of the guidelines it writes or drops."""
        return {s for r in self.rows if r.kind == "guideline" for s in r.sources} | self.dropped_sources


Prepare = Callable[[MemoryState], Change | None]
StepHook = Callable[[str, str], None]


def _overlaps(change: Change, gen: str, commits: Sequence[Commit]) -> bool:
    """True when a commit of another writer touched what the change read or writes (so it must be redone)."""
    footprint = change.footprint()
    for c in commits:
        if c.gen != gen or c.op in ("create", "delete", "update", "rollback") or change.spec_json is not None:
            return True
        touched = c.touched()
        if touched & footprint:
            return True
        if change.reads_all_guidelines and any(k == "guideline" for k, _ in touched):
            return True
    return False


def _puts(rows: Sequence[MemoryRow]) -> dict[Kind, list[str]]:
    """The item ids a commit writes, by kind (what its commit row lists)."""
    out: dict[Kind, list[str]] = {}
    for r in rows:
        out.setdefault(r.kind, []).append(r.item_id)
    return out


def _fits(change: Change, latest: MemoryState) -> bool:
    """True when, applied on top of `latest`, the change leaves no guideline citing a missing item.

    The overlap check decides from commit footprints; this checks the one invariant readers rely on against
    the state itself, so a rebase can never resurrect an influence that another commit removed.
    """
    dropped = set(change.drops.get("feedback", ()))
    present = (set(latest.feedback) | {r.item_id for r in change.rows if r.kind == "feedback"}) - dropped
    return all(set(r.sources) <= present for r in change.rows if r.kind == "guideline")


class Ledger:
    """Reads judges as of their latest (or an older) commit, and commits changes to them; thread-safe."""

    def __init__(self, store: MemoryStore, *, freshness_s: float = 0.0) -> None:
        """A ledger over the store; `freshness_s` bounds how old a read may be after a commit elsewhere.

        With 0, every read asks the store whether anything was committed (one request per score on S3); with
        F > 0 reads ask at most once per F, writes always ask, and a removal waits F (freshness.py).
        """
        self.store = store
        self._commits: dict[str, tuple[int, list[Commit]]] = {}  # judge -> (table version read at, commits)
        self._states: dict[str, MemoryState] = {}
        self.freshness = Freshness(lambda: store.version, freshness_s)
        # Called at each step of a change (name, step): tests use it to force interleavings and failures.
        self.on_step: StepHook | None = None

    def forget_cached(self, name: str) -> None:
        """Drop the judge's cached state (its rows), so the next read replays it from the store."""
        self._states.pop(name, None)

    # --- reading ------------------------------------------------------------------------------------------

    def commits(self, name: str, *, fresh: bool = False) -> list[Commit]:
        """Every commit of a judge name, read again only when the table has changed since the last read.

        `fresh` asks the store even within the freshness bound (every write does).

        Commit numbers are contiguous from 1, so a gap means a read missed a commit: measured with LanceDB
        0.40 while purges rewrote rows in another process, an indexed read once returned a commit's
        successors but not the commit. Then every commit is read again; a change is never checked or
        replayed against a history with a hole in it.
        """
        if not is_judge_name(name):
            # No judge can have it, so the store's queries never see it (a lone surrogate crashed one).
            return []
        version = self.freshness.version(fresh=fresh)
        cached = self._commits.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        known = cached[1] if cached is not None else []
        # Read after the version: commits newer than it are read at the next check, never missed.
        commits = known + self.store.commits(name, after=known[-1].seq if known else 0)
        for _ in range(_REREAD_LIMIT):
            if all(c.seq == n for n, c in enumerate(commits, start=1)):
                break
            log.warning("judge %r: commit numbers had a gap; reading every commit again", name)
            commits = self.store.commits(name, after=0)
        else:
            raise StoreReadError(
                f"Judge {name!r}: the store's commits read back with a gap {_REREAD_LIMIT} times; nothing was "
                "changed. Call again; if it persists, run the store check (see the README)."
            )
        self._commits[name] = (version, commits)
        return commits

    def head(self, name: str, *, fresh: bool = False) -> Commit | None:
        """A judge name's latest commit, or None if it never existed."""
        commits = self.commits(name, fresh=fresh)
        return commits[-1] if commits else None

    def names(self) -> list[str]:
        """Every judge that exists now, sorted."""
        latest: dict[str, Commit] = {}
        for c in self.store.all_commits():
            latest[c.judge] = c
        return sorted(n for n, c in latest.items() if not c.deleted)

    def generation(self, name: str, *, fresh: bool = False) -> list[Commit]:
        """The commits of the judge's current generation; UnknownJudgeError if it does not exist."""
        commits = self.commits(name, fresh=fresh)
        if not commits or commits[-1].deleted:
            raise UnknownJudgeError(name, self.names())
        start = max(i for i, c in enumerate(commits) if c.op == "create")
        return commits[start:]

    def state(self, name: str, *, fresh: bool = False) -> MemoryState:
        """The judge's memory as of its latest commit (cached; only new commits are read).

        Without `fresh`, as of a check at most the freshness bound old (see freshness.py).
        """
        gen = self.generation(name, fresh=fresh)
        head = gen[-1]
        cached = self._states.get(name)
        if cached is not None and cached.gen == head.gen and cached.seq == head.seq:
            return cached
        if cached is not None and cached.gen == head.gen and cached.seq < head.seq:
            newer = [c for c in gen if c.seq > cached.seq]
            rows = self.store.rows_of_txns(
                name, [c.txn for c in newer], content=cached.whole, vectors=cached.vectors
            )
            by_txn: dict[str, list[MemoryRow]] = {}
            for r in rows:
                by_txn.setdefault(r.txn, []).append(r)
            state = apply_commits(cached, newer, by_txn)
            if self._outgrown(state):
                state = self._rebuild(name, gen)  # grown past its kind: hold less from now on
        else:
            state = self._rebuild(name, gen)
        self._states[name] = state
        return state

    def _outgrown(self, state: MemoryState) -> bool:
        """True when a cached state holds more per item than a judge of its size gets (see ROWS_IN_MEMORY)."""
        if state.whole:
            return len(state.feedback) > ROWS_IN_MEMORY
        return state.vectors and len(state.feedback) >= self.store.vector_index_min_rows

    def _rebuild(self, name: str, gen: list[Commit]) -> MemoryState:
        head = gen[-1]
        stored = self.store.count_feedback_rows(name, head.gen)
        whole = stored <= ROWS_IN_MEMORY
        vectors = stored < self.store.vector_index_min_rows
        rows = self.store.rows_of_generation(name, head.gen, content=whole, vectors=vectors)
        state = replay(name, gen, rows, whole=whole, vectors=vectors)
        give_back_free_memory()  # reading every row of a large judge frees far more than the state keeps
        return state

    def state_at(self, name: str, version: int) -> MemoryState:
        """The judge's memory as it was at an older memory version (replayed, not cached)."""
        gen = self.generation(name)
        upto = [c for c in gen if c.version <= version]
        if version < 0 or version > gen[-1].version:
            raise InvalidInputError("version", version, f"a memory version from 0 to {gen[-1].version}")
        rows = self.store.rows_of_generation(name, gen[-1].gen, content=True)
        return replay(name, upto, rows, whole=True)

    def whole_rows(self, state: MemoryState, ids: Iterable[str]) -> dict[str, MemoryRow]:
        """Feedback rows of these ids with their content (read by key when the state holds none)."""
        found = [state.feedback[i] for i in ids if i in state.feedback]
        if state.whole:
            return {r.item_id: r for r in found}
        by_key = self.store.rows_by_key(r.key for r in found)
        return {r.item_id: by_key[r.key] for r in found if r.key in by_key}

    # --- writing ------------------------------------------------------------------------------------------

    def _step(self, name: str, step: str) -> None:
        if self.on_step is not None:
            self.on_step(name, step)

    def change(
        self, name: str, prepare: Prepare, *, who: str | None = None
    ) -> tuple[Commit | None, MemoryState]:
        """Prepare a change from the judge's latest state and commit it atomically; redo on overlap.

        Returns the commit (None when there was nothing to change) and the state the change was prepared from.
        Raises whatever `prepare` raises (nothing is stored then), JudgeGoneError if the judge is deleted or
        replaced meanwhile, ConflictError after _REDO_LIMIT overlapping commits of others.
        """
        pinned: list[str] = []
        for attempt in range(_REDO_LIMIT):
            if attempt < _ALONE_AFTER or self.store.holding():
                done = self._attempt(name, prepare, who, pinned)
            else:
                # Overlapped again and again by busier writers: run alone under the lease, which every
                # writer waits for, so a slow change (a model call) is never starved by fast ones.
                with self.store.exclusive(fence=False):
                    done = self._attempt(name, prepare, who, pinned)
            if done is not None:
                return done
            # Jittered backoff: two writers that keep overlapping must not keep colliding in lockstep.
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise ConflictError(
            f"Judge {name!r} was changed by other callers {_REDO_LIMIT} times while this call was being "
            "prepared; nothing of it was stored. Call again."
        )

    def _attempt(
        self, name: str, prepare: Prepare, who: str | None, pinned: list[str]
    ) -> tuple[Commit | None, MemoryState] | None:
        """Prepare once and try to commit; None when commits of others overlapped it (prepare again)."""
        state = self.state(name, fresh=True)
        if pinned and state.gen != pinned[0]:
            raise JudgeGoneError(
                f"Judge {name!r} was deleted (and perhaps made again) while this call ran; nothing of the "
                "call was stored. Call list_judges, then call again if the judge is the one you meant."
            )
        pinned[:] = [state.gen]
        change = prepare(state)
        if change is None or change.empty():
            return None, state
        self._step(name, f"{change.op}:prepared")
        commit = self._commit(name, state, change, who)
        if commit is None:
            log.info(
                "judge %r changed meanwhile in ways this %s depends on; preparing again", name, change.op
            )
            return None
        self._step(name, f"{change.op}:committed")
        return commit, state

    def _commit(self, name: str, state: MemoryState, change: Change, who: str | None) -> Commit | None:
        """Commit on top of the latest head; None when commits since `state` overlap the change.

        Losing the race for a commit number only means rebasing; a writer that lost backs off a little, so
        that many writers of one judge do not all race for every number (measured: escalating to the lease
        after a few lost races made the stress run three times slower, the lease not being a fair queue).
        """
        txn = new_txn()
        for lost in itertools.count():
            if lost:
                time.sleep(random.uniform(0, 0.005 * min(lost, 10)))
            head = self.head(name, fresh=True)
            assert head is not None
            if head.seq != state.seq:
                between = [c for c in self.commits(name, fresh=True) if c.seq > state.seq]
                if _overlaps(change, state.gen, between) or not _fits(change, self.state(name, fresh=True)):
                    return None
            commit = self._record(name, head, gen=state.gen, txn=txn, change=change, who=who)
            rows = [replace(r, judge=name, gen=state.gen, txn=txn) for r in change.rows]
            self._step(name, f"{change.op}:writing")
            if self.store.commit(commit, rows):
                self.freshness.committed()
                self._remember(name, commit, rows)
                return commit
        raise AssertionError("unreachable: the loop returns")

    def _remember(self, name: str, commit: Commit, rows: list[MemoryRow]) -> None:
        """Apply our own commit to the caches, so the next read of the judge need not read it back.

        Only when the caches were exactly one commit behind; their table version is left as it was, so the
        next read still asks the store for anything committed after ours.
        """
        self._remember_commit(name, commit)
        state = self._states.get(name)
        if state is not None and state.gen == commit.gen and state.seq == commit.seq - 1:
            if not state.whole:  # a lean state holds no content (row_codec.py), so neither do ours
                rows = [lean(r, keep_vector=state.vectors) for r in rows]
            state = apply_commits(state, [commit], {commit.txn: rows})
            if self._outgrown(state):
                self._states.pop(name, None)  # past its kind: the next read rebuilds it holding less
            else:
                self._states[name] = state

    def _remember_commit(self, name: str, commit: Commit) -> None:
        """Add our own commit to the cached commits, or drop them: within the freshness bound the store is not
        asked again, and this process must read its own writes."""
        cached = self._commits.get(name)
        if cached is not None and (cached[1][-1].seq if cached[1] else 0) == commit.seq - 1:
            self._commits[name] = (cached[0], [*cached[1], commit])
        else:
            self._commits.pop(name, None)

    @staticmethod
    def _record(name: str, head: Commit, *, gen: str, txn: str, change: Change, who: str | None) -> Commit:
        puts = _puts(change.rows)
        return Commit(
            judge=name,
            seq=head.seq + 1,
            gen=gen,
            txn=txn,
            version=head.version + 1,
            op=change.op,
            who=who,
            created_at=datetime.now(UTC),
            spec_json=change.spec_json if change.spec_json is not None else head.spec_json,
            puts={k: tuple(v) for k, v in puts.items()},
            drops={k: tuple(v) for k, v in change.drops.items() if v},
            pending_on=tuple(change.pending_on),
            pending_off=tuple(change.pending_off),
            cites=tuple(sorted(change.cites())),
            summary=change.summary,
            restore_of=change.restore_of,
        )

    def create(
        self,
        name: str,
        spec_json: str,
        *,
        who: str | None = None,
        only_if_new_name: bool = False,
        rows: Sequence[MemoryRow] = (),
        version: int = 0,
    ) -> Commit | None:
        """Make a judge (a new generation at memory version 0); None if the name exists (or ever existed).

        `only_if_new_name` is for shipped judges: they are made once per store, so one an operator deleted
        stays deleted. `rows` and `version` carry a judge over from a 0.1 store in the same commit.
        """
        while True:
            head = self.head(name, fresh=True)
            if head is not None and (only_if_new_name or not head.deleted):
                return None
            gen, txn = uuid.uuid4().hex, new_txn()
            puts = _puts(rows)
            commit = Commit(
                judge=name,
                seq=(head.seq if head else 0) + 1,
                gen=gen,
                txn=txn,
                version=version,
                op="create",
                who=who,
                created_at=datetime.now(UTC),
                spec_json=spec_json,
                puts={k: tuple(v) for k, v in puts.items()},
                summary=Summary(
                    feedback_added=tuple(puts.get("feedback", ())),
                    guidelines_added=tuple(puts.get("guideline", ())),
                ),
            )
            if self.store.commit(commit, [replace(r, judge=name, gen=gen, txn=txn) for r in rows]):
                self.freshness.committed()
                self._remember_commit(name, commit)
                return commit

    def delete(self, name: str, *, who: str | None = None) -> tuple[Commit, MemoryState]:
        """Delete a judge: one commit hides all its rows at once; then its rows are deleted from the store."""
        while True:
            state = self.state(name, fresh=True)
            head = self.head(name, fresh=True)
            assert head is not None
            commit = replace(
                self._record(name, head, gen=state.gen, txn=new_txn(), change=Change(op="delete"), who=who),
                summary=Summary(
                    feedback_removed=tuple(sorted(state.feedback)),
                    guidelines_removed=tuple(sorted(state.guidelines)),
                ),
            )
            self._step(name, "delete:writing")
            if self.store.commit(commit, []):
                self.freshness.committed()
                self._remember_commit(name, commit)
                break
        self._states.pop(name, None)
        # Invisible already; deleting them frees the space and keeps old private text out of later scans. The
        # delete is committed, so a failure here is logged, not raised: the rows stay invisible either way.
        try:
            self.store.delete_generation(name, state.gen)
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("judge %r is deleted; freeing its rows failed and is left for later: %s", name, exc)
        return commit, state
