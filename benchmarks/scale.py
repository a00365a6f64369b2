"""Retrieval at scale: one judge of 10k, 100k or 1M feedback items, searched the way score_response searches.

For each size, in a fresh store:
- fill: the judge's rows are committed through the engine's ledger in transactions of 50,000 rows (bulk, not
  add_feedback: its validation, embedding and distillation are measured elsewhere). Item i takes the vector of
  a FeedbackQA train/valid question (i mod 1,929) plus small Gaussian noise (cosine about 0.97), renormalised,
  with that question's text, answer and a rater's rationale;
- index: `MemoryStore.ensure_vector_index()` (LanceDB IVF_SQ; only at or above `vector_index_min_rows`);
- recall@5 of the engine's search (`nearest`) against exact search (numpy over the same vectors), over real
  FeedbackQA test questions (disjoint from the items' questions), embedded with MiniLM;
- a fresh process that opens the store and scores (memory judge): its resident memory after each step
  (imports, MiniLM loaded, store opened, judge state replayed, first score, after all scores), the state replay
  time, score p50/p99 (query embedding included) over --runs scores, then search alone p50/p99 over as many.
  With --s3 the stores are on s3:// in a local moto server (tests/s3_server.py), which also counts the
  object-store requests made by the timed scores.

Run from the repository root (writes its stores under --work, default a temporary folder, and the results as
JSON to --out):

    .venv/bin/python benchmarks/scale.py --sizes 10000 100000 1000000 --queries 300
    .venv/bin/python benchmarks/scale.py --s3 --sizes 100000 --queries 40 --runs 40
    .venv/bin/python benchmarks/scale.py --again DIR/scale-100000 --repeats 5   # the fresh process again
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from feedbackqa_data import DEFAULT_DATA, REPO, Row, agreeing_rationale, read_split
from memalign_mcp.embeddings import LocalMiniLMEmbedder, text_for_embedding
from memalign_mcp.engine import open_engine
from memalign_mcp.models import JudgeSpec
from memalign_mcp.records import MemoryRow, Summary
from memalign_mcp.settings import Settings, load_settings
from memalign_mcp.transaction import Change, MemoryState
from object_store import ObjectStore, running_object_store
from overhead import INSTRUCTIONS, NOISE, log
from run_record import percentile, run_record

CONFIG = REPO / "configs" / "default.toml"
JUDGE = "scale"
CHUNK = 50_000

CHILD = r"""
import json, sys, time
def rss():
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM")))
    return int(status["VmRSS"].split()[0]) / 1024
steps = {"python": rss()}
from memalign_mcp.embeddings import LocalMiniLMEmbedder, text_for_embedding
from memalign_mcp.engine import open_engine
from memalign_mcp.settings import load_settings
import numpy as np
steps["imports"] = rss()
config, overrides, judge, questions, runs, counter = json.loads(sys.argv[1])
embedder = LocalMiniLMEmbedder()
embedder.warm()
steps["MiniLM loaded"] = rss()
engine = open_engine(load_settings(config, env={}, overrides=overrides), embedder=embedder)
steps["store opened"] = rss()
t0 = time.perf_counter()
state = engine.state(judge)
replay_s = time.perf_counter() - t0
steps["judge state replayed"] = rss()
t0 = time.perf_counter()
engine.score(judge, questions[0], "An answer.")
first_s = time.perf_counter() - t0
steps["first score"] = rss()
def requests(reset=False):  # the object-store requests served so far (tests/s3_server.py counts them)
    if not counter:
        return 0
    import httpx
    reply = (httpx.delete if reset else httpx.get)(counter + "/_requests")
    return sum(json.loads(reply.text).values())
score_ms, search_ms = [], []
vectors = embedder.embed(questions[:runs])
requests(reset=True)
for n in range(runs):
    q = questions[n % len(questions)]
    t0 = time.perf_counter()
    result = engine.score(judge, q, "An answer.")
    score_ms.append((time.perf_counter() - t0) * 1000)
    assert result.model == "memory" and len(result.examples_used) == 5, result
score_requests = requests()
for n in range(runs):
    t0 = time.perf_counter()
    engine.nearest(engine.state(judge), vectors[n % len(vectors)], 5, set())
    search_ms.append((time.perf_counter() - t0) * 1000)
