"""Side-by-side benchmark: memalign-mcp's engine against MLflow's MemAlignOptimizer on the same work.

Both engines talk to one scripted OpenAI-compatible model and embedding server that runs in this process and
answers instantly (benchmarks/side_by_side_script.py), so what is measured is each framework's own overhead.
Each engine runs in its own worker process (ours in .venv, MLflow in benchmarks/.venv-mlflow made by
setup_mlflow.sh); this process only sends commands, counts the requests each command caused at the server,
and writes benchmarks/results/side_by_side.json plus a Markdown table on stdout. It never installs anything
and never reaches the network.

    .venv/bin/python benchmarks/mlflow_side_by_side.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from scripted_model import ScriptedModelServer  # noqa: E402 - tests/ is put on the path just above
from side_by_side_script import SideBySideScript  # noqa: E402

DATASET = Path("/work/shared/datasets/feedbackqa")
OUR_PYTHON = ROOT / ".venv" / "bin" / "python"
MLFLOW_PYTHON = HERE / ".venv-mlflow" / "bin" / "python"
INSTRUCTIONS = (
    "Evaluate whether the support answer is helpful given the user's question.\n\n"
    "User query: {{ inputs }}\n"
    "Assistant response: {{ outputs }}\n"
)
HELPFUL = frozenset({"Excellent", "Acceptable"})
REPLY_TIMEOUT_S = 900.0
NOTES = [
    "The scripted server answers instantly, so times are each framework's own overhead, not model latency.",
    "MLflow's judge calls go through its own OpenAI client (GatewayAdapter), ours through litellm; that is most "
    "of the gap in 'score without memory'.",
    "MLflow's retriever (dspy.retrievers.Embeddings) sends each query through dspy's Unbatchify, which waits up "
    "to 0.1 s for more queries to batch: most of MLflow's added latency per score.",
    "MLflow 3.17.2 builds its episodic corpus with getattr(example, 'inputs'), which on a dspy.Example is the "
    "bound method Example.inputs: every corpus text is '<bound method Example.inputs of Example({...whole "
    "example, verdict and rationale included...}) (input_keys={...})>', not the inputs text.",
    "That text ends in a Python set whose order follows the process's string hash seed, so a restarted process "
    "hits DSPy's disk cache of corpus embeddings only under the same seed; MLflow workers run with "
    "PYTHONHASHSEED=0 (its best case), and the 'cache empty' restarts show its worst case.",
    "MLflow traces: its notebook flushes the async trace queue before each log_assessment (about 1 s a trace); "
    "the benchmark logs all spans, flushes once, then logs the feedback. Neither is counted in align.",
    "MLflow distils up to 8 batches in parallel (MLFLOW_GENAI_OPTIMIZE_MAX_WORKERS); ours distils batches in "
    "order, each seeing the guidelines of the batches before it.",
]
WARMUP_ITEMS = 5

Item = dict[str, Any]
Result = dict[str, Any]


# --- data ---------------------------------------------------------------------------------------------------


def feedback_items(dataset: Path) -> list[Item]:
    """FeedbackQA train + valid as feedback: ties skipped, rationale of the first rater who agrees with the label."""
    items: list[Item] = []
    for split in ("train", "valid"):
        with (dataset / f"{split}.jsonl").open(encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                label = row["label"]
                if label is None:
                    continue
                agreeing = [
                    text.strip()
                    for text, rating in zip(row["rationales"], row["ratings"], strict=True)
                    if (rating in HELPFUL) == label and text.strip()
                ]
                if not agreeing:
                    continue
                items.append(
                    {
                        "id": row["id"],
                        "inputs": row["inputs"],
                        "outputs": row["outputs"],
                        "value": bool(label),
                        "rationale": agreeing[0],
                    }
                )
    return items


def test_responses(dataset: Path, count: int) -> list[Item]:
    """The first `count` responses of FeedbackQA test, to be scored."""
    out: list[Item] = []
    with (dataset / "test.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            out.append({"inputs": row["inputs"], "outputs": row["outputs"]})
            if len(out) == count:
                break
    return out


# --- the server's counters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """What the scripted server had received at one moment."""

    chat: int
    embedding_requests: int
    embedded_texts: int
    kinds: Counter[str]

    def minus(self, earlier: Tally) -> dict[str, Any]:
        """The requests made between `earlier` and this tally."""
        kinds = self.kinds - earlier.kinds
        return {
            "chat": self.chat - earlier.chat,
            "embedding": self.embedding_requests - earlier.embedding_requests,
            "embedded_texts": self.embedded_texts - earlier.embedded_texts,
            "chat_by_kind": dict(sorted(kinds.items())),
        }


def tally(server: ScriptedModelServer, script: SideBySideScript) -> Tally:
    """The server's counters now."""
    with server.lock:
        return Tally(
            chat=len(server.calls),
            embedding_requests=len(server.embedding_calls),
            embedded_texts=sum(len(c.texts) for c in server.embedding_calls),
            kinds=Counter(script.kinds),
        )


