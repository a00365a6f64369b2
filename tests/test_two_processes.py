"""Two processes on one store: interleavings forced with a pause point in the other process (no sleeps), purge
racing writes, and a writer killed with SIGKILL over and over. Nothing acknowledged is lost, and no removed
item keeps any influence."""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memalign_mcp.alignment import MemAlignService
from memalign_mcp.seed_scenario import ALIGNMENT, JUDGE
from store_worker import open_worker_engine, stream_item

WORKER = Path(__file__).resolve().parent / "store_worker.py"
TIMEOUT_S = 120  # a bound on every wait, so a broken protocol fails the test instead of hanging it


class Worker:
    """A store_worker.py process: send commands, read its lines through a thread (reads never block forever)."""

    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.read() == "READY"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read(self) -> str | None:
        """The next line, or None once the process has exited."""
        return self.lines.get(timeout=TIMEOUT_S)

    def send(self, command: dict[str, Any] | str) -> None:
        """Send one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((command if isinstance(command, str) else json.dumps(command)) + "\n")
        self.proc.stdin.flush()

    def call(self, method: str, **args: Any) -> None:
        """Start an engine call; its reply comes from read()."""
        self.send({"call": method, "args": args})

    def kill(self) -> list[str]:
        """SIGKILL (no clean-up of any kind runs in the worker); return the lines it wrote before dying."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT_S)
        rest: list[str] = []
        while (line := self.lines.get(timeout=TIMEOUT_S)) is not None:
            rest.append(line)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        return rest


@contextmanager  # pyright: ignore[reportDeprecated]
def worker(data_dir: Path) -> Iterator[Worker]:
    """A worker process for the duration of a block, killed at the end."""
    w = Worker(data_dir)
    try:
        yield w
    finally:
        if w.proc.stdout is not None and not w.proc.stdout.closed:
            w.kill()


def _no_influence(engine: MemAlignService, removed: set[str]) -> None:
    state = engine.state(JUDGE)
    assert not removed & set(state.feedback), sorted(removed & set(state.feedback))
    for g in state.guidelines.values():
        assert set(g.sources) <= set(state.feedback), f"guideline {g.item_id} cites a missing item"
        assert not removed & set(g.sources)


