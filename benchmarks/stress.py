"""Concurrency stress: several processes, each with several threads, write and read one judge at once; then a
fresh engine checks that the store kept every promise it made to them.

Each process opens the engine as a server would (`open_engine(load_settings(configs/default.toml, ...))`) over one
store in a temporary directory, with no model (the memory judge) and the lexical hashing embedder (so that the
run measures the store and the commit protocol, not MiniLM). After all processes have opened, each thread loops
until the time is up over a random mix of:
- add_feedback of 1-3 new items with ids unique to the run;
- remove_feedback of one item that this thread added earlier and was acknowledged for;
- score_response of a random response.

The judge starts with seed items and guidelines citing them (there is no model to distil any), and the seed items
are shared out among the threads, so removals also drop guidelines while other writers commit.

Every thread appends each finished operation to its own JSON-lines log at once (so a killed process still leaves
what it was told). At the end a fresh engine checks:
- lost: every acknowledged add that was not acknowledged-removed is present;
- resurrected: no acknowledged-removed id is present (ids are never re-added);
- duplicated: list_feedback's total equals the number of distinct ids it lists and the judge's item count, and
  every present item has exactly one committed row version in the store;
- no guideline cites a missing item;
- no two writes were told the same judge_version, and each told version is the commit holding that change;
- every thread reads its own writes (a score after a write sees at least the version that write was told).

    .venv/bin/python benchmarks/stress.py [--seconds 60] [--processes 4] [--threads 2] [--seed 0]

It prints Markdown tables, writes benchmarks/results/stress.json and exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from feedbackqa_data import REPO
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.engine import open_engine
from memalign_mcp.models import FeedbackInput, JudgeSpec
from memalign_mcp.records import MemoryRow, Summary
from memalign_mcp.settings import load_settings
from memalign_mcp.transaction import Change, Ledger, MemoryState
from run_record import describe, percentile, run_record

RESULTS = REPO / "benchmarks" / "results"
CONFIG = REPO / "configs" / "default.toml"
JUDGE = "stress"
OPS = ("add_feedback", "remove_feedback", "score_response")
WEIGHTS = (0.4, 0.2, 0.4)  # remove falls back to score while a thread holds nothing to remove
SEED_PER_THREAD = 6
GUIDELINES = 12
SOURCES_PER_GUIDELINE = 3
# Open and import under load take seconds; a process that is not ready by then is reported, not waited on.
READY_TIMEOUT_S = 300.0
# An operation in flight when the time is up may still take this long before its process is killed.
DRAIN_S = 180.0
VOCABULARY = (
    "refund order invoice shipping delay account password reset billing card charge subscription cancel "
    "upgrade plan trial email login error crash update install device battery screen sound network wifi "
    "printer scanner driver warranty repair return exchange size colour stock delivery address tracking "
    "parcel courier customs tax discount coupon voucher loyalty points gift balance transfer statement"
)
WORDS = tuple(VOCABULARY.split())


@dataclass(frozen=True)
class Plan:
    """What one worker process does: where the store is, which threads it runs and what each owns at start."""

    data_dir: str
    logs_dir: str
    process: int
    threads: int
    seconds: float
    seed: int
    owned: list[list[str]]  # per thread: the seed item ids it may remove


def settings_overrides(data_dir: str) -> dict[str, Any]:
    """One store, no shipped judges, no model (memory judge), the hashing embedder."""
    return {
        "store.data_dir": data_dir,
        "server.judges_dir": "",
        "model.judge": "",
        "model.reflection": "",
        "embedding.model": "hashing",
    }


def open_store(data_dir: str) -> MemAlignService:
    """An engine over the run's store, opened the way the server opens one."""
    return open_engine(load_settings(CONFIG, env={}, overrides=settings_overrides(data_dir)))


def sentence(rng: random.Random, words: int) -> str:
    """A random sentence from a small vocabulary, so that lexical vectors differ but overlap."""
    return " ".join(rng.choice(WORDS) for _ in range(words))


def feedback(rng: random.Random, item_id: str) -> FeedbackInput:
    """One feedback item with an id of our own."""
    return FeedbackInput(
        id=item_id,
        inputs=sentence(rng, 8),
        outputs=sentence(rng, 12),
        value=rng.random() < 0.5,
        rationale=sentence(rng, 6),
        source="stress",
    )