steps["after all scores"] = rss()
print(json.dumps({"rss_mib": steps, "replay_s": replay_s, "first_score_s": first_s, "score_ms": score_ms,
                  "search_ms": search_ms, "whole": state.whole, "items": len(state.feedback),
                  "requests_per_score": score_requests / runs if counter else None}))
"""


def settings_for(data_dir: str, store: ObjectStore | None = None) -> Settings:
    """Memory judge, query embedded from inputs, default retrieval settings, over one store."""
    return load_settings(CONFIG, env={}, overrides=overrides_for(data_dir, store))


def overrides_for(data_dir: str, store: ObjectStore | None = None) -> dict[str, Any]:
    """The settings overrides of a run (the child process gets the same)."""
    overrides: dict[str, Any] = {
        "store.data_dir": data_dir,
        "server.judges_dir": "",
        "embedding.embed_fields": "inputs",
    }
    if store is not None:
        overrides["store.storage_options"] = store.storage_options()
    return overrides


def fill(
    settings: Settings, embedder: LocalMiniLMEmbedder, n: int, bank: list[Row], bank_vectors: Any
) -> Any:
    """Create the judge and commit n rows in transactions of CHUNK; return their vectors (n x dim)."""
    engine = open_engine(settings, embedder=embedder)
    engine.create_judge(JudgeSpec(name=JUDGE, instructions=INSTRUCTIONS))
    rng = np.random.default_rng(n)
    out = np.zeros((n, bank_vectors.shape[1]), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        base = np.arange(start, stop) % len(bank)
        noisy = bank_vectors[base] + rng.normal(0.0, NOISE, size=(stop - start, bank_vectors.shape[1]))
        noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        out[start:stop] = noisy
        rows: list[MemoryRow] = []
        for offset, b in enumerate(base.tolist()):
            src, item_id = bank[b], f"{JUDGE}-{start + offset:07d}"
            body = {
                "inputs": src.inputs,
                "outputs": src.outputs,
                "expectations": None,
                "value": src.label,
                "rationale": agreeing_rationale(src),
                "source": "scale-fill",
            }
            rows.append(
                MemoryRow(
                    judge=JUDGE,
                    kind="feedback",
                    item_id=item_id,
                    vector=noisy[offset],
                    text=text_for_embedding(src.inputs, src.outputs, "inputs"),
                    body=body,
                    content_hash=hashlib.sha256(item_id.encode()).hexdigest(),
                )
            )
        change = Change(op="add", rows=rows, summary=Summary(feedback_added=tuple(r.item_id for r in rows)))

        def prepare(_: MemoryState, change: Change = change) -> Change:
            return change

        engine.ledger.change(JUDGE, prepare, who="scale-fill")
        log(f"  {stop:,} rows")
    return out


def recall_at_5(settings: Settings, embedder: LocalMiniLMEmbedder, vectors: Any, queries: Any) -> float:
    """Share of the exact top 5 (numpy, cosine) that the engine's search returns, over the queries."""
    engine = open_engine(settings, embedder=embedder)
    state = engine.state(JUDGE)
    hits = 0
    for start in range(0, len(queries), 50):
        block = queries[start : start + 50]
        similarity = vectors @ block.T  # rows are unit vectors, and so are MiniLM's queries
        for j, query in enumerate(block):
            exact = np.argpartition(-similarity[:, j], 5)[:5]
            wanted = {f"{JUDGE}-{i:07d}" for i in exact.tolist()}
            found = {n.row.item_id for n in engine.nearest(state, query, 5, set())}
            hits += len(found & wanted)
    return hits / (5 * len(queries))