def _grep(root: Path, needle: str) -> list[str]:
    found = subprocess.run(["grep", "-rl", needle, str(root)], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_a_distillation_prepared_before_a_removal_elsewhere_is_redone_without_the_removed_item(
    tmp_path: Path,
) -> None:
    here = open_worker_engine(str(tmp_path))
    here.add_feedback(JUDGE, [ALIGNMENT[2], ALIGNMENT[3]])  # one rule citing track-order and returns
    with worker(tmp_path) as other:
        other.send({"pause_at": "distill:prepared"})
        assert other.read() == "OK"
        extra = {**ALIGNMENT[3], "id": "extra", "inputs": "Where is my parcel? (again)"}
        other.call("add_feedback", name=JUDGE, items=[extra])
        assert other.read() == "AT distill:prepared"  # it distilled from the rule citing returns
        removed = here.remove_feedback(JUDGE, ["returns"])
        assert removed.removed_ids == ["returns"]
        other.send("GO")
        reply = other.read()
        assert reply is not None
        assert reply.startswith("OK ")
        told = json.loads(reply[3:])
    fresh = open_worker_engine(str(tmp_path))
    _no_influence(fresh, {"returns"})
    state = fresh.state(JUDGE)
    assert "extra" in state.feedback
    assert "extra" not in state.pending  # distilled again on top of the removal, not left behind
    assert any("extra" in g.sources for g in state.guidelines.values())
    assert told["judge_version"] != removed.judge_version


def test_a_removal_with_purge_wins_over_a_distillation_in_flight_elsewhere(tmp_path: Path) -> None:
    secret = "ZQX-4471-PRIVATE-ACCOUNT"
    here = open_worker_engine(str(tmp_path))
    here.add_feedback(JUDGE, [ALIGNMENT[2]])
    leak = {**ALIGNMENT[3], "id": "leak", "outputs": f"Not my problem, {secret}."}
    with worker(tmp_path) as other:
        other.send({"pause_at": "distill:prepared"})
        assert other.read() == "OK"
        other.call("add_feedback", name=JUDGE, items=[leak])
        assert other.read() == "AT distill:prepared"  # its guideline would cite the leak
        assert here.remove_feedback(JUDGE, ["leak"], purge=True).removed_ids == ["leak"]
        other.send("GO")
        reply = other.read()
        assert reply is not None
        assert reply.startswith("OK ")
    fresh = open_worker_engine(str(tmp_path))
    _no_influence(fresh, {"leak"})
    assert fresh.remove_feedback(JUDGE, ["leak"]).not_found_ids == ["leak"]
    assert _grep(tmp_path, secret) == []


def test_a_judge_deleted_and_remade_during_an_add_never_receives_the_old_feedback(tmp_path: Path) -> None:
    here = open_worker_engine(str(tmp_path))
    here.add_feedback(JUDGE, ALIGNMENT)
    spec = here.get_judge(JUDGE)
    with worker(tmp_path) as other:
        other.send({"pause_at": "add:prepared"})
        assert other.read() == "OK"
        other.call("add_feedback", name=JUDGE, items=[{**ALIGNMENT[0], "id": "late"}])
        assert other.read() == "AT add:prepared"
        here.delete_judge(JUDGE)
        from memalign_mcp.models import JudgeSpec

        here.create_judge(JudgeSpec.model_validate(spec.model_dump(include=set(JudgeSpec.model_fields))))
        other.send("GO")
        reply = other.read()
        assert reply is not None
        assert reply.startswith("ERR JudgeGoneError")
    fresh = open_worker_engine(str(tmp_path))
    assert fresh.list_feedback(JUDGE).total == 0
    assert fresh.list_guidelines(JUDGE).guidelines == []
    assert fresh.score(JUDGE, ALIGNMENT[4]["inputs"], ALIGNMENT[4]["outputs"]).examples_used == []


def test_a_write_committed_while_a_purge_prunes_elsewhere_is_kept(tmp_path: Path) -> None:
    here = open_worker_engine(str(tmp_path))
    here.add_feedback(JUDGE, ALIGNMENT)
    with worker(tmp_path) as other:
        other.send({"pause_at": "add:writing"})  # its rows are about to be written
        assert other.read() == "OK"
        other.call("add_feedback", name=JUDGE, items=[stream_item(1)])
        assert other.read() == "AT add:writing"
        here.remove_feedback(JUDGE, ["thanks"], purge=True)  # rewrites fragments and prunes every old version
        other.send("GO")
        reply = other.read()
        assert reply is not None
        assert reply.startswith("OK ")
    assert "s-1" in open_worker_engine(str(tmp_path)).state(JUDGE).feedback


def _acks(w: Worker, until: int, log: list[str]) -> None:
    """Read the worker's lines into `log` until it has acknowledged `until` more calls."""
    seen = 0
    while seen < until:
        line = w.read()
        assert line is not None, "the worker died"
        log.append(line)
        seen += line.startswith("ACK ")


def _expected(log: list[str]) -> tuple[set[str], set[str], set[str]]:
    """(must be present, must be absent, may be either) after the acknowledged lines of a stream."""
    present: set[str] = set()
    absent: set[str] = set()
    for line in log:
        kind, op, item = [*line.split(" "), "", ""][:3]
        if kind != "ACK":
            continue
        if op == "add":
            present.add(item)
            absent.discard(item)
        elif op == "remove":
            present.discard(item)
            absent.add(item)
    return present, absent, set()


def test_purge_racing_writes_from_another_process_loses_nothing(tmp_path: Path) -> None:
    here = open_worker_engine(str(tmp_path))
    here.add_feedback(JUDGE, ALIGNMENT)
    log: list[str] = []
    purged: list[str] = []
    with worker(tmp_path) as other:
        other.send({"stream": {"seed": 7, "start": 0}})
        for _ in range(20):
            _acks(other, 2, log)
            present, _, _ = _expected(log)
            victim = sorted(present - set(purged) or {"store-hours"})[0]
            here.remove_feedback(JUDGE, [victim], purge=True)
            purged.append(victim)
        log.extend(other.kill())
    fresh = open_worker_engine(str(tmp_path))  # the store always opens
    present, absent, _ = _expected(log)
    state = fresh.state(JUDGE)
    # The worker may have been mid-way through removing one more item when it was killed.
    in_flight = {line.split(" ")[2] for line in log[-1:] if line.startswith("BEGIN remove")}
    assert len(purged) == 20
    lost = (present - set(purged) - in_flight) - set(state.feedback)
    assert not lost, [line for line in log if any(line.endswith(" " + i) for i in lost)]
    _no_influence(fresh, (absent | set(purged)) - (present - set(purged)))


def test_a_writer_killed_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    open_worker_engine(str(tmp_path)).add_feedback(JUDGE, ALIGNMENT)
    rng = random.Random(2026)
    log: list[str] = []
    for round_ in range(20):
        with worker(tmp_path) as w:
            w.send({"stream": {"seed": round_, "start": round_ * 1000}})
            _acks(w, rng.randint(1, 6), log)
            # Kill it during whatever it does next: reading one more line first shifts the moment at random.
            if rng.random() < 0.5:
                line = w.read()
                if line is not None:
                    log.append(line)
            log.extend(w.kill())
            log.append("KILLED")
    fresh = open_worker_engine(str(tmp_path))
    state = fresh.state(JUDGE)
    present, absent, _ = _expected(log)
    # A remove begun but not acknowledged when the kill came may or may not have committed.
    uncertain = {
        line.split(" ")[2]
        for n, line in enumerate(log)
        if line.startswith("BEGIN remove") and n + 1 < len(log) and log[n + 1].startswith("KILLED")
    }
    assert present - uncertain <= set(state.feedback)
    assert not (absent & set(state.feedback))
    _no_influence(fresh, absent)
    again = open_worker_engine(str(tmp_path)).state(JUDGE)
    assert set(again.feedback) == set(state.feedback)


def test_a_change_that_fails_at_its_commit_is_invisible_to_a_reader_in_another_process(
    tmp_path: Path,
) -> None:
    here = open_worker_engine(str(tmp_path))
    here.add_feedback(JUDGE, ALIGNMENT)
    with worker(tmp_path) as reader:
        reader.call("get_judge", name=JUDGE)
        before = reader.read()
        assert before is not None
        assert before.startswith("OK ")
        commit = here.store.commit

        def failing(*args: Any, **kwargs: Any) -> bool:
            raise OSError("injected: the disk went away during the commit")

        here.store.commit = failing  # type: ignore[method-assign]  # a fault at the one write of a change
        try:
            here.remove_feedback(JUDGE, ["sweater"])
        except OSError:
            pass
        else:
            raise AssertionError("the injected failure did not reach the caller")
        reader.call("get_judge", name=JUDGE)
        assert reader.read() == before  # same version, same counts: nothing of the failed change is seen
        here.store.commit = commit  # type: ignore[method-assign]
        removed = here.remove_feedback(JUDGE, ["sweater"])
        reader.call("get_judge", name=JUDGE)
        after = reader.read()
        assert after is not None
        assert json.loads(after[3:])["memory_version"] == removed.judge_version
        assert json.loads(after[3:])["feedback_count"] == len(ALIGNMENT) - 1
