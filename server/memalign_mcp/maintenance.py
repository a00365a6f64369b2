"""Store maintenance: compaction, scalar indexes and version pruning, by one process at a time, off user calls.

This module owns the list of maintenance steps (`maintenance_steps`, the one place a step is added), the
maintenance lease and the background maintainer of `serve`. Each step is one of the store's primitives; this
module imports no database library and must never run on a user's call: writers only tell the background
maintainer that they wrote (a counter), and never wait for it.

Why it is safe beside writers in any process (LanceDB 0.40's conflict rules, lance's `conflict_resolver.rs`):
compaction is a rewrite of old fragments; an append committed meanwhile is compatible with it, and a delete or
merge touching a fragment it rewrote makes whichever commits second fail with a retryable conflict. A merge
(the commit log's insert-if-absent) re-runs itself on that; deletes and compaction are re-run by the store's
`_retry` (measured with lance 13: a compaction preempted by a delete fails with "Retryable commit conflict ...
Please retry." and leaves its new files for GC). So no commit is lost, and a claim is judged again against the
compacted table. Pruning removes only
versions superseded more than `keep` ago (see `prune_before`), never files that no version lists yet (a write
in flight). Purge is the exception: compaction must not copy bytes it is erasing, so the two exclude each
other (CommitLog.erasing): a maintainer checks the purge lease before every step and stops when it is held.

One maintainer at a time, across processes and replicas: the `l:maintain` row of the commit log, inserted if
absent, with an expiry that a heartbeat thread pushes on while steps run, so a maintainer killed with SIGKILL
holds it at most `lease_ttl_s`. Another maintainer finding it held does nothing and says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

from memalign_mcp.commit_log import MAINTAIN_LEASE
from memalign_mcp.errors import MemAlignError
from memalign_mcp.settings import StoreSettings
from memalign_mcp.store import MemoryStore

log = logging.getLogger(__name__)
LEASE_TTL_S = 60.0  # a maintainer killed mid-run keeps others (and a purge) waiting at most this long
Outcome = Literal["done", "failed", "lease_held", "purge_running", "lease_lost"]
StepStatus = Literal["done", "failed", "not_run"]
StepHook = Callable[[str], None]
# Appends of more rows than this since the last run make the background maintainer run at once (indexes).
_ROWS_DUE = 2_000


def prune_before(created: Sequence[datetime], now: datetime, keep: timedelta) -> datetime | None:
    """The creation time below which versions may be pruned: those superseded more than `keep` ago, or None.

    A version stops being the latest when its successor is made, and readers and writers start only from the
    latest, so one still working from a version began before that moment. LanceDB prunes by a version's own
    age, which would drop a version made long ago but superseded a moment ago (by compaction, say) under a
    reader in another process. So the cutoff is the newest version made more than `keep` ago: every version
    older than it was superseded at least `keep` ago. Naive times are read as local time (as LanceDB gives them).
    """
    times = sorted(t if t.tzinfo else t.astimezone(UTC) for t in created)
    old = [t for t in times if t <= now - keep]
    return old[-1] if old and old[-1] != times[0] else None


def _compact(store: MemoryStore) -> str:
    before = store.fragments()
    store.compact()
    return f"fragments {before} -> {store.fragments()}"


def _scalar_indexes(store: MemoryStore) -> str:
    built, unindexed = store.refresh_indexes()
    return f"built {', '.join(built) or 'none'}; {unindexed} rows unindexed"


def _vector_index(store: MemoryStore) -> str:
    if store.ensure_vector_index():
        return "built"
    return "up to date" if store.has_vector_index() else f"none (below {store.vector_index_min_rows} rows)"


def _prune(store: MemoryStore, keep: timedelta) -> str:
    gone = store.prune(partial(prune_before, now=datetime.now(UTC), keep=keep))
    kept = store.versions()
    return f"{gone} versions pruned, {kept} kept (superseded less than {keep.total_seconds():g} s ago)"


@dataclass(frozen=True)
class Step:
    """One maintenance step: a name for reports and what it does (its result, if any, is the report's detail)."""

    name: str
    run: Callable[[MemoryStore], object]


def maintenance_steps(keep: timedelta) -> list[Step]:
    """Every maintenance step, in order; the one place a step is added."""
    return [
        Step("compact", _compact),
        Step("scalar_indexes", _scalar_indexes),
        # After compaction (it indexes the compacted fragments), before pruning (which frees what it replaced).
        Step("vector_index", _vector_index),
        Step("prune", partial(_prune, keep=keep)),
    ]


@dataclass(frozen=True)
class StepReport:
    """What one step did."""

    name: str
    status: StepStatus
    seconds: float
    detail: str


@dataclass(frozen=True)
class MaintenanceReport:
    """What a maintenance run did, step by step; `outcome` says whether it ran at all."""

    outcome: Outcome
    seconds: float
    steps: list[StepReport] = field(default_factory=list[StepReport])
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (the CLI's --json)."""
        return asdict(self)

    def text(self) -> str:
        """The report for a person: one line of outcome, then one line per step."""
        lines = [
            f"maintenance {self.outcome} in {self.seconds:.2f} s" + (f": {self.note}" if self.note else "")
        ]
        width = max((len(s.name) for s in self.steps), default=0)
        for s in self.steps:
            lines.append(f"  {s.name:<{width}}  {s.status:<7}  {s.seconds:7.2f} s  {s.detail}")
        return "\n".join(lines)


class _Heartbeat:
    """Pushes the lease's expiry on while a run lasts; notes when the lease was lost (expired and taken)."""

    def __init__(self, store: MemoryStore, holder: str, ttl_s: float) -> None:
        self._store, self._holder, self._ttl_s = store, holder, ttl_s
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name="memalign-maintenance-lease", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl_s / 4):
            try:
                if not self._store.log.renew_lease(MAINTAIN_LEASE, self._holder, self._ttl_s):
                    self.lost = True
                    return
            except (RuntimeError, OSError) as exc:  # the next beat tries again, well within the expiry
                log.warning("renewing the maintenance lease failed: %s", exc)


class Maintainer:
    """Runs the maintenance steps on a store under the maintenance lease; safe to run from any process."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        keep: timedelta,
        lease_ttl_s: float = LEASE_TTL_S,
        steps: list[Step] | None = None,
    ) -> None:
        self.store = store
        self.lease_ttl_s = lease_ttl_s
        self.steps = steps if steps is not None else maintenance_steps(keep)
        # Called before each step with its name, the lease held: tests use it to pause or kill a maintainer.
        self.on_step: StepHook | None = None

    def run(self) -> MaintenanceReport:
        """Run every step once, unless another maintainer holds the lease (then nothing is done)."""
        start = time.monotonic()
        holder = self.store.log.try_lease(MAINTAIN_LEASE, self.lease_ttl_s)
        if holder is None:
            return MaintenanceReport(
                "lease_held",
                time.monotonic() - start,
                note="another maintainer holds the lease; nothing was done",
            )
        try:
            with _Heartbeat(self.store, holder, self.lease_ttl_s) as heartbeat:
                return self._steps(start, heartbeat)
        finally:
            self.store.log.release_lease(MAINTAIN_LEASE, holder)

    def _steps(self, start: float, heartbeat: _Heartbeat) -> MaintenanceReport:
        reports: list[StepReport] = []
        outcome: Outcome = "done"
        for step in self.steps:
            if outcome in ("done", "failed"):
                if heartbeat.lost:
                    outcome = "lease_lost"
                elif self.store.lease_holder() is not None:
                    outcome = "purge_running"  # erasure must not race a compaction (see CommitLog.erasing)
            if outcome in ("purge_running", "lease_lost"):
                reports.append(StepReport(step.name, "not_run", 0.0, "postponed to the next run"))
                continue
            if self.on_step is not None:
                self.on_step(step.name)
            began = time.monotonic()
            try:
                result = step.run(self.store)
                reports.append(StepReport(step.name, "done", time.monotonic() - began, _detail(result)))
            except (MemAlignError, RuntimeError, OSError, ValueError) as exc:
                # The other steps still run; this one is tried again next time.
                log.warning("maintenance step %s failed: %s", step.name, exc)
                detail = " ".join(str(exc).split())[:300]
                reports.append(StepReport(step.name, "failed", time.monotonic() - began, detail))
                outcome = "failed"
        notes = {
            "purge_running": "a purge holds the store; the remaining steps wait for the next run",
            "lease_lost": "the lease expired and was taken by another maintainer; the remaining steps were left",
        }
        return MaintenanceReport(outcome, time.monotonic() - start, reports, notes.get(outcome, ""))


def _detail(result: object) -> str:
    return "" if result is None else str(result)


class BackgroundMaintenance:
    """`serve`'s maintainer: a daemon thread that runs maintenance every interval and after enough writes.

    Writers of this process only count their writes here (the store's `on_write`); the run itself happens on
    this thread, never on a user's call, and takes the same lease as `memalign-mcp maintain`.
    """

    def __init__(self, store: MemoryStore, settings: StoreSettings) -> None:
        self.store = store
        self.interval_s = settings.maintain_interval_s
        self.after_writes = settings.maintain_after_writes
        self.maintainer = Maintainer(store, keep=timedelta(seconds=settings.keep_versions_s))
        self.runs = 0  # completed runs, for tests and logs
        self._lock = threading.Lock()
        self._writes = self._rows = 0
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memalign-maintenance", daemon=True)

    def start(self) -> BackgroundMaintenance:
        """Start the thread (nothing when the interval is 0: maintenance is then left to `maintain`)."""
        if self.interval_s > 0:
            self.store.on_write = self._wrote
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the step in progress (a LanceDB commit cannot be interrupted) and wait for the thread."""
        self._stop.set()
        self._due.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.store.on_write == self._wrote:
            self.store.on_write = None

    def _wrote(self, rows: int) -> None:
        with self._lock:
            self._writes += 1
            self._rows += rows
            due = (self.after_writes and self._writes >= self.after_writes) or self._rows > _ROWS_DUE
        if due:
            self._due.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self.interval_s)
            if self._stop.is_set():
                return
            with self._lock:
                self._due.clear()
                self._writes = self._rows = 0
            try:
                report = self.maintainer.run()
            except (MemAlignError, RuntimeError, OSError, ValueError) as exc:  # e.g. the lease row unreadable
                log.warning("background maintenance failed, tried again next time: %s", exc)
                continue
            self.runs += 1
            log.info("%s", report.text())