def fresh_process(
    data_dir: str, questions: list[str], runs: int, store: ObjectStore | None = None
) -> dict[str, Any]:
    """Open the store in a new interpreter and score: resident memory by step, timings, requests per score."""
    counter = store.endpoint if store is not None else ""
    argument = json.dumps([str(CONFIG), overrides_for(data_dir, store), JUDGE, questions, runs, counter])
    env = os.environ | {"HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, argument], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the fresh process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_size(
    n: int,
    args: argparse.Namespace,
    embedder: LocalMiniLMEmbedder,
    data: dict[str, Any],
    store: ObjectStore | None = None,
) -> dict[str, Any]:
    """Fill, index, measure recall and a fresh process's figures for one size (on `store` if given)."""
    data_dir = str(Path(args.work) / f"scale-{n}") if store is None else store.new_prefix()
    settings = settings_for(data_dir, store)
    log(f"size {n:,}: filling {data_dir}")
    t0 = time.perf_counter()
    vectors = fill(settings, embedder, n, data["bank"], data["bank_vectors"])
    fill_s = time.perf_counter() - t0
    engine = open_engine(settings, embedder=embedder)
    t0 = time.perf_counter()
    built = engine.store.ensure_vector_index()
    index_s = time.perf_counter() - t0
    log(f"size {n:,}: filled in {fill_s:.1f} s, index built: {built} in {index_s:.1f} s")
    recall = recall_at_5(settings, embedder, vectors, data["query_vectors"])
    log(f"size {n:,}: recall@5 {recall:.3f}")
    del vectors
    child = fresh_process(data_dir, data["questions"], args.runs, store)
    score, search = child.pop("score_ms"), child.pop("search_ms")
    return {
        "items": n,
        "store": "s3:// on moto" if store is not None else "local directory",
        "fill_s": fill_s,
        "index_built": built,
        "index_s": index_s,
        "recall_at_5": recall,
        "score_ms": {"p50": percentile(score, 50), "p99": percentile(score, 99)},
        "search_ms": {"p50": percentile(search, 50), "p99": percentile(search, 99)},
        "load_average": os.getloadavg(),
        **child,
    }


def again(args: argparse.Namespace) -> None:
    """The fresh process's figures --repeats times on one store: their score p50s and the median of those."""
    questions = [r.inputs for r in read_split(DEFAULT_DATA, "test")][: args.queries]
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        child = fresh_process(args.again, questions, args.runs)
        score, search = child.pop("score_ms"), child.pop("search_ms")
        runs.append({"score_p50": percentile(score, 50), "search_p50": percentile(search, 50), **child})
        log(f"score p50 {runs[-1]['score_p50']:.1f} ms, RSS {child['rss_mib']['after all scores']:.0f} MiB")
    p50s = sorted(r["score_p50"] for r in runs)
    result = {"store": args.again, "median_score_p50": p50s[len(p50s) // 2], "runs": runs}
    print(json.dumps(result), flush=True)
    Path(args.out).write_text(json.dumps({"run": run_record(), "again": result}, indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    """Run every size and print the results as JSON lines (and write them to --out)."""
    parser = argparse.ArgumentParser(description="Retrieval at scale: one judge of 10k, 100k or 1M items.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300, help="test questions for recall@5")
    parser.add_argument("--runs", type=int, default=200, help="scores timed in the fresh process")
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="memalign-scale-"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    parser.add_argument(
        "--s3", action="store_true", help="store on s3:// in a local moto server (tests/s3_server.py)"
    )
    parser.add_argument(
        "--again",
        metavar="DIR",
        help="only the fresh process, --repeats times, on a store this script filled before (a noisy machine)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.again:
        again(args)
        return
    embedder = LocalMiniLMEmbedder()
    bank = [r for split in ("train", "valid") for r in read_split(DEFAULT_DATA, split) if r.label is not None]
    tests = [r.inputs for r in read_split(DEFAULT_DATA, "test")][: args.queries]
    data = {
        "bank": bank,
        "bank_vectors": embedder.embed([r.inputs for r in bank]),
        "questions": tests,
        "query_vectors": embedder.embed(tests),
    }
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        store = None
        if args.s3:
            Path(args.work).mkdir(parents=True, exist_ok=True)
            store = stack.enter_context(running_object_store(Path(args.work) / "s3.log"))
        for n in args.sizes:
            results.append(run_size(n, args, embedder, data, store))
            print(json.dumps(results[-1]), flush=True)
            Path(args.out).write_text(json.dumps({"run": run_record(), "sizes": results}, indent=2))


if __name__ == "__main__":
    main()
