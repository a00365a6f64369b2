"""Scoring over an s3:// store (a local moto S3 server) against a local one: object-store requests per score
with and without the freshness bound, score latency, and what the bound adds to a removal.

A memory judge (no model, hashing embedder) is filled with N synthetic feedback items through add_feedback, in
batches of 500, once per store; then engines over that store score the same drafts, each with a warm-up score
first (the first read of a judge builds its cached state, which is not what a long-running replica pays per
score). Requests are counted by the S3 server (tests/s3_server.py). moto is an in-process Python server on this
machine, so its latency is not S3's: the request counts carry over to S3, the times do not. Run from the
repository root:

    .venv/bin/python benchmarks/object_store.py [--items 3000] [--scores 200] [--pace-ms 20]

It prints a Markdown table and writes benchmarks/results/object_store.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.models import JudgeSpec
from memalign_mcp.settings import load_settings
from object_store import ObjectStore, running_object_store

JUDGE = "bench"
RESULTS = Path(__file__).resolve().parent / "results" / "object_store.json"
TOPICS = ["parcel", "refund", "invoice", "password", "delivery", "warranty", "discount", "account", "return"]


def feedback(start: int, count: int) -> list[dict[str, Any]]:
    """Synthetic support-desk feedback items."""
    out: list[dict[str, Any]] = []
    for i in range(start, start + count):
        topic = TOPICS[i % len(TOPICS)]
        out.append(
            {
                "id": f"f{i}",
                "inputs": f"Question {i} about my {topic}: what happens next with order {i * 7919 % 10007}?",
                "outputs": f"Reply {i}: your {topic} is handled within {i % 9 + 1} days.",
                "value": i % 3 != 0,
                "rationale": f"Rater note {i}: {'clear' if i % 3 else 'vague'} about the {topic}.",
            }
        )
    return out


def engine(data_dir: str, store: ObjectStore | None, freshness_ms: int | None) -> MemAlignService:
    """An engine over the store with the memory judge (no model) and the hashing embedder."""
    overrides: dict[str, Any] = {"store.data_dir": data_dir, "store.freshness_ms": freshness_ms}
    if store is not None:
        overrides["store.storage_options"] = store.storage_options()
    return open_engine(load_settings(env={}, overrides=overrides), embedder=HashingEmbedder())


def fill(service: MemAlignService, items: int) -> None:
    """Make the judge and add `items` feedback items, 500 a call."""
    service.create_judge(JudgeSpec(name=JUDGE, instructions="Is {{ outputs }} helpful?"))
    for start in range(0, items, 500):
        service.add_feedback(JUDGE, feedback(start, min(500, items - start)))


def time_scores(
    service: MemAlignService, scores: int, store: ObjectStore | None, pace_s: float
) -> tuple[list[float], dict[str, int]]:
    """Latency of each score (seconds) and the object-store requests they made, after one warm-up score.

    Scores start `pace_s` apart, as a replica's traffic would, so that a run spans several freshness bounds
    and the checks it makes are counted in (a burst inside one bound would make none).
    """
    service.score(JUDGE, "Warm-up question about my parcel?", "It ships today.")
    if store is not None:
        store.requests(reset=True)
    took: list[float] = []
    for i in range(scores):
        started = time.perf_counter()
        service.score(JUDGE, f"Where is my {TOPICS[i % len(TOPICS)]} number {i}?", f"Draft reply {i}.")
        took.append(time.perf_counter() - started)
        time.sleep(max(0.0, pace_s - took[-1]))
    return took, (store.requests() if store is not None else {})


def summary(name: str, took: Sequence[float], requests: dict[str, int], scores: int) -> dict[str, Any]:
    """Median and p90 in ms, requests per score."""
    ordered = sorted(took)
    return {
        "store": name,
        "scores": scores,
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
        "requests_per_score": round(sum(requests.values()) / scores, 2) if requests else 0.0,
        "requests_by_method": requests,
    }


def time_remove(service: MemAlignService, item_id: str) -> float:
    """Seconds one remove_feedback call takes (it waits out the freshness bound)."""
    started = time.perf_counter()
    service.remove_feedback(JUDGE, [item_id])
    return time.perf_counter() - started


def run(items: int, scores: int, pace_s: float) -> dict[str, Any]:
    """Every measurement, as one JSON-able record."""
    rows: list[dict[str, Any]] = []
    removes: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="memalign-bench-") as tmp:
        local_dir = str(Path(tmp) / "local")
        started = time.perf_counter()
        fill(engine(local_dir, None, None), items)
        print(f"filled local store with {items} items in {time.perf_counter() - started:.1f} s", flush=True)
        local = engine(local_dir, None, None)
        took, _ = time_scores(local, scores, None, pace_s)
        rows.append(summary("local directory (freshness 0: every read checks)", took, {}, scores))
        removes["local, freshness 0"] = time_remove(local, "f1")

        with running_object_store(Path(tmp) / "s3.log") as store:
            data_dir = store.new_prefix()
            started = time.perf_counter()
            fill(engine(data_dir, store, 0), items)
            print(f"filled s3 store with {items} items in {time.perf_counter() - started:.1f} s", flush=True)
            for freshness in (0, 1000):
                service = engine(data_dir, store, freshness)
                took, requests = time_scores(service, scores, store, pace_s)
                rows.append(summary(f"s3:// on moto, freshness_ms = {freshness}", took, requests, scores))
                removes[f"s3, freshness {freshness}"] = time_remove(service, f"f{2 + freshness}")
    return {
        "items": items,
        "pace_ms": round(pace_s * 1000),
        "rows": rows,
        "remove_s": {k: round(v, 3) for k, v in removes.items()},
    }


def table(result: dict[str, Any]) -> str:
    """The result as Markdown."""
    lines = [
        f"Judge of {result['items']} feedback items, memory judge (no model), hashing embedder; scores started "
        f"{result['pace_ms']} ms apart.",
        "",
        "| store | score p50 ms | p90 ms | object-store requests per score |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['store']} | {r['p50_ms']} | {r['p90_ms']} | {r['requests_per_score']} |")
    lines += ["", "| remove_feedback of one item | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["remove_s"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=3000, help="feedback items in the judge")
    parser.add_argument("--scores", type=int, default=200, help="timed scores per store")
    parser.add_argument("--pace-ms", type=float, default=20, help="time from one score's start to the next")
    args = parser.parse_args(argv)
    result = run(args.items, args.scores, args.pace_ms / 1000)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
