"""A busy single-user server: fragments, versions and latency after many single-item adds, by maintenance mode.

Each mode fills a fresh store with N single-item `add_feedback` calls (memory judge, hashing embedder, no model:
only our own and LanceDB's work is timed), then reports the memory table's fragments, the versions both tables
keep, add latency (p50, p99, max), warm score latency (served from the cached state), the score of a second
engine (a replica) right after each of 30 further writes (it reads the new commit and rows from the store), and
a cold read (a new engine on the store, as after a restart: open plus first score). Modes:
- `none`: no maintenance at all (what `maintain_interval_s = 0` without a cron job would leave);
- `inline`: a maintenance run on the writer's own call every 100 writes (what 0.1/0.2's tidy did);
- `background`: `serve`'s background maintainer (after 100 writes of its own), off the writer's calls.
Run from the repository root:

    .venv/bin/python benchmarks/maintenance.py --adds 2000
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


def _engine(data_dir: str) -> MemAlignService:
    settings = load_settings(
        CONFIG, env={}, overrides={"store.data_dir": data_dir, "embedding.model": "hashing"}
    )
    return open_engine(settings, embedder=HashingEmbedder())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_mode(mode: str, adds: int) -> dict[str, Any]:
    """Fill a fresh store in this mode and measure it."""
    with tempfile.TemporaryDirectory(prefix="memalign-maint-") as data_dir:
        engine = _engine(data_dir)
        background = None
        if mode == "background":
            background = BackgroundMaintenance(engine.store, StoreSettings(maintain_after_writes=100)).start()
        inline = Maintainer(engine.store, keep=KEEP)
        add_ms: list[float] = []
        base = ALIGNMENT[0]
        for n in range(adds):
            item = {**base, "id": f"b-{n}", "inputs": f"{base['inputs']} (case {n})"}
            began = time.perf_counter()
            engine.add_feedback(JUDGE, [item])
            if mode == "inline" and (n + 1) % 100 == 0:
                inline.run()
            add_ms.append((time.perf_counter() - began) * 1000)
        if background is not None:
            background.stop()
        runs = background.runs if background is not None else (adds // 100 if mode == "inline" else 0)
        score_ms: list[float] = []
        for n in range(30):
            began = time.perf_counter()
            engine.score(JUDGE, f"{base['inputs']} (case {n * 7})", base["outputs"])
            score_ms.append((time.perf_counter() - began) * 1000)
        # A reader in another engine (a replica) scores after each new write: it reads the new commit and rows.
        reader = _engine(data_dir)
        reader.score(JUDGE, base["inputs"], base["outputs"])
        reader_ms: list[float] = []
        for n in range(30):
            engine.add_feedback(JUDGE, [{**base, "id": f"r-{n}", "inputs": f"{base['inputs']} (read {n})"}])
            began = time.perf_counter()
            reader.score(JUDGE, f"{base['inputs']} (case {n * 7})", base["outputs"])
            reader_ms.append((time.perf_counter() - began) * 1000)
        cold_ms: list[float] = []
        for _ in range(3):
            began = time.perf_counter()
            _engine(data_dir).score(JUDGE, f"{base['inputs']} (case 3)", base["outputs"])
            cold_ms.append((time.perf_counter() - began) * 1000)
        return {
            "mode": mode,
            "adds": adds,
            "maintenance_runs": runs,
            "fragments": engine.store.fragments(),
            "versions": engine.store.versions(),
            "add_p50_ms": round(statistics.median(add_ms), 1),
            "add_p99_ms": round(_pct(add_ms, 0.99), 1),
            "add_max_ms": round(max(add_ms), 1),
            "score_p50_ms": round(statistics.median(score_ms), 1),
            "reader_score_after_write_p50_ms": round(statistics.median(reader_ms), 1),
            "cold_open_and_score_ms": round(statistics.median(cold_ms), 1),
        }


def main() -> None:
    """Run the modes and print Markdown rows for BENCHMARKS.md, and JSON to benchmarks/results/."""
    parser = argparse.ArgumentParser(
        description="Fragments and latency after many adds, by maintenance mode."
    )
    parser.add_argument("--adds", type=int, default=2000)
    parser.add_argument("--modes", default="none,inline,background")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    results = [run_mode(mode, args.adds) for mode in args.modes.split(",")]
    print(
        "| mode | runs | fragments | versions | add p50 / p99 / max ms | score p50 ms | "
        "replica's score after a write, p50 ms | cold open + score ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['maintenance_runs']} | {r['fragments']} | {r['versions']} | "
            f"{r['add_p50_ms']} / {r['add_p99_ms']} / {r['add_max_ms']} | {r['score_p50_ms']} | "
            f"{r['reader_score_after_write_p50_ms']} | "
            f"{r['cold_open_and_score_ms']} |"
        )
    out = REPO / "benchmarks" / "results" / "maintenance.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