# --- workers ------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """One engine's worker process and the JSON lines it answers."""

    name: str
    process: subprocess.Popen[str]
    log: IO[str]
    replies: queue.Queue[str | None] = field(default_factory=queue.Queue[str | None])
    spawned: float = 0.0

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path) -> Worker:
        """Start a worker with stderr going to a log file."""
        log = log_path.open("a", encoding="utf-8")
        log.write(f"\n=== {name} {dt.datetime.now().isoformat()} ===\n")
        log.flush()
        spawned = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=ROOT,
            bufsize=1,
        )
        worker = cls(name=name, process=process, log=log, spawned=spawned)
        threading.Thread(target=worker.read_replies, daemon=True).start()
        return worker

    def read_replies(self) -> None:
        """Move each answer line to the queue; None when the worker's stdout closes."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.replies.put(line)
        self.replies.put(None)

    def send(self, command: dict[str, Any]) -> None:
        """Queue one command without waiting for its answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self) -> Result:
        """The next answer; ok=false when the worker died or went silent."""
        try:
            line = self.replies.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            return {"ok": False, "error": f"{self.name}: no answer in {REPLY_TIMEOUT_S:.0f} s"}
        if line is None:
            return {"ok": False, "error": f"{self.name}: the worker exited (see the log)"}
        return json.loads(line)

    def ask(self, command: dict[str, Any]) -> Result:
        """Send one command and wait for its answer."""
        self.send(command)
        return self.receive()

    def close(self) -> None:
        """Ask the worker to exit and wait for it."""
        if self.process.poll() is None:
            try:
                self.send({"op": "exit"})
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(timeout=120)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


