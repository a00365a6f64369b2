"""Engine overhead: what memalign-mcp itself costs per call, with an instant scripted model so that no model
time is counted.

Measured, each as median (p50) and p99 over many runs:
- score: the whole engine.score call with 1k, 10k and 100k feedback items in the judge's memory (query
  embedding with the local MiniLM included), split into time inside the model client (litellm + HTTP to the
  instant scripted server) and the rest, which is ours; the same for the memory judge (no model); and where
  the time of one memory-judge score goes (embedding, judge row, guidelines, vector search);
- add_feedback throughput in batches of 1 and of 100 (model time excluded) and model calls per item;
- remove_feedback of one item at 10k items, with and without purge, and the model calls it made;
- restart: a fresh process from start to its first score on a judge with 10k items;
- resident memory of a process holding the 100k-item store after a score.

The stores are filled through the engine's own ledger (`Ledger.change`, the one way to write) with precomputed
vectors, skipping add_feedback's validation, embedding and distillation (whose cost is measured apart): every
FeedbackQA question (train, valid, test) is embedded once with MiniLM, and item i of a judge takes question i
mod N with its answer, a rater's rationale, and that question's vector plus small Gaussian noise (cosine about
0.97 to the original), renormalised. Rows go in 1,000 per transaction, as add_feedback's per-call limit would,
already distilled (not pending); the guidelines go in one more transaction. Run from the repository root:

    .venv/bin/python benchmarks/overhead.py

and it writes benchmarks/results/overhead.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lancedb  # pyright: ignore[reportMissingTypeStubs]
import numpy as np
from numpy.typing import NDArray

from feedbackqa_data import DEFAULT_DATA, REPO, Row, agreeing_rationale, read_split
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import LocalMiniLMEmbedder, text_for_embedding
from memalign_mcp.engine import make_client, open_engine
from memalign_mcp.llm import Check, Completion, ModelClient
from memalign_mcp.models import FeedbackInput, JudgeSpec
from memalign_mcp.records import MemoryRow, Neighbour, Summary
from memalign_mcp.settings import Settings, load_settings
from memalign_mcp.transaction import Change, Ledger, MemoryState
from memalign_mcp.vector_snapshot import VectorSnapshot
from memalign_mcp.vote import memory_verdict
from run_record import describe, percentile, run_record

sys.path.insert(0, str(REPO / "tests"))
from scripted_model import ScriptedModelServer  # tests/ holds the scripted model server
from trivial_script import trivial_script

RESULTS = REPO / "benchmarks" / "results"
CONFIG = REPO / "configs" / "default.toml"
INSTRUCTIONS = "Is {{ outputs }} a helpful answer to the question {{ inputs }}?"
NOISE = 0.0125  # per-dimension sigma: a 384-d noise vector of norm ~0.25, cosine ~0.97 to its question
CHUNK = 1000
GUIDELINES = 20
SOURCES_PER_GUIDELINE = 5
Vectors = NDArray[np.float32]
# The store's table (store.py keeps the name private); opened here only for the LanceDB search comparison.
MEMORY_TABLE = "memory_v2"


def log(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the Markdown tables."""
    print(message, file=sys.stderr, flush=True)


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p99 and mean of durations, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "mean": float(np.mean(ms)), "n": len(ms)}


class TimedClient:
    """A ModelClient that passes calls to the real litellm client and records how long each one took."""

    def __init__(self, inner: ModelClient) -> None:
        self.inner = inner
        self.seconds: list[float] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        """Completion requests sent by the real client, retries included."""
        return self.inner.calls

    def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        check: Check | None = None,
    ) -> Completion:
        """The real call, timed."""
        started = time.perf_counter()
        try:
            return self.inner.complete_json(
                model=model, messages=messages, schema_name=schema_name, schema=schema, check=check
            )
        finally:
            with self._lock:
                self.seconds.append(time.perf_counter() - started)

    def model_seconds(self) -> float:
        """Total seconds spent inside model calls so far."""
        with self._lock:
            return sum(self.seconds)


# --- filling a store fast -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bank:
    """Real FeedbackQA questions with answers and rationales, each question embedded once."""

    rows: list[Row]
    vectors: Vectors


