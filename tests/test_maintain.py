"""Store maintenance: never on a user's call, one maintainer at a time across processes, nothing lost beside
writers of another process, a killed maintainer's lease expires, and `memalign-mcp maintain` reports and exits
as documented. Other processes are coordinated through pause points (store_worker.py), never sleeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import lancedb  # pyright: ignore[reportMissingTypeStubs]  # a second, stale handle on the table (one test)
import pytest
from mcp import Client

from conftest import hashing_settings
from memalign_mcp import cli
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.app import build_server, open_default_engine
from memalign_mcp.commit_log import MAINTAIN_LEASE
from memalign_mcp.errors import SettingsError
from memalign_mcp.maintenance import BackgroundMaintenance, Maintainer, maintenance_steps, prune_before
from memalign_mcp.models import JudgeSpec, RemoveFeedbackResult
from memalign_mcp.seed_scenario import ALIGNMENT, JUDGE
from memalign_mcp.settings import Settings, StoreSettings, load_settings
from store_worker import open_worker_engine, stream_item
from test_two_processes import TIMEOUT_S, Worker, worker

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"
KEEP = timedelta(minutes=10)
STEPS = ["compact", "scalar_indexes", "vector_index", "prune"]


def _one_by_one(engine: MemAlignService, count: int, prefix: str = "i", judge: str = JUDGE) -> None:
    """`count` single-item adds: one commit (and at least one fragment) each."""
    for n in range(count):
        engine.add_feedback(judge, [{**ALIGNMENT[0], "id": f"{prefix}{n}", "inputs": f"item {n}"}])


def _counting(engine: MemAlignService, calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Record (primitive, thread name) in `calls` for every maintenance primitive the store runs from now on."""
    for name in ("compact", "refresh_indexes", "ensure_vector_index", "prune"):
        original: Callable[..., Any] = getattr(engine.store, name)

        def counted(*args: Any, _name: str = name, _original: Callable[..., Any] = original) -> Any:
            calls.append((_name, threading.current_thread().name))
            return _original(*args)

        setattr(engine.store, name, counted)
    return calls


def test_versions_are_pruned_only_once_superseded_for_the_grace_period() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    # Made five hours ago, superseded a second ago (by a compaction, say): a reader may still be on it.
    assert prune_before([now - timedelta(hours=5), now - timedelta(seconds=1)], now, KEEP) is None
    made = [
        now - timedelta(hours=5),
        now - timedelta(hours=4),
        now - timedelta(minutes=11),
        now - timedelta(minutes=2),
    ]
    # The first two were superseded 11 minutes ago or more; the third only 2 minutes ago, so it stays.
    assert prune_before(made, now, KEEP) == made[2]
    # Nothing written for longer than the grace period: everything but the latest may go.
    assert prune_before(made[:3], now, KEEP) == made[2]
    naive_local = (now - timedelta(hours=1)).astimezone().replace(tzinfo=None)  # as LanceDB reports times
    assert prune_before([naive_local, now], now, KEEP) is None