@dataclass
class Bench:
    """The shared server, the work, and where logs go."""

    server: ScriptedModelServer
    script: SideBySideScript
    workdir: Path
    log_dir: Path

    def phase(self, worker: Worker, command: dict[str, Any]) -> Result:
        """Run one command and attach the requests it caused."""
        before = tally(self.server, self.script)
        reply = worker.ask(command)
        reply["requests"] = tally(self.server, self.script).minus(before)
        return reply

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """The workers' environment: offline, quiet, loopback only."""
        env = dict(os.environ)
        env.update(
            {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env


# --- the work -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """What both engines are asked to do."""

    warmup: list[Item]
    warmup_response: Item
    align_sets: dict[int, list[Item]]
    responses: list[Item]
    restart_responses: list[Item]
    cold_restart_responses: list[Item]

    @property
    def restart_count(self) -> int:
        """How many fresh processes are timed on each side."""
        return len(self.restart_responses)

    @property
    def largest(self) -> int:
        """The size of the biggest alignment, whose judge is scored, unaligned and restarted."""
        return max(self.align_sets)


def our_judge(size: int) -> str:
    """Our judge's name for one alignment size."""
    return f"sbs-{size}"


def score_all(
    bench: Bench, worker: Worker, judge: str, responses: Sequence[Item], extra: dict[str, Any] | None = None
) -> Result:
    """Score every response, one command each, with per-score requests."""
    latencies: list[float] = []
    chat: list[int] = []
    embedding: list[int] = []
    errors: list[str] = []
    for response in responses:
        reply = bench.phase(worker, {"op": "score", "judge": judge, **response, **(extra or {})})
        if not reply["ok"]:
            errors.append(reply["error"])
            if len(errors) >= 3:
                break
            continue
        latencies.append(reply["wall_s"])
        chat.append(reply["requests"]["chat"])
        embedding.append(reply["requests"]["embedding"])
    if not latencies:
        return {"ok": False, "error": errors[0] if errors else "nothing scored"}
    return {
        "ok": True,
        "n": len(latencies),
        "latency_ms": summary([s * 1000 for s in latencies]),
        "chat_per_score": summary([float(c) for c in chat]),
        "embedding_per_score": summary([float(e) for e in embedding]),
        "errors": errors,
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p99 (nearest rank), mean, min and max."""
    ordered = sorted(values)
    rank = max(1, math.ceil(0.99 * len(ordered)))
    return {
        "median": statistics.median(ordered),
        "p99": ordered[rank - 1],
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }


def restart(
    bench: Bench, name: str, argv: Sequence[str], env: dict[str, str], steps: list[dict[str, Any]]
) -> Result:
    """Start a fresh process, send `steps` at once, and time spawn to the last answer (the first score)."""
    before = tally(bench.server, bench.script)
    worker = Worker.spawn(name, argv, env, bench.log_dir / f"{name}.log")
    for step in steps:
        worker.send(step)
    replies = [worker.receive() for _ in steps]
    total = time.perf_counter() - worker.spawned
    requests = tally(bench.server, bench.script).minus(before)
    worker.close()
    failed = [r for r in replies if not r["ok"]]
    if failed:
        return {"ok": False, "error": failed[0]["error"], "replies": replies, "requests": requests}
    return {
        "ok": True,
        "spawn_to_first_score_s": total,
        "import_s": replies[0].get("import_s"),
        "steps": {step["op"]: reply for step, reply in zip(steps, replies, strict=True)},
        "requests": requests,
    }


def restarts(
    bench: Bench,
    name: str,
    argv: Sequence[str],
    envs: Sequence[dict[str, str]],
    steps: list[dict[str, Any]],
    responses: Sequence[Item],
) -> Result:
    """Several restarts, each scoring a response of its own; medians of the times, every run's requests."""
    runs: list[Result] = []
    for number, (env, response) in enumerate(zip(envs, responses, strict=True), start=1):
        score = {**steps[-1], **response}
        run = restart(bench, f"{name}-{number}", argv, env, [*steps[:-1], score])
        runs.append(run)
        if not run["ok"]:
            return {**run, "runs": runs}
    return {
        "ok": True,
        "n": len(runs),
        "spawn_to_first_score_s": statistics.median(r["spawn_to_first_score_s"] for r in runs),
        "import_s": statistics.median(r["import_s"] for r in runs),
        "open_s": statistics.median(
            sum(r["steps"][op]["wall_s"] for op in r["steps"] if op != "score") for r in runs
        ),
        "first_score_s": statistics.median(r["steps"]["score"]["wall_s"] for r in runs),
        "requests": runs[0]["requests"],
        "requests_every_run": [r["requests"] for r in runs],
        "runs": runs,
    }


def run_ours(bench: Bench, work: Work) -> Result:
    """The whole workflow on memalign-mcp's engine."""
    out: Result = {}
    data_dir = bench.workdir / "ours"
    argv = [str(OUR_PYTHON), str(HERE / "side_by_side_ours.py")]
    env = bench.env({})
    opened = {"op": "open", "data_dir": str(data_dir), "base_url": bench.server.base_url}
    worker = Worker.spawn("ours", argv, env, bench.log_dir / "ours.log")
    try:
        out["open"] = bench.phase(worker, opened)
        if not out["open"]["ok"]:
            return out
        # Warm-up, not compared: the first model call of a process pays one-time costs on both sides.
        bench.phase(worker, {"op": "create_judge", "judge": "sbs-warmup", "instructions": INSTRUCTIONS})
        out["warmup_align"] = bench.phase(
            worker, {"op": "align", "judge": "sbs-warmup", "items": work.warmup}
        )
        out["warmup_score"] = bench.phase(
            worker, {"op": "score", "judge": "sbs-warmup", **work.warmup_response}
        )
        for size, items in work.align_sets.items():
            bench.phase(
                worker, {"op": "create_judge", "judge": our_judge(size), "instructions": INSTRUCTIONS}
            )
            out[f"align_{size}"] = bench.phase(
                worker, {"op": "align", "judge": our_judge(size), "items": items}
            )
        judge = our_judge(work.largest)
        out["score"] = score_all(bench, worker, judge, work.responses)
        out["score_unaligned"] = score_all(bench, worker, judge, work.responses, {"memory": False})
        unalign_id = work.align_sets[work.largest][0]["id"]
        out["unalign"] = bench.phase(worker, {"op": "unalign", "judge": judge, "id": unalign_id})
        out["persist"] = bench.phase(worker, {"op": "persist", "judge": judge})
    finally:
        worker.close()
    n = len(work.restart_responses)
    steps = [opened, {"op": "score", "judge": judge}]
    out["restart"] = restarts(bench, "ours-restart", argv, [env] * n, steps, work.restart_responses)
    return out


def run_mlflow(bench: Bench, work: Work) -> Result:
    """The whole workflow on MLflow's MemAlignOptimizer, as in its notebook."""
    out: Result = {}
    if not MLFLOW_PYTHON.exists():
        return {"skipped": f"{MLFLOW_PYTHON} is missing; run benchmarks/setup_mlflow.sh first"}
    tracking = bench.workdir / "mlflow"
    tracking.mkdir(parents=True, exist_ok=True)
    argv = [str(MLFLOW_PYTHON), str(HERE / "side_by_side_mlflow.py")]
    model_env = {
        "OPENAI_API_KEY": "test",
        "OPENAI_BASE_URL": bench.server.base_url,
        "OPENAI_API_BASE": bench.server.base_url,
        "MLFLOW_MODEL_CATALOG_URI": "",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TQDM_DISABLE": "1",
    }
    # DSPy caches embeddings and completions on disk; a cache of this run only, so earlier runs cannot help.
    # MemAlign 3.17's corpus texts are reprs of dspy.Example bound methods that end in a set of input keys,
    # whose order follows the per-process string hash seed: one fixed seed for every MLflow process lets the
    # restart reuse the aligning process's disk cache (MLflow's best case); the cold restart is its worst.
    env = bench.env({**model_env, "DSPY_CACHEDIR": str(bench.workdir / "dspy-cache"), "PYTHONHASHSEED": "0"})
    opened = {"op": "open", "tracking_dir": str(tracking), "experiment": "side-by-side"}
    worker = Worker.spawn("mlflow", argv, env, bench.log_dir / "mlflow.log")
    try:
        out["open"] = bench.phase(worker, opened)
        if not out["open"]["ok"]:
            return out
        out["versions"] = {"mlflow": out["open"].get("mlflow_version")}
        bench.phase(worker, {"op": "create_judge", "judge": "base", "instructions": INSTRUCTIONS})
        # The notebook's way (flush before each feedback) on the warm-up items, then the rest in one flush.
        notebook = {"op": "create_traces", "items": work.warmup, "flush_each": True}
        out["create_traces_notebook"] = bench.phase(worker, notebook)
        every = [item for items in work.align_sets.values() for item in items]
        out["create_traces"] = bench.phase(worker, {"op": "create_traces", "items": every})
        if not out["create_traces"]["ok"]:
            return out
        warmup = {"op": "align", "judge": "warmup", "base": "base", "ids": [i["id"] for i in work.warmup]}
        out["warmup_align"] = bench.phase(worker, warmup)
        out["warmup_score"] = bench.phase(worker, {"op": "score", "judge": "warmup", **work.warmup_response})
        for size, items in work.align_sets.items():
            command = {
                "op": "align",
                "judge": f"align_{size}",
                "base": "base",
                "ids": [i["id"] for i in items],
            }
            out[f"align_{size}"] = bench.phase(worker, command)
        judge = f"align_{work.largest}"
        out["score"] = score_all(bench, worker, judge, work.responses)
        plain = {"memory": False, "base": "base"}
        out["score_unaligned"] = score_all(bench, worker, judge, work.responses, plain)
        unalign_id = work.align_sets[work.largest][0]["id"]
        out["unalign"] = bench.phase(worker, {"op": "unalign", "judge": judge, "id": unalign_id})
        out["persist"] = bench.phase(worker, {"op": "persist", "judge": judge})
    finally:
        worker.close()
    if not out.get("persist", {}).get("ok"):
        return out
    experiment_id = out["open"]["experiment_id"]
    steps: list[dict[str, Any]] = [
        opened,
        {"op": "load", "judge": judge, "experiment_id": experiment_id},
        {"op": "score", "judge": judge},
    ]
    n = len(work.restart_responses)
    out["restart"] = restarts(bench, "mlflow-restart", argv, [env] * n, steps, work.restart_responses)
    # The same on a host whose DSPy disk cache is empty (a new container, another machine): a new one each time.
    cold_envs = [
        bench.env(
            {**model_env, "DSPY_CACHEDIR": str(bench.workdir / f"dspy-cache-cold-{i}"), "PYTHONHASHSEED": "0"}
        )
        for i in range(n)
    ]
    out["restart_cold_cache"] = restarts(
        bench, "mlflow-restart-cold", argv, cold_envs, steps, work.cold_restart_responses
    )
    return out


# --- report -------------------------------------------------------------------------------------------------


def _get(result: Result, *path: str) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]  # pyright: ignore[reportUnknownVariableType]
    return node


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _ratio(mlflow: Any, ours: Any) -> str:
    if not isinstance(mlflow, int | float) or not isinstance(ours, int | float):
        return "n/a"
    if ours == 0:
        return "ours 0" if mlflow else "both 0"
    return f"{mlflow / ours:.1f}x"


def _requests(phase: Any) -> str:
    if not isinstance(phase, dict) or "requests" not in phase:
        return "n/a"
    r: dict[str, Any] = phase["requests"]  # pyright: ignore[reportUnknownVariableType]
    return f"{r['chat']} chat + {r['embedding']} emb ({r['embedded_texts']} texts)"


def _failure(phase: Any) -> str | None:
    if isinstance(phase, dict) and phase.get("ok") is False:  # pyright: ignore[reportUnknownMemberType]
        return f"failed: {phase.get('error')}"  # pyright: ignore[reportUnknownMemberType]
    return None


def table(results: Result, work: Work) -> str:
    """The comparison as a Markdown table."""
    ours: Result = results["ours"]
    theirs: Result = results["mlflow"]
    rows: list[tuple[str, str, str, str]] = []

    def timed(label: str, key: str, path: tuple[str, ...], scale: float, unit: str) -> None:
        o, m = _get(ours, key, *path), _get(theirs, key, *path)
        o = o * scale if isinstance(o, int | float) else o
        m = m * scale if isinstance(m, int | float) else m
        rows.append(
            (
                label,
                _failure(ours.get(key)) or _fmt(o, unit),
                _failure(theirs.get(key)) or _fmt(m, unit),
                _ratio(m, o),
            )
        )

    def counted(label: str, key: str) -> None:
        o, m = ours.get(key), theirs.get(key)
        oc = _get(ours, key, "requests", "chat")
        mc = _get(theirs, key, "requests", "chat")
        oe = _get(ours, key, "requests", "embedding")
        me = _get(theirs, key, "requests", "embedding")
        total_o = oc + oe if isinstance(oc, int) and isinstance(oe, int) else None
        total_m = mc + me if isinstance(mc, int) and isinstance(me, int) else None
        rows.append((label, _requests(o), _requests(m), _ratio(total_m, total_o)))

    for size in work.align_sets:
        timed(f"align {size} items: wall", f"align_{size}", ("wall_s",), 1.0, " s")
        counted(f"align {size} items: requests", f"align_{size}")
        rows.append(
            (
                f"align {size} items: memory after (guidelines / examples)",
                f"{_fmt(_get(ours, f'align_{size}', 'semantic'))} / {_fmt(_get(ours, f'align_{size}', 'episodic'))}",
                f"{_fmt(_get(theirs, f'align_{size}', 'semantic'))} / {_fmt(_get(theirs, f'align_{size}', 'episodic'))}",
                "",
            )
        )
    n_traces = sum(len(v) for v in work.align_sets.values())
    rows.append(
        (
            f"MLflow only: log {n_traces} traces + feedback, one flush (not in align)",
            "not needed",
            _failure(theirs.get("create_traces")) or _fmt(_get(theirs, "create_traces", "wall_s"), " s"),
            "",
        )
    )
    per_trace = _get(theirs, "create_traces_notebook", "wall_s")
    rows.append(
        (
            "MLflow only: per trace the notebook's way (flush before each log_assessment)",
            "not needed",
            _fmt(per_trace / len(work.warmup) if isinstance(per_trace, float) else None, " s"),
            "",
        )
    )
    timed(f"score ({len(work.responses)} responses): median", "score", ("latency_ms", "median"), 1.0, " ms")
    timed("score: p99", "score", ("latency_ms", "p99"), 1.0, " ms")
    timed("score: mean", "score", ("latency_ms", "mean"), 1.0, " ms")
    timed(
        "score without memory (unaligned judge): median",
        "score_unaligned",
        ("latency_ms", "median"),
        1.0,
        " ms",
    )
    added = [
        _get(side, "score", "latency_ms", "median") - _get(side, "score_unaligned", "latency_ms", "median")
        if isinstance(_get(side, "score_unaligned", "latency_ms", "median"), float)
        and isinstance(_get(side, "score", "latency_ms", "median"), float)
        else None
        for side in (ours, theirs)
    ]
    rows.append(
        (
            "memory's added latency per score (median aligned - unaligned)",
            _fmt(added[0], " ms"),
            _fmt(added[1], " ms"),
            _ratio(added[1], added[0]),
        )
    )
    for kind in ("chat", "embedding"):
        o = _get(ours, "score", f"{kind}_per_score", "mean")
        m = _get(theirs, "score", f"{kind}_per_score", "mean")
        rows.append((f"score: {kind} requests per score", _fmt(o), _fmt(m), _ratio(m, o)))
    timed("unalign 1 item: wall", "unalign", ("wall_s",), 1000.0, " ms")
    counted("unalign 1 item: requests", "unalign")
    rows.append(
        (
            "unalign: guidelines removed / re-derived",
            f"{_fmt(_get(ours, 'unalign', 'guidelines_removed'))} / {_fmt(_get(ours, 'unalign', 'guidelines_revised'))}",
            "0 / 0 (keeps every guideline with a remaining source, unchanged)",
            "",
        )
    )
    timed("persist (MLflow: register scorer)", "persist", ("wall_s",), 1000.0, " ms")
    n = work.restart_count
    timed(
        f"restart, median of {n}: spawn to first score (MLflow: DSPy disk cache warm)",
        "restart",
        ("spawn_to_first_score_s",),
        1.0,
        " s",
    )
    timed("restart: of which imports", "restart", ("import_s",), 1.0, " s")
    timed("restart: of which open (MLflow: + get_scorer)", "restart", ("open_s",), 1.0, " s")
    timed(
        "restart: of which first score (MLflow: loads its memory here)",
        "restart",
        ("first_score_s",),
        1.0,
        " s",
    )
    counted("restart: requests, open to first score", "restart")
    cold = theirs.get("restart_cold_cache")
    rows.append(
        (
            f"restart, median of {n}, DSPy disk cache empty: spawn to first score",
            "same as above (no such cache)",
            _failure(cold) or _fmt(_get(theirs, "restart_cold_cache", "spawn_to_first_score_s"), " s"),
            _ratio(
                _get(theirs, "restart_cold_cache", "spawn_to_first_score_s"),
                _get(ours, "restart", "spawn_to_first_score_s"),
            ),
        )
    )
    rows.append(
        (
            "restart, DSPy disk cache empty: first score",
            "same as above",
            _fmt(_get(theirs, "restart_cold_cache", "first_score_s"), " s"),
            _ratio(
                _get(theirs, "restart_cold_cache", "first_score_s"), _get(ours, "restart", "first_score_s")
            ),
        )
    )
    rows.append(("restart, DSPy disk cache empty: requests", "same as above", _requests(cold), ""))
    lines = [
        "| measure | memalign-mcp | MLflow MemAlign | MLflow ÷ ours |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where the numbers were taken, and how busy the machine was when they started."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run both workflows against one scripted server and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--align-sizes", default="50,500", help="comma-separated alignment sizes")
    parser.add_argument("--scores", type=int, default=100, help="responses scored by the largest judge")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "side_by_side.json")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--sides", default="ours,mlflow", help="which engines to run")
    parser.add_argument("--restarts", type=int, default=3, help="fresh processes timed to their first score")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    args = parser.parse_args(argv)

    sizes = [int(s) for s in args.align_sizes.split(",")]
    pool = feedback_items(args.dataset)
    if sum(sizes) + WARMUP_ITEMS > len(pool):
        parser.error(
            f"the sizes need {sum(sizes) + WARMUP_ITEMS} feedback items; the dataset has {len(pool)}"
        )
    align_sets: dict[int, list[Item]] = {}
    warmup = pool[:WARMUP_ITEMS]
    offset = WARMUP_ITEMS
    for size in sizes:
        # Disjoint sets: a second alignment must not be served by DSPy's cache of the first.
        align_sets[size] = pool[offset : offset + size]
        offset += size
    # One response to warm up with, the scored ones, then one for each restart: none is scored twice, so that
    # DSPy's cache of query embeddings never answers for MLflow.
    n = args.restarts
    responses = test_responses(args.dataset, 1 + args.scores + 2 * n)
    scored = responses[1 : args.scores + 1]
    after = responses[args.scores + 1 :]
    work = Work(warmup, responses[0], align_sets, scored, after[:n], after[n:])

    workdir = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    log_dir = HERE / "out" / "side_by_side"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    script = SideBySideScript()
    sides = args.sides.split(",")
    results: Result = {
        "benchmark": "benchmarks/mlflow_side_by_side.py",
        "command": "cd /work/main && .venv/bin/python "
        + " ".join(["benchmarks/mlflow_side_by_side.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "work": {
            "dataset": str(args.dataset),
            "align_sizes": sizes,
            "scored_responses": len(work.responses),
            "unaligned_items": 1,
            "restarts": args.restarts,
            "model": "scripted OpenAI-compatible server on 127.0.0.1, instant replies, 64-dim hashed embeddings",
        },
        "notes": NOTES,
    }
    started = time.perf_counter()
    try:
        with ScriptedModelServer(script) as server:
            bench = Bench(server, script, workdir, log_dir)
            results["ours"] = run_ours(bench, work) if "ours" in sides else {"skipped": "not asked"}
            results["mlflow"] = run_mlflow(bench, work) if "mlflow" in sides else {"skipped": "not asked"}
            results["unknown_requests"] = script.kinds.get("unknown", 0)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown = table(results, work)
    results["table_markdown"] = markdown
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(markdown)
    print(f"\nresults: {args.out}; worker logs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