def make_bank(data: Path, embedder: LocalMiniLMEmbedder) -> Bank:
    """Every FeedbackQA question, embedded with MiniLM (questions only: a few seconds for ~4k texts)."""
    rows = [r for split in ("train", "valid", "test") for r in read_split(data, split)]
    started = time.perf_counter()
    vectors = embedder.embed([r.inputs for r in rows])
    log(f"embedded {len(rows)} FeedbackQA questions in {time.perf_counter() - started:.1f} s")
    return Bank(rows, vectors)


def _rationale(row: Row) -> str:
    return agreeing_rationale(row) if row.label is not None else (row.rationales[0] or "no rationale")


def commit_rows(engine: MemAlignService, judge: str, change: Change) -> None:
    """Commit one prepared change through the judge's ledger, as the engine's own writers do."""

    def prepare(_: MemoryState) -> Change:
        return change

    commit, _ = engine.ledger.change(judge, prepare, who="overhead-fill")
    if commit is None:
        raise RuntimeError(f"filling {judge!r}: the ledger committed nothing")


def fill(engine: MemAlignService, judge: str, n: int, bank: Bank, seed: int) -> list[str]:
    """Create a judge, commit n feedback rows and a few guidelines citing them; return the item ids."""
    engine.create_judge(JudgeSpec(name=judge, instructions=INSTRUCTIONS))
    rng = np.random.default_rng(seed)
    fields = engine.settings.embedding.embed_fields
    ids = [f"{judge}-{i:06d}" for i in range(n)]
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        base = np.arange(start, stop) % len(bank.rows)
        noisy = bank.vectors[base] + rng.normal(0.0, NOISE, size=(stop - start, bank.vectors.shape[1]))
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        rows: list[MemoryRow] = []
        for offset, b in enumerate(base.tolist()):
            src = bank.rows[b]
            value = src.label if src.label is not None else bool(rng.integers(0, 2))
            body = {
                "inputs": src.inputs,
                "outputs": src.outputs,
                "expectations": None,
                "value": value,
                "rationale": _rationale(src),
                "source": "overhead-fill",
            }
            item_id = ids[start + offset]
            rows.append(
                MemoryRow(
                    judge=judge,
                    kind="feedback",
                    item_id=item_id,
                    vector=noisy[offset].astype(np.float32),
                    text=text_for_embedding(src.inputs, src.outputs, fields),
                    body=body,
                    content_hash=hashlib.sha256(item_id.encode()).hexdigest(),
                    # Already distilled: the guidelines below stand for what distillation would have made.
                    pending=False,
                )
            )
        added = tuple(ids[start:stop])
        commit_rows(engine, judge, Change(op="add", rows=rows, summary=Summary(feedback_added=added)))
    guidelines: list[MemoryRow] = []
    for g in range(GUIDELINES):
        cited = tuple(ids[(g * SOURCES_PER_GUIDELINE + s) * (n // (GUIDELINES * 5)) % n] for s in range(5))
        guidelines.append(
            MemoryRow(
                judge=judge,
                kind="guideline",
                item_id=f"g-{judge}-{g:02d}",
                vector=bank.vectors[g],
                text=f"Guideline {g}: prefer answers that address the question asked, with enough detail.",
                sources=cited,
            )
        )
    made = tuple(g.item_id for g in guidelines)
    commit_rows(engine, judge, Change(op="distill", rows=guidelines, summary=Summary(guidelines_added=made)))
    return ids


def settings_for(data_dir: str, *, model_url: str | None, fields: str = "inputs") -> Settings:
    """Settings over one store, with the scripted model as judge and reflection model, or with none."""
    overrides: dict[str, Any] = {
        "store.data_dir": data_dir,
        "server.judges_dir": "",
        "embedding.embed_fields": fields,
    }
    if model_url is not None:
        overrides |= {
            "model.judge": "openai/scripted",
            "model.api_base": model_url,
            "model.api_key": "scripted",
            "model.max_retries": 0,
        }
    return load_settings(CONFIG, env={}, overrides=overrides)


def engine_for(settings: Settings, embedder: LocalMiniLMEmbedder) -> tuple[MemAlignService, TimedClient]:
    """An engine whose model client records the time of every call."""
    client = TimedClient(make_client(settings))
    return open_engine(settings, embedder=embedder, client=client), client


# --- score ----------------------------------------------------------------------------------------------


def queries(bank: Bank, count: int) -> list[tuple[str, str]]:
    """Real test questions with their answers, as scored responses."""
    tests = [r for r in bank.rows if r.id.startswith("fqa-test-")]
    return [(r.inputs, r.outputs) for r in tests[:count]]


def time_scores(
    engine: MemAlignService, client: TimedClient, judge: str, pairs: Sequence[tuple[str, str]], warm: int
) -> dict[str, Any]:
    """Score every pair once (after `warm` unrecorded scores); wall time and time inside the model client."""
    for q, a in pairs[:warm]:
        engine.score(judge, q, a)
    walls: list[float] = []
    inside: list[float] = []
    calls = client.calls
    for q, a in pairs:
        before = client.model_seconds()
        started = time.perf_counter()
        engine.score(judge, q, a)
        walls.append(time.perf_counter() - started)
        inside.append(client.model_seconds() - before)
    own = [w - m for w, m in zip(walls, inside, strict=True)]
    return {
        "wall_ms": stats_ms(walls),
        "model_client_ms": stats_ms(inside),
        "own_ms": stats_ms(own),
        "model_calls_per_score": (client.calls - calls) / len(pairs),
    }


PER_SCORE = ("embed query", "judge state", "snapshot search", "fetch k rows", "vote")
PER_VERSION = ("state replay", "snapshot build")


def snapshot_of(state: MemoryState, dim: int) -> VectorSnapshot:
    """The vector snapshot the engine builds for a state (rows kept for judges the state holds whole)."""
    rows = state.feedback_rows()
    matrix = np.stack([r.vector for r in rows]) if rows else np.zeros((0, dim), np.float32)
    return VectorSnapshot(
        [r.item_id for r in rows], matrix, {r.item_id: r for r in rows} if state.whole else None
    )


def lancedb_search(uri: str, judge: str) -> Callable[[Vectors, int], int]:
    """LanceDB's own flat cosine search over a judge's feedback rows, for comparison (score never uses it).

    The benchmark opens the table itself because the engine no longer searches LanceDB at all. In a store
    filled by `fill` every row is live (no removed or replaced versions), so the result is the same set.
    """
    db: Any = lancedb.connect(uri)
    table: Any = db.open_table(MEMORY_TABLE)
    where = f"judge = '{judge}' AND kind = 'feedback'"

    def search(vector: Vectors, k: int) -> int:
        query = table.search(vector, vector_column_name="vector").distance_type("cosine")
        return int(query.where(where, prefilter=True).limit(k).to_arrow().num_rows)

    return search


def breakdown(engine: MemAlignService, judge: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Where one memory-judge score spends its time, step by step, each timed on its own.

    Steps of every score, then steps done once per memory version: a process that has not read the judge
    yet (a restart) replays all its commits, and the first score after any change builds the vector
    snapshot. Then LanceDB's own vector search over the judge's rows for comparison (score does not use it).
    """
    steps: dict[str, list[float]] = {k: [] for k in (*PER_SCORE, *PER_VERSION, "LanceDB vector search")}
    fields = engine.settings.embedding.embed_fields
    spec, _ = engine.spec_and_version(judge)
    k = engine.k_for(spec)
    snapshot = snapshot_of(engine.state(judge), engine.store.dim)
    search = lancedb_search(engine.store.uri, judge)
    for number, (q, a) in enumerate(pairs):
        t0 = time.perf_counter()
        vector = engine.embedder.embed([text_for_embedding(q, a, fields)])[0]
        t1 = time.perf_counter()
        state = engine.state(judge)
        t2 = time.perf_counter()
        best = snapshot.top(vector, k, set())
        t3 = time.perf_counter()
        rows = snapshot.rows or engine.ledger.whole_rows(state, [i for i, _ in best])
        t4 = time.perf_counter()
        memory_verdict(spec, [Neighbour(rows[i], s) for i, s in best], engine.settings.memory.vote_margin)
        t5 = time.perf_counter()
        for name, d in zip(PER_SCORE, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            steps[name].append(d)
        if number < 5:  # seconds each at 100k items: a few runs are enough
            t0 = time.perf_counter()
            replayed = Ledger(engine.store).state(judge)  # a fresh ledger: no commits or rows cached
            t1 = time.perf_counter()
            snapshot_of(replayed, engine.store.dim)
            t2 = time.perf_counter()
            steps["state replay"].append(t1 - t0)
            steps["snapshot build"].append(t2 - t1)
        if number < 50:
            t0 = time.perf_counter()
            search(vector, k)
            steps["LanceDB vector search"].append(time.perf_counter() - t0)
    return {name: stats_ms(values) for name, values in steps.items()}


def bare_http_ms(base_url: str, runs: int) -> dict[str, float]:
    """Round trip of a minimal judgement request straight to the scripted server (no litellm)."""
    url = urlparse(base_url)
    body = json.dumps(
        {
            "model": "scripted",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "judgement", "schema": {}}},
        }
    )
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        connection.request("POST", f"{url.path}/chat/completions", body, {"Content-Type": "application/json"})
        connection.getresponse().read()
        times.append(time.perf_counter() - started)
    connection.close()
    return stats_ms(times)


# --- add and remove -------------------------------------------------------------------------------------


def new_feedback(bank: Bank, start: int, count: int, tag: str) -> list[FeedbackInput]:
    """Feedback items from the bank that no judge holds yet (fresh ids)."""
    out: list[FeedbackInput] = []
    for i in range(start, start + count):
        row = bank.rows[i % len(bank.rows)]
        out.append(
            FeedbackInput(
                inputs=row.inputs,
                outputs=row.outputs,
                value=row.label if row.label is not None else True,
                rationale=_rationale(row),
                id=f"{tag}-{i:06d}",
            )
        )
    return out


def time_adds(
    engine: MemAlignService, client: TimedClient, judge: str, batches: list[list[FeedbackInput]]
) -> dict[str, Any]:
    """add_feedback of each batch; items per second with model time taken out, and model calls per item."""
    walls: list[float] = []
    inside: list[float] = []
    calls = client.calls
    for batch in batches:
        before = client.model_seconds()
        started = time.perf_counter()
        engine.add_feedback(judge, batch)
        walls.append(time.perf_counter() - started)
        inside.append(client.model_seconds() - before)
    items = sum(len(b) for b in batches)
    own = sum(walls) - sum(inside)
    return {
        "batch_size": len(batches[0]),
        "calls": len(batches),
        "items": items,
        "items_per_second_excluding_model": items / own,
        "items_per_second_wall": items / sum(walls),
        "wall_ms_per_call": stats_ms(walls),
        "model_calls_per_item": (client.calls - calls) / items,
    }


def time_removes(
    engine: MemAlignService, client: TimedClient, judge: str, ids: Sequence[str], purge: bool
) -> dict[str, Any]:
    """remove_feedback of one item at a time; wall time, time inside the model, model calls per removal."""
    walls: list[float] = []
    inside: list[float] = []
    calls: list[int] = []
    for item_id in ids:
        before_s, before_calls = client.model_seconds(), client.calls
        started = time.perf_counter()
        result = engine.remove_feedback(judge, [item_id], purge=purge)
        walls.append(time.perf_counter() - started)
        inside.append(client.model_seconds() - before_s)
        calls.append(client.calls - before_calls)
        assert result.removed_ids == [item_id], result
    return {
        "purge": purge,
        "wall_ms": stats_ms(walls),
        "model_client_ms": stats_ms(inside),
        "model_calls_per_removal": float(np.mean(calls)),
    }


# --- fresh processes ------------------------------------------------------------------------------------

CHILD = """
import time
started = time.perf_counter()
import json, os, sys
from memalign_mcp.engine import open_engine
from memalign_mcp.settings import load_settings
imported = time.perf_counter()
config, overrides, judge, question, answer = json.loads(sys.argv[1])
engine = open_engine(load_settings(config, env={}, overrides=overrides))
opened = time.perf_counter()
result = engine.score(judge, question, answer)
scored = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
print(json.dumps({
    "import_s": imported - started, "open_s": opened - imported, "first_score_s": scored - opened,
    "model": result.model, "examples": len(result.examples_used),
    "rss_mib": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
}))
"""


def fresh_process(settings: Settings, judge: str, pair: tuple[str, str]) -> dict[str, Any]:
    """Run CHILD in a new interpreter: wall time from spawn to exit, and the child's own phase times."""
    overrides = {
        "store.data_dir": settings.store.data_dir,
        "server.judges_dir": "",
        "embedding.embed_fields": settings.embedding.embed_fields,
        "model.judge": settings.model.judge,
        "model.api_base": settings.model.api_base,
        "model.api_key": settings.model.api_key,
        "model.max_retries": settings.model.max_retries,
    }
    argument = json.dumps([str(CONFIG), overrides, judge, *pair])
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, argument], capture_output=True, text=True, check=True, env=env
    )
    wall = time.perf_counter() - started
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **report}


def restarts(settings: Settings, judge: str, pair: tuple[str, str], runs: int) -> dict[str, Any]:
    """Median of `runs` fresh-process first scores (after one unrecorded run that warms the file cache)."""
    fresh_process(settings, judge, pair)
    results = [fresh_process(settings, judge, pair) for _ in range(runs)]
    keys = ("wall_s", "import_s", "open_s", "first_score_s", "rss_mib", "peak_rss_mib")
    return {
        "runs": runs,
        "model": results[0]["model"],
        **{f"{k}_p50": float(np.median([r[k] for r in results])) for k in keys},
        "wall_s_max": max(r["wall_s"] for r in results),
    }


# --- tables ---------------------------------------------------------------------------------------------


def _ms(s: dict[str, float]) -> str:
    return f"{s['p50']:.1f} / {s['p99']:.1f}"


def tables(result: dict[str, Any]) -> str:
    """Every Markdown table of the run."""
    out = [f"### Engine overhead\n\n{describe(result)}\n\n{result['setup']['how']}\n"]
    out.append(
        "#### score_response (ms, p50 / p99)\n\n"
        "| Judge | Feedback items in memory | Embedded | Runs | score wall | inside model client | ours "
        "(wall minus model client) | model calls/score |\n|---|---|---|---|---|---|---|---|"
    )
    for r in result["score"]:
        out.append(
            f"| {r['judge']} | {r['items']:,} | {r['embed_fields']} | {r['wall_ms']['n']} | {_ms(r['wall_ms'])} | "
            f"{_ms(r['model_client_ms'])} | {_ms(r['own_ms'])} | {r['model_calls_per_score']:.0f} |"
        )
    http = result["bare_http_ms"]
    out.append(
        f"\nBare HTTP round trip to the scripted server without litellm: {_ms(http)} ms (p50 / p99), so litellm "
        "itself accounts for most of the 'inside model client' column.\n"
    )
    steps = list(result["score_breakdown"][0]["steps"])
    out.append(
        "#### Where a memory-judge score spends its time (ms, p50 / p99, each step timed alone)\n\n"
        f"Every score: {', '.join(PER_SCORE)}. Once per memory version (the first score after a change pays "
        f"them): {', '.join(PER_VERSION)}. For comparison, LanceDB's own vector search over the judge's rows, "
        "which score does not use.\n\n"
        "| Feedback items | " + " | ".join(steps) + " |\n|---" + "|---" * len(steps) + "|"
    )
    for r in result["score_breakdown"]:
        out.append(f"| {r['items']:,} | " + " | ".join(_ms(r["steps"][s]) for s in steps) + " |")
    out.append(
        "\n#### add_feedback (scripted model; distillation batches of 50)\n\n"
        "| Batch size | Embedded | Calls | Items/s excluding model time | Items/s wall | ms per call "
        "(p50 / p99) | Model calls per item |\n|---|---|---|---|---|---|---|"
    )
    for r in result["add_feedback"]:
        out.append(
            f"| {r['batch_size']} | {r['embed_fields']} | {r['calls']} | "
            f"{r['items_per_second_excluding_model']:.1f} | {r['items_per_second_wall']:.1f} | "
            f"{_ms(r['wall_ms_per_call'])} | {r['model_calls_per_item']:.3f} |"
        )
    out.append(
        f"\n#### remove_feedback of one item, judge with {result['setup']['remove_items']:,} items\n\n"
        "| Case | Purge | Runs | wall ms (p50 / p99) | inside model client ms (p50 / p99) | model calls per removal "
        "|\n|---|---|---|---|---|---|"
    )
    for r in result["remove_feedback"]:
        out.append(
            f"| {r['case']} | {'yes' if r['purge'] else 'no'} | {r['wall_ms']['n']} | {_ms(r['wall_ms'])} | "
            f"{_ms(r['model_client_ms'])} | {r['model_calls_per_removal']:.1f} |"
        )
    out.append(
        "\n#### Restart: fresh process to first score (seconds, median)\n\n"
        "| Judge | Feedback items | Runs | spawn to exit | import | open engine | first score | RSS after "
        "score (MiB) |\n|---|---|---|---|---|---|---|---|"
    )
    for r in result["restart"]:
        out.append(
            f"| {r['model']} | {r['items']:,} | {r['runs']} | {r['wall_s_p50']:.2f} (max {r['wall_s_max']:.2f}) | "
            f"{r['import_s_p50']:.2f} | {r['open_s_p50']:.2f} | {r['first_score_s_p50']:.2f} | "
            f"{r['rss_mib_p50']:.0f} |"
        )
    out.append(
        "\n#### Resident memory of a process holding the big store, after one score\n\n"
        "| Judge scored | Items in that judge | Rows in the store | RSS (MiB) | peak RSS (MiB) |\n|---|---|---|---|---|"
    )
    for r in result["rss"]:
        out.append(
            f"| {r['model']} | {r['items']:,} | {r['store_rows']:,} | {r['rss_mib_p50']:.0f} | "
            f"{r['peak_rss_mib_p50']:.0f} |"
        )
    return "\n".join(out) + "\n"


# --- the run --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the FeedbackQA folder (read in place)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=200, help="scores timed per size and judge")
    parser.add_argument("--remove-items", type=int, default=10_000, help="judge size for remove and restart")
    parser.add_argument("--restarts", type=int, default=5, help="fresh processes per restart case")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def timed(what: str, action: Callable[[], Any]) -> Any:
    """Run a set-up step and log how long it took."""
    started = time.perf_counter()
    value = action()
    log(f"{what}: {time.perf_counter() - started:.1f} s")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Build the stores, measure everything, print the tables and write the JSON."""
    args = parse_args(argv)
    record = run_record()
    embedder = LocalMiniLMEmbedder()
    embedder.warm()
    bank = make_bank(args.data, embedder)
    pairs = queries(bank, args.runs)
    result: dict[str, Any] = {"benchmark": "overhead", **record, "embedder": embedder.name}
    with (
        ScriptedModelServer(trivial_script) as server,
        tempfile.TemporaryDirectory(prefix="memalign-oh-") as tmp,
    ):
        big_dir, small_dir = f"{tmp}/big", f"{tmp}/small"
        big, big_client = engine_for(settings_for(big_dir, model_url=server.base_url), embedder)
        judges = {n: f"fill-{n}" for n in args.sizes}
        for n, judge in judges.items():
            timed(f"filled {judge} ({n:,} rows)", lambda n=n, judge=judge: fill(big, judge, n, bank, seed=n))
        store_rows = sum(len(s.feedback) + len(s.guidelines) for s in map(big.state, judges.values()))
        result["setup"] = {
            "how": (
                f"One LanceDB table holding {store_rows:,} rows: judges with {', '.join(f'{n:,}' for n in args.sizes)} "
                f"feedback items and {GUIDELINES} guidelines each, committed through Ledger.change in transactions "
                f"of {CHUNK} rows with precomputed vectors ({len(bank.rows):,} FeedbackQA questions embedded once with "
                f"MiniLM; item i reuses question i mod {len(bank.rows):,}, its answer and rationale, and its vector "
                f"plus Gaussian noise sigma {NOISE} per dimension, renormalised). Scored responses are real "
                "FeedbackQA test questions and answers; the scripted model answers instantly."
            ),
            "store_rows": store_rows,
            "remove_items": args.remove_items,
        }
        memory, memory_client = engine_for(settings_for(big_dir, model_url=None), embedder)
        # Warm litellm (its import takes seconds) before anything is timed.
        big.score(judges[args.sizes[0]], *pairs[0])
        score_rows: list[dict[str, Any]] = []
        breakdowns: list[dict[str, Any]] = []
        for n, judge in judges.items():
            for label, engine, client in (
                ("scripted model", big, big_client),
                ("memory judge", memory, memory_client),
            ):
                row = time_scores(engine, client, judge, pairs, warm=10)
                score_rows.append({"judge": label, "items": n, "embed_fields": "inputs", **row})
                log(
                    f"score {label} at {n:,}: p50 {row['wall_ms']['p50']:.1f} ms, ours {row['own_ms']['p50']:.1f}"
                )
            breakdowns.append({"items": n, "steps": breakdown(memory, judge, pairs)})
        largest = judges[args.sizes[-1]]
        long_texts, long_client = engine_for(
            settings_for(big_dir, model_url=server.base_url, fields="inputs+outputs"), embedder
        )
        long_texts.score(largest, *pairs[0])
        row = time_scores(long_texts, long_client, largest, pairs[: max(20, args.runs // 4)], warm=5)
        score_rows.append(
            {"judge": "scripted model", "items": args.sizes[-1], "embed_fields": "inputs+outputs", **row}
        )
        result["score"] = score_rows
        result["score_breakdown"] = breakdowns
        result["bare_http_ms"] = bare_http_ms(server.base_url, 200)

        result["rss"] = []
        for label, url in (("memory", None), ("openai/scripted", server.base_url)):
            rss = restarts(settings_for(big_dir, model_url=url), largest, pairs[1], runs=1)
            result["rss"].append({"items": args.sizes[-1], "store_rows": store_rows, **rss, "model": label})

        # The 10k store: remove (with and without purge) at 10k items, restart, then add.
        small, small_client = engine_for(settings_for(small_dir, model_url=server.base_url), embedder)
        judge = "remove-10k"
        ids = timed(f"filled {judge}", lambda: fill(small, judge, args.remove_items, bank, seed=7))
        small.score(judge, *pairs[0])

        guidelines = small.state(judge).guideline_rows()
        cited = [g.sources[0] for g in guidelines]
        cited_set = {s for g in guidelines for s in g.sources}
        uncited = [i for i in ids if i not in cited_set]
        removes = [
            {
                "case": "item cited by a guideline (re-derived)",
                **time_removes(small, small_client, judge, cited[:15], False),
            },
            {
                "case": "item cited by no guideline",
                **time_removes(small, small_client, judge, uncited[:20], False),
            },
            {
                "case": "item cited by a guideline (re-derived)",
                **time_removes(small, small_client, judge, cited[15:18], True),
            },
            {
                "case": "item cited by no guideline",
                **time_removes(small, small_client, judge, uncited[20:23], True),
            },
        ]
        result["remove_feedback"] = removes
        log("removals measured")
        result["restart"] = []
        for label, url in (("memory", None), ("openai/scripted", server.base_url)):
            rs = restarts(settings_for(small_dir, model_url=url), judge, pairs[2], runs=args.restarts)
            result["restart"].append({"items": len(small.state(judge).feedback), **rs, "model": label})
        adds: list[dict[str, Any]] = []
        offset = 0
        for fields, plan in (("inputs", ((1, 50), (100, 10))), ("inputs+outputs", ((1, 20), (100, 3)))):
            engine, client = engine_for(
                settings_for(small_dir, model_url=server.base_url, fields=fields), embedder
            )
            for size, calls in plan:
                batches = [new_feedback(bank, offset + i * size, size, f"add{size}") for i in range(calls)]
                offset += size * calls
                row = time_adds(engine, client, judge, batches)
                adds.append({"embed_fields": fields, **row})
                log(f"add batch {size} ({fields}): {row['items_per_second_excluding_model']:.1f} items/s")
        result["add_feedback"] = adds
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "overhead.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(tables(result))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