def test_user_calls_never_maintain_the_store_and_a_maintenance_run_compacts_it(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    calls = _counting(engine, [])
    _one_by_one(engine, 120)
    engine.remove_feedback(JUDGE, ["i0"])
    before = engine.score(JUDGE, "item 7", ALIGNMENT[0]["outputs"])
    assert calls == []  # 121 writes and a score, and no compaction, index build or pruning on any of them
    assert engine.store.fragments() >= 120  # so the fragments pile up until maintenance runs
    report = Maintainer(engine.store, keep=KEEP).run()
    assert report.outcome == "done"
    assert [(s.name, s.status) for s in report.steps] == [(name, "done") for name in STEPS]
    assert [name for name, _ in calls] == ["compact", "refresh_indexes", "ensure_vector_index", "prune"]
    assert engine.store.fragments() < 5
    fresh = open_worker_engine(str(tmp_path))
    assert fresh.list_feedback(JUDGE, limit=500).total == 119
    assert fresh.score(JUDGE, "item 7", ALIGNMENT[0]["outputs"]).examples_used == before.examples_used
    # With no interval, `serve` leaves maintenance to `memalign-mcp maintain` (cron): writes are not even counted.
    BackgroundMaintenance(fresh.store, StoreSettings(maintain_interval_s=0)).start()
    assert fresh.store.on_write is None


@pytest.fixture
def anyio_backend() -> str:
    """The in-memory MCP client runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def maintained(tmp_path: Path) -> AsyncIterator[tuple[Client, list[tuple[str, str]], threading.Event]]:
    """A client of a server that maintains after 5 writes; the store's maintenance calls, set when one ran."""
    settings = hashing_settings(tmp_path, overrides={"store.maintain_after_writes": 5})
    calls: list[tuple[str, str]] = []
    pruned = threading.Event()

    def factory(s: Settings) -> MemAlignService:
        engine = open_default_engine(s)
        _counting(engine, calls)
        counted = engine.store.prune

        def prune(*args: Any) -> None:
            counted(*args)
            pruned.set()  # prune is the last step: one maintenance run has ended

        engine.store.prune = prune  # type: ignore[method-assign]  # the test's hook on the store
        return engine

    async with Client(build_server(settings, factory)) as client:
        yield client, calls, pruned


@pytest.mark.anyio
async def test_the_server_maintains_in_a_background_thread_never_on_a_tool_call(
    maintained: tuple[Client, list[tuple[str, str]], threading.Event],
) -> None:
    client, calls, pruned = maintained
    for n in range(6):
        item = {**ALIGNMENT[0], "id": f"m{n}", "inputs": f"item {n}"}
        result = await client.call_tool("add_feedback", {"judge": JUDGE, "feedback": [item]})
        assert not result.is_error
    assert await anyio.to_thread.run_sync(pruned.wait, TIMEOUT_S), "no maintenance run after 6 writes"
    assert {name for name, _ in calls} == {"compact", "refresh_indexes", "ensure_vector_index", "prune"}
    assert {thread for _, thread in calls} == {"memalign-maintenance"}
    listed = await client.call_tool("list_feedback", {"judge": JUDGE})
    assert listed.structured_content is not None
    assert listed.structured_content["total"] == 6


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MEMALIGN_")}


def test_of_two_maintainers_at_once_one_works_and_the_other_says_the_lease_is_held(tmp_path: Path) -> None:
    here = open_worker_engine(str(tmp_path))
    _one_by_one(here, 10)
    with worker(tmp_path) as other:
        other.send({"maintain": {"pause_at": "compact"}})
        assert other.read() == "AT maintain:compact"  # it holds the lease and is about to compact
        second = subprocess.run(
            [sys.executable, "-m", "memalign_mcp.cli", "maintain", "--json", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=_cli_env(),
            check=False,
        )
        assert second.returncode == cli.EXIT_NOT_MAINTAINED == 3, second.stderr
        skipped = json.loads(second.stdout)
        assert skipped["outcome"] == "lease_held"
        assert skipped["steps"] == []
        assert "another maintainer holds the lease" in skipped["note"]
        other.send("GO")
        reply = other.read()
        assert reply is not None
        assert reply.startswith("OK ")
        done = json.loads(reply[3:])
    assert done["outcome"] == "done"
    assert [s["status"] for s in done["steps"]] == ["done"] * len(STEPS)
    assert here.store.fragments() < 5
    assert here.store.log.lease_holder(MAINTAIN_LEASE) is None  # given back


def test_a_maintainer_killed_holding_the_lease_blocks_others_only_until_it_expires(tmp_path: Path) -> None:
    here = open_worker_engine(str(tmp_path))
    _one_by_one(here, 5)
    with worker(tmp_path) as other:
        other.send({"maintain": {"pause_at": "compact", "lease_ttl_s": 3}})
        assert other.read() == "AT maintain:compact"
        holder = here.store.log.lease_holder(MAINTAIN_LEASE)
        assert holder is not None
        # While it lives, its heartbeat keeps the lease past the 3 s it was taken for.
        outlived = time.monotonic() + 4.5
        while time.monotonic() < outlived:
            assert here.store.log.lease_holder(MAINTAIN_LEASE) == holder
            time.sleep(0.25)
        other.kill()  # SIGKILL: its lease row stays behind
    # Writers never wait for a maintainer, dead or alive.
    here.add_feedback(JUDGE, [stream_item(1)])
    assert Maintainer(here.store, keep=KEEP).run().outcome == "lease_held"
    deadline = time.monotonic() + TIMEOUT_S
    while here.store.log.lease_holder(MAINTAIN_LEASE) is not None:  # the expiry, not a sleep of ours, decides
        assert time.monotonic() < deadline, "the dead maintainer's lease never expired"
        time.sleep(0.05)
    report = Maintainer(here.store, keep=KEEP).run()
    assert report.outcome == "done"
    assert here.store.fragments() < 5
    assert open_worker_engine(str(tmp_path)).list_feedback(JUDGE).total == 6


class _FirstFromAnOlderVersion:
    """The memory table, except that the first optimize runs from a handle opened before a concurrent delete."""

    def __init__(self, table: Any, older: Any) -> None:
        self.table, self.older = table, older
        self.errors: list[str] = []

    def optimize(self, **kwargs: Any) -> Any:
        table, self.older = (self.older or self.table), None
        try:
            return table.optimize(**kwargs)
        except RuntimeError as exc:
            self.errors.append(str(exc))
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


def test_a_compaction_preempted_by_a_concurrent_delete_is_run_again_and_loses_nothing(tmp_path: Path) -> None:
    here = open_worker_engine(str(tmp_path))
    _one_by_one(here, 6)
    spec = here.get_judge(JUDGE).model_dump(include=set(JudgeSpec.model_fields))
    here.create_judge(JudgeSpec.model_validate(spec | {"name": "other"}))
    _one_by_one(here, 4, judge="other")
    # A handle without read consistency stays on this version, as a compaction planned now would.
    older = lancedb.connect(str(tmp_path / "lancedb")).open_table("memory_v2")
    here.delete_judge("other")  # deletes the judge's rows: a delete in fragments the compaction rewrites
    proxy = _FirstFromAnOlderVersion(here.store._memory, older)  # pyright: ignore[reportPrivateUsage]  # the seam
    here.store._memory = proxy  # pyright: ignore[reportPrivateUsage]
    report = Maintainer(here.store, keep=KEEP, steps=maintenance_steps(KEEP)[:1]).run()
    assert report.outcome == "done", report
    assert len(proxy.errors) == 1
    assert "Retryable commit conflict" in proxy.errors[0]  # LanceDB's own words, which the store re-runs on
    assert here.store.fragments() < 3
    fresh = open_worker_engine(str(tmp_path))
    assert fresh.list_feedback(JUDGE).total == 6
    assert "other" not in {j.name for j in fresh.list_judges().judges}


def _acked(w: Worker, count: int, log: list[str]) -> None:
    seen = 0
    while seen < count:
        line = w.read()
        assert line is not None, "the writer died"
        log.append(line)
        seen += line.startswith("ACK ")


def test_maintenance_beside_a_writer_in_another_process_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    here = open_worker_engine(str(tmp_path))
    here.add_feedback(JUDGE, ALIGNMENT)
    log: list[str] = []
    reports: list[dict[str, Any]] = []
    with worker(tmp_path) as other:
        other.send({"stream": {"seed": 3, "start": 0, "purge": False}})
        pruned = 0
        deadline = time.monotonic() + TIMEOUT_S
        # At least 6 runs, and on until one has pruned versions while the other process writes: a grace of
        # 3 s (every write here takes far less) passes after a few seconds of writing, however fast they go.
        while len(reports) < 6 or not pruned:
            assert time.monotonic() < deadline, reports
            _acked(other, 8, log)
            reports.append(Maintainer(here.store, keep=timedelta(seconds=3)).run().as_dict())
            pruned += int(reports[-1]["steps"][STEPS.index("prune")]["detail"].split(" ")[0])
        log.extend(other.kill())
    assert {r["outcome"] for r in reports} == {"done"}, reports
    present: set[str] = set()
    absent: set[str] = set()
    for line in log:
        kind, op, item = [*line.split(" "), "", ""][:3]
        if kind == "ACK":
            (present if op == "add" else absent).add(item)
            (absent if op == "add" else present).discard(item)
    in_flight = {line.split(" ")[2] for line in log[-1:] if line.startswith("BEGIN remove")}
    fresh = open_worker_engine(str(tmp_path))
    state = fresh.state(JUDGE)
    assert present - in_flight <= set(state.feedback)
    assert not (absent & set(state.feedback))
    # This process's cached state (applied commit by commit while the other wrote) equals a fresh replay.
    mine = here.state(JUDGE)
    assert (mine.version, set(mine.feedback), set(mine.guidelines), mine.pending) == (
        state.version,
        set(state.feedback),
        set(state.guidelines),
        state.pending,
    )
    history = fresh.judge_history(JUDGE, limit=500)
    assert [v.version for v in history.versions] == list(range(state.version, -1, -1))


def test_a_purge_waits_for_a_maintainer_in_another_process_and_erases_everything(tmp_path: Path) -> None:
    secret = "ZQX-9921-MAINTAINED-SECRET"
    here = open_worker_engine(str(tmp_path))
    _one_by_one(here, 8)
    here.add_feedback(JUDGE, [{**ALIGNMENT[3], "id": "leak", "outputs": f"Not my problem, {secret}."}])
    _one_by_one(here, 8, prefix="j")  # small fragments on both sides of the leak's, for compaction to merge
    results: list[RemoveFeedbackResult] = []
    with worker(tmp_path) as other:
        other.send({"maintain": {"pause_at": "compact"}})
        assert other.read() == "AT maintain:compact"
        purge = threading.Thread(
            target=lambda: results.append(here.remove_feedback(JUDGE, ["leak"], purge=True)), daemon=True
        )
        purge.start()
        other.send("GO")
        reply = other.read()
        assert reply is not None
        assert reply.startswith("OK ")
        assert json.loads(reply[3:])["outcome"] == "done"  # the purge never ran under its steps
        purge.join(TIMEOUT_S)
    assert [r.removed_ids for r in results] == [["leak"]]
    found = subprocess.run(
        ["grep", "-rl", secret, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert found.stdout.split() == []


def test_maintain_command_prints_its_report_and_exits_as_documented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = open_worker_engine(str(tmp_path))
    _one_by_one(here, 5)
    args = ["maintain", "--config", str(CONFIG), "--data-dir", str(tmp_path), "--log-level", "ERROR"]
    assert cli.main(args) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("maintenance done in ")
    assert [line.split()[0] for line in lines[1:]] == STEPS
    assert "fragments" in lines[1]
    with here.store.exclusive(fence=False):  # a purge holds the store: maintenance waits for the next run
        assert cli.main([*args, "--json"]) == cli.EXIT_NOT_MAINTAINED
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "purge_running"
    assert [(s["name"], s["status"]) for s in report["steps"]] == [(name, "not_run") for name in STEPS]
    nowhere = str(tmp_path / "nowhere")
    assert cli.main(["maintain", "--config", str(CONFIG), "--data-dir", nowhere]) == cli.EXIT_BAD_SETTING
    err = capsys.readouterr().err
    assert f"Bad setting store.data_dir: got '{nowhere}'" in err
    assert "existing store" in err
    # A grace shorter than a minute could prune a version from under a reader: refused at start.
    with pytest.raises(SettingsError, match=r"Bad setting store\.keep_versions_s: got 5\.?0?; expected .*60"):
        load_settings(CONFIG, env={}, overrides={"store.keep_versions_s": 5})