# --- workers ----------------------------------------------------------------------------------------------


class ThreadLog:
    """A thread's record of every finished operation, appended and flushed line by line."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def write(self, event: dict[str, Any]) -> None:
        """Append one event."""
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the log."""
        self._file.close()


def run_thread(engine: MemAlignService, plan: Plan, thread: int, deadline: float) -> None:
    """Loop over random operations until the deadline, logging what each was told."""
    rng = random.Random(f"{plan.seed}-{plan.process}-{thread}")
    log = ThreadLog(Path(plan.logs_dir) / f"p{plan.process}-t{thread}.jsonl")
    owned = list(plan.owned[thread])  # acknowledged, not yet removed: what this thread may remove
    made = 0
    try:
        while time.monotonic() < deadline:
            op = rng.choices(OPS, WEIGHTS)[0]
            if op == "remove_feedback" and not owned:
                op = "score_response"
            event: dict[str, Any] = {"op": op, "process": plan.process, "thread": thread}
            started = time.monotonic()
            event["start"] = time.time()
            try:
                if op == "add_feedback":
                    ids = [f"p{plan.process}-t{thread}-{made + i:05d}" for i in range(rng.randint(1, 3))]
                    made += len(ids)
                    event["ids"] = ids
                    added = engine.add_feedback(JUDGE, [feedback(rng, i) for i in ids])
                    owned.extend(ids)
                    event |= {
                        "version": added.judge_version,
                        "echoed": added.feedback_ids,
                        "unchanged": added.unchanged_ids,
                        "replaced": added.replaced_ids,
                    }
                elif op == "remove_feedback":
                    target = owned.pop(rng.randrange(len(owned)))
                    event["ids"] = [target]
                    removed = engine.remove_feedback(JUDGE, [target])
                    event |= {
                        "version": removed.judge_version,
                        "removed": removed.removed_ids,
                        "not_found": removed.not_found_ids,
                    }
                else:
                    scored = engine.score(JUDGE, sentence(rng, 8), sentence(rng, 12))
                    event |= {"version": scored.judge_version, "examples": scored.examples_used}
                event["ok"] = True
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and counted, none hidden
                event |= {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            event["ms"] = (time.monotonic() - started) * 1000
            event["end"] = time.time()
            log.write(event)
    finally:
        log.close()


def worker(plan: Plan, barrier: Any) -> None:
    """One process: open the engine, wait for the others, run the threads until the time is up."""
    try:
        engine = open_store(plan.data_dir)
        engine.score(JUDGE, "warm up", "the first score reads the judge")  # not timed: every process pays it
    except Exception:
        (Path(plan.logs_dir) / f"p{plan.process}-failed.txt").write_text(traceback.format_exc())
        barrier.abort()
        raise
    barrier.wait()
    deadline = time.monotonic() + plan.seconds
    threads = [
        threading.Thread(target=run_thread, args=(engine, plan, t, deadline), name=f"stress-{t}")
        for t in range(plan.threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # What this long-lived process believes against a replay from scratch over the same store: a commit its
    # cached ledger never read would show here as items it lacks or still holds.
    try:
        held = set(engine.state(JUDGE).feedback)
        fresh = set(Ledger(engine.store).state(JUDGE).feedback)
        view = {"lacks": sorted(fresh - held), "still_holds": sorted(held - fresh)}
    except Exception as exc:  # noqa: BLE001 - recorded for the report, as every failure here
        view = {"error": f"{type(exc).__name__}: {exc}"}
    (Path(plan.logs_dir) / f"p{plan.process}-view.json").write_text(json.dumps(view))


# --- set-up -----------------------------------------------------------------------------------------------


def seed_judge(data_dir: str, ids: list[str], seed: int) -> list[str]:
    """Create the judge with seed items and guidelines citing them; return the guideline ids."""
    engine = open_store(data_dir)
    engine.create_judge(JudgeSpec(name=JUDGE, instructions="Is {{ outputs }} a good answer to {{ inputs }}?"))
    rng = random.Random(f"{seed}-seed")
    engine.add_feedback(JUDGE, [feedback(rng, i) for i in ids])
    rows: list[MemoryRow] = []
    for g in range(GUIDELINES):
        text = f"Guideline {g}: " + sentence(rng, 10)
        rows.append(
            MemoryRow(
                judge=JUDGE,
                kind="guideline",
                item_id=f"g-{g:02d}",
                vector=engine.embedder.embed([text])[0],
                text=text,
                sources=tuple(sorted(rng.sample(ids, SOURCES_PER_GUIDELINE))),
            )
        )
    # No model distils here, so the guidelines go in as a distillation would commit them: one transaction.
    change = Change(op="distill", rows=rows, summary=Summary(guidelines_added=tuple(r.item_id for r in rows)))

    def prepare(_: MemoryState) -> Change:
        return change

    engine.ledger.change(JUDGE, prepare, who="stress-seed")
    return [r.item_id for r in rows]


# --- checks -----------------------------------------------------------------------------------------------


def read_events(logs_dir: Path) -> list[dict[str, Any]]:
    """Every logged operation of every thread."""
    events: list[dict[str, Any]] = []
    for path in sorted(logs_dir.glob("p*-t*.jsonl")):
        events.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return events


def all_history(engine: MemAlignService) -> dict[int, list[dict[str, Any]]]:
    """Every memory version of the judge: version -> the changes recorded under it (one, unless shared)."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    offset = 0
    while True:
        page = engine.judge_history(JUDGE, limit=500, offset=offset)
        for v in page.versions:
            out[v.version].append({"change": v.change, **v.summary.model_dump()})
        offset += len(page.versions)
        if not page.versions or offset >= page.total:
            return out


def listed_ids(engine: MemAlignService) -> tuple[list[str], int]:
    """Every id list_feedback shows, page by page, and the total it reports."""
    ids: list[str] = []
    offset, total = 0, 0
    while True:
        page = engine.list_feedback(JUDGE, limit=500, offset=offset)
        total = page.total
        ids.extend(f.id for f in page.feedback)
        offset += 500
        if offset >= total:
            return ids, total


def verify(data_dir: str, events: list[dict[str, Any]], seed_ids: list[str]) -> dict[str, Any]:
    """Check what a fresh engine reads against what every operation was told."""
    engine = open_store(data_dir)
    state = engine.state(JUDGE)
    present = set(state.feedback)
    ok = [e for e in events if e["ok"]]
    acked_add = {i for e in ok if e["op"] == "add_feedback" for i in e["ids"]}
    acked_remove = {i for e in ok if e["op"] == "remove_feedback" for i in e["removed"]}
    unacked = {i for e in events if not e["ok"] and e["op"] == "add_feedback" for i in e["ids"]}
    # A removal that raised may have committed before it failed: its item may rightly be gone either way.
    uncertain = {i for e in events if not e["ok"] and e["op"] == "remove_feedback" for i in e["ids"]}
    should_exist = (acked_add | set(seed_ids)) - acked_remove
    lost = sorted(should_exist - present - uncertain)
    resurrected = sorted(acked_remove & present)
    stray = sorted(present - acked_add - set(seed_ids) - unacked)
    # A removal told "not found" for an item its own thread added and never removed: lost before the removal.
    not_found = sorted(i for e in ok if e["op"] == "remove_feedback" for i in e["not_found"])
    bad_echo = [e for e in ok if e["op"] == "add_feedback" and (e["echoed"] != e["ids"] or e["unchanged"])]

    listed, total = listed_ids(engine)
    generation = engine.ledger.generation(JUDGE)
    committed = {c.txn for c in generation}
    # Each commit number must be won by exactly one writer (the store's insert-if-absent of the commit row).
    seq_counts = Counter(c.seq for c in generation)
    shared_seqs = {
        seq: [
            {"txn": c.txn, "op": c.op, "version": c.version, "at": str(c.created_at)}
            for c in generation
            if c.seq == seq
        ]
        for seq, n in sorted(seq_counts.items())
        if n > 1
    }
    stored = engine.store.rows_of_generation(JUDGE, state.gen, content=False)
    versions_of: Counter[str] = Counter(
        r.item_id for r in stored if r.kind == "feedback" and r.txn in committed and r.item_id in present
    )
    orphans = sum(1 for r in stored if r.txn not in committed)
    duplicated = {
        "listed_ids": len(listed),
        "distinct_listed_ids": len(set(listed)),
        "list_total": total,
        "items_in_state": len(present),
        "visible_rows": sum(versions_of.values()),
        "items_with_several_committed_rows": sorted(i for i, n in versions_of.items() if n > 1),
    }
    duplicated_ok = (
        len(listed) == len(set(listed)) == total == len(present) == duplicated["visible_rows"]
        and not duplicated["items_with_several_committed_rows"]
        and set(listed) == present
    )
    citing_missing = {
        g.item_id: sorted(set(g.sources) - present)
        for g in state.guidelines.values()
        if set(g.sources) - present
    }

    writes = [e for e in ok if e["op"] == "add_feedback" or (e["op"] == "remove_feedback" and e["removed"])]
    told = Counter(e["version"] for e in writes)
    shared_versions = {v: n for v, n in told.items() if n > 1}
    history = all_history(engine)
    wrong_commit: list[dict[str, Any]] = []
    for e in writes:
        entries = history.get(e["version"], [])
        key = "feedback_added" if e["op"] == "add_feedback" else "feedback_removed"
        if not any(set(e["ids"]) <= set(entry[key]) for entry in entries):
            wrong_commit.append({"op": e["op"], "ids": e["ids"], "version": e["version"], "commits": entries})

    stale_reads: list[dict[str, Any]] = []
    by_thread: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for e in ok:
        by_thread[(e["process"], e["thread"])].append(e)
    for thread_events in by_thread.values():
        seen = -1
        for e in sorted(thread_events, key=lambda x: x["start"]):
            if e["version"] < seen:
                stale_reads.append(
                    {k: e[k] for k in ("op", "process", "thread", "version")} | {"after": seen}
                )
            if e["op"] != "score_response":
                seen = max(seen, e["version"])

    checks = {
        "lost": lost,
        "lost_before_removal": not_found,
        "resurrected": resurrected,
        "stray_ids": stray,
        "add_results_not_echoing_ids": len(bad_echo),
        "duplicated_ok": duplicated_ok,
        "guidelines_citing_missing_items": citing_missing,
        "commit_numbers_held_by_several_commits": shared_seqs,
        "versions_told_to_several_writes": shared_versions,
        "versions_not_holding_the_change": len(wrong_commit),
        "stale_reads": len(stale_reads),
    }
    # A check fails when it found anything (a non-empty list or mapping, a non-zero count) or is False.
    failed = [name for name, value in checks.items() if value is False or (value and value is not True)]
    return {
        "passed": not failed,
        "failed": failed,
        "checks": checks,
        "duplication": duplicated,
        "examples": {"versions_not_holding_the_change": wrong_commit[:20], "stale_reads": stale_reads[:20]},
        "counts": {
            "acknowledged_adds_items": len(acked_add),
            "acknowledged_removes_items": len(acked_remove),
            "unacknowledged_add_items": len(unacked),
            "unacknowledged_add_items_present": len(unacked & present),
            "unacknowledged_remove_items": len(uncertain),
            "unacknowledged_remove_items_present": len(uncertain & present),
            "seed_items": len(seed_ids),
            "items_at_end": len(present),
            "guidelines_at_end": len(state.guidelines),
            "pending_at_end": len(state.pending),
            "memory_version_at_end": state.version,
            "versions_told_to_writes": len(writes),
            "orphan_rows_left": orphans,
        },
    }


# --- figures ----------------------------------------------------------------------------------------------


def op_figures(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per operation: how many finished, failed, throughput over the run, p50/p99 latency."""
    starts = [e["start"] for e in events]
    span = (max(e["end"] for e in events) - min(starts)) if events else 0.0
    out: dict[str, Any] = {"span_s": span}
    for op in OPS:
        done = [e for e in events if e["op"] == op and e["ok"]]
        failed = [e for e in events if e["op"] == op and not e["ok"]]
        ms = [e["ms"] for e in done]
        out[op] = {
            "ok": len(done),
            "failed": len(failed),
            "errors": dict(Counter(e["error"].split(":", 1)[0] for e in failed)),
            "error_examples": sorted({e["error"] for e in failed})[:5],
            "ops_per_s": len(done) / span if span else 0.0,
            "p50_ms": percentile(ms, 50) if ms else None,
            "p99_ms": percentile(ms, 99) if ms else None,
            "max_ms": max(ms) if ms else None,
        }
    return out


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def tables(result: dict[str, Any]) -> str:
    """The run as Markdown."""
    cfg = result["config"]
    out = [
        f"### Concurrency stress\n\n{describe(result)}\n\n"
        f"{cfg['processes']} processes x {cfg['threads']} threads on one store for {cfg['seconds']:.0f} s "
        f"(seed {cfg['seed']}), memory judge, hashing embedder.\n",
        "| operation | ok | failed | ops/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|",
    ]
    for op in OPS:
        r = result["ops"][op]
        out.append(
            f"| {op} | {r['ok']} | {r['failed']} | {r['ops_per_s']:.2f} | {_ms(r['p50_ms'])} | "
            f"{_ms(r['p99_ms'])} | {_ms(r['max_ms'])} |"
        )
    v = result["verification"]
    out.append(
        f"\nChecks by a fresh engine: **{'all passed' if v['passed'] else 'FAILED: ' + ', '.join(v['failed'])}**\n"
    )
    out.append("| check | result |\n|---|---|")
    for name, value in v["checks"].items():
        shown = value if isinstance(value, bool | int) else len(value)
        out.append(f"| {name} | {shown} |")
    out.append("\n| count | value |\n|---|---|")
    out.extend(
        f"| {k} | {n} |" for k, n in {**v["counts"], **v["duplication"]}.items() if not isinstance(n, list)
    )
    if result["hung_processes"]:
        out.append(f"\nProcesses killed after the drain time: {result['hung_processes']}")
    return "\n".join(out) + "\n"


# --- the run ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the threads run")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep the store and logs here (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Seed the judge, run the workers, verify; the result as a dict."""
    data_dir, logs_dir = root / "store", root / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    workers = args.processes * args.threads
    seed_ids = [f"seed-{i:03d}" for i in range(workers * SEED_PER_THREAD)]
    seed_judge(str(data_dir), seed_ids, args.seed)
    context = multiprocessing.get_context("spawn")  # fork would copy LanceDB's runtime threads mid-flight
    barrier = context.Barrier(args.processes, timeout=READY_TIMEOUT_S)
    plans = [
        Plan(
            data_dir=str(data_dir),
            logs_dir=str(logs_dir),
            process=p,
            threads=args.threads,
            seconds=args.seconds,
            seed=args.seed,
            owned=[seed_ids[(p * args.threads + t) :: workers] for t in range(args.threads)],
        )
        for p in range(args.processes)
    ]
    processes = [
        context.Process(target=worker, args=(plan, barrier), name=f"stress-{plan.process}") for plan in plans
    ]
    for p in processes:
        p.start()
    limit = time.monotonic() + READY_TIMEOUT_S + args.seconds + DRAIN_S
    hung: list[str] = []
    for p in processes:
        p.join(max(0.0, limit - time.monotonic()))
        if p.is_alive():
            hung.append(p.name)
            p.kill()
            p.join()
    events = read_events(logs_dir)
    failures = {f.name: f.read_text() for f in logs_dir.glob("p*-failed.txt")}
    views = {f.name.split("-")[0]: json.loads(f.read_text()) for f in sorted(logs_dir.glob("p*-view.json"))}
    verification = verify(str(data_dir), events, seed_ids)
    diverged = {p: v for p, v in views.items() if any(v.values())}
    verification["checks"]["process_views_diverged_from_store"] = diverged
    if diverged:
        verification["passed"] = False
        verification["failed"].append("process_views_diverged_from_store")
    return {
        "config": {k: v for k, v in vars(args).items() if k in ("seconds", "processes", "threads", "seed")},
        "embedder": "hashing-384",
        "judge_model": "memory",
        "store": str(data_dir),
        "hung_processes": hung,
        "exit_codes": [p.exitcode for p in processes],
        "process_failures": failures,
        "ops": op_figures(events),
        "process_views": views,
        "verification": verification,
        "plans": [asdict(p) | {"owned": [len(o) for o in p.owned]} for p in plans],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stress test, print the tables, write the JSON; 1 if a check failed."""
    args = parse_args(argv)
    record = run_record()
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="memalign-stress-") as tmp:
            result = run(args, Path(tmp))
    full: dict[str, Any] = {"benchmark": "stress", **record, **result}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "stress.json"
    path.write_text(json.dumps(full, indent=2, default=str) + "\n", encoding="utf-8")
    print(tables(full))
    print(f"wrote {path}", file=sys.stderr)
    return 0 if full["verification"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
