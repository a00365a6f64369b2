"""A busy single-user server: fragments, versions and latency after many single-item adds, by maintenance mode.

Each mode fills a fresh store with N single-item `add_feedback` calls (memory judge, hashing embedder, no model:
only our own and LanceDB's work is timed), then measures: the memory table's fragments, the versions both
tables keep, the latency of 30 more single adds, warm score latency (served from the cached state), the score of
a second engine (a replica) right after each of 30 further writes (it reads the new commit and rows from the
store), and a cold read (a new engine on the store, as after a restart: open plus first score). Modes:
- `none`: no maintenance at all (what `maintain_interval_s = 0` without a cron job would leave);
- `inline`: a maintenance run on the writer's own call every 100 writes (what 0.1/0.2's tidy did);
- `background`: `serve`'s background maintainer (after 100 writes of its own), off the writer's calls.
`--store DIR` instead measures an existing store, runs one maintenance, and measures it again. Each mode's row
is printed as soon as it is done. Run from the repository root:

    .venv/bin/python benchmarks/maintenance.py --adds 2000
    .venv/bin/python benchmarks/maintenance.py --store /path/to/data-dir
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.maintenance import BackgroundMaintenance, Maintainer
from memalign_mcp.seed_scenario import ALIGNMENT, JUDGE
from memalign_mcp.settings import StoreSettings, load_settings

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "default.toml"
KEEP = timedelta(minutes=10)
BASE = ALIGNMENT[0]


def _engine(data_dir: str) -> MemAlignService:
    settings = load_settings(
        CONFIG, env={}, overrides={"store.data_dir": data_dir, "embedding.model": "hashing"}
    )
    return open_engine(settings, embedder=HashingEmbedder())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _add(engine: MemAlignService, item_id: str) -> float:
    began = time.perf_counter()
    engine.add_feedback(JUDGE, [{**BASE, "id": item_id, "inputs": f"{BASE['inputs']} ({item_id})"}])
    return (time.perf_counter() - began) * 1000


def measure(engine: MemAlignService, data_dir: str, tag: str) -> dict[str, Any]:
    """Fragments, versions, add, score, replica-score and cold-read latency of the store as it is now."""
    fragments, versions = engine.store.fragments(), engine.store.versions()
    add_ms = [_add(engine, f"{tag}-a{n}") for n in range(30)]
    score_ms: list[float] = []
    for n in range(30):
        began = time.perf_counter()
        engine.score(JUDGE, f"{BASE['inputs']} (b-{n * 7})", BASE["outputs"])
        score_ms.append((time.perf_counter() - began) * 1000)
    reader = _engine(data_dir)
    reader.score(JUDGE, BASE["inputs"], BASE["outputs"])
    reader_ms: list[float] = []
    for n in range(30):
        _add(engine, f"{tag}-r{n}")
        began = time.perf_counter()
        reader.score(JUDGE, f"{BASE['inputs']} (b-{n * 7})", BASE["outputs"])
        reader_ms.append((time.perf_counter() - began) * 1000)
    cold_ms: list[float] = []
    for _ in range(3):
        began = time.perf_counter()
        _engine(data_dir).score(JUDGE, f"{BASE['inputs']} (b-3)", BASE["outputs"])
        cold_ms.append((time.perf_counter() - began) * 1000)
    return {
        "feedback": engine.list_feedback(JUDGE).total,
        "fragments": fragments,
        "versions": versions,
        "add_p50_ms": round(statistics.median(add_ms), 1),
        "score_p50_ms": round(statistics.median(score_ms), 1),
        "replica_score_after_write_p50_ms": round(statistics.median(reader_ms), 1),
        "cold_open_and_score_ms": round(statistics.median(cold_ms), 1),
    }


def fill(mode: str, adds: int) -> dict[str, Any]:
    """Fill a fresh store in this mode and measure it."""
    with tempfile.TemporaryDirectory(prefix="memalign-maint-") as data_dir:
        engine = _engine(data_dir)
        background = None
        if mode == "background":
            background = BackgroundMaintenance(engine.store, StoreSettings(maintain_after_writes=100)).start()
        inline = Maintainer(engine.store, keep=KEEP)
        add_ms: list[float] = []
        for n in range(adds):
            began = time.perf_counter()
            _add(engine, f"b-{n}")
            if mode == "inline" and (n + 1) % 100 == 0:
                inline.run()
            add_ms.append((time.perf_counter() - began) * 1000)
        if background is not None:
            background.stop()
        runs = background.runs if background is not None else (adds // 100 if mode == "inline" else 0)
        filling = {
            "fill_add_p50_ms": round(statistics.median(add_ms), 1),
            "fill_add_p99_ms": round(_pct(add_ms, 0.99), 1),
            "fill_add_max_ms": round(max(add_ms), 1),
            "fill_s": round(sum(add_ms) / 1000, 1),
        }
        return {
            "mode": mode,
            "adds": adds,
            "maintenance_runs": runs,
            **filling,
            **measure(engine, data_dir, "m"),
        }


def existing(data_dir: str) -> list[dict[str, Any]]:
    """Measure an existing store, maintain it once, measure it again."""
    engine = _engine(data_dir)
    before = {"mode": "existing, unmaintained", **measure(engine, data_dir, "x")}
    report = Maintainer(engine.store, keep=KEEP).run()
    steps = {s.name: f"{s.seconds:.1f} s ({s.detail})" for s in report.steps}
    after = {"mode": "after one maintenance", "maintenance": steps, **measure(engine, data_dir, "y")}
    return [before, after]


def _row(r: dict[str, Any]) -> str:
    fill_part = (
        f"{r['fill_add_p50_ms']} / {r['fill_add_p99_ms']} / {r['fill_add_max_ms']}" if "fill_s" in r else "-"
    )
    return (
        f"| {r['mode']} | {r.get('maintenance_runs', '-')} | {r['feedback']} | {r['fragments']} | {r['versions']} | "
        f"{fill_part} | {r['add_p50_ms']} | {r['score_p50_ms']} | {r['replica_score_after_write_p50_ms']} | "
        f"{r['cold_open_and_score_ms']} |"
    )


def main() -> None:
    """Run the modes (or one existing store) and print Markdown rows; JSON goes to benchmarks/results/."""
    parser = argparse.ArgumentParser(
        description="Fragments and latency after many adds, by maintenance mode."
    )
    parser.add_argument("--adds", type=int, default=2000)
    parser.add_argument("--modes", default="none,inline,background")
    parser.add_argument(
        "--store", default=None, help="measure this data dir, maintain it once, measure again"
    )
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    print(
        "| mode | runs | items | fragments | versions | fill add p50 / p99 / max ms | add p50 ms | score p50 ms | "
        "replica's score after a write, p50 ms | cold open + score ms |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    results: list[dict[str, Any]] = []
    for result in existing(args.store) if args.store else (fill(m, args.adds) for m in args.modes.split(",")):
        print(_row(result), flush=True)
        results.append(result)
    name = "maintenance_existing.json" if args.store else "maintenance.json"
    (REPO / "benchmarks" / "results" / name).write_text(
        json.dumps(results, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
