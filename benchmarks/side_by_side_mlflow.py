"""Worker for the side-by-side benchmark: drives MLflow's MemAlignOptimizer the way its notebook does.

Run by benchmarks/mlflow_side_by_side.py with benchmarks/.venv-mlflow (made by setup_mlflow.sh), never with
the project's environment: MLflow is not a dependency of memalign-mcp. It follows MLflow's documented
workflow (make_judge, traces with human feedback, judge.align, aligned_judge(...), unalign, register and
get_scorer) and times each step from the inside; request counting is left to the scripted model server.
MLflow is imported through importlib so that the project's type checker need not have it installed.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

from side_by_side_wire import Command, serve

STARTED = time.perf_counter()
# Without these MLflow and litellm reach for the network (model catalog, telemetry, price map) and stall.
os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

mlflow: Any = importlib.import_module("mlflow")
judges_module: Any = importlib.import_module("mlflow.genai.judges")
optimizers: Any = importlib.import_module("mlflow.genai.judges.optimizers")
entities: Any = importlib.import_module("mlflow.entities")
genai: Any = importlib.import_module("mlflow.genai")

IMPORTED = time.perf_counter()
FEEDBACK_NAME = "helpfulness"


class MlflowWorker:
    """MLflow's judges, traces and aligned judges, and the commands the benchmark sends them."""

    def __init__(self) -> None:
        self.experiment_id: str | None = None
        self.base: dict[str, Any] = {}
        self.aligned: dict[str, Any] = {}
        self.traces: dict[str, Any] = {}
        self.source: Any = entities.AssessmentSource(
            source_type=entities.AssessmentSourceType.HUMAN, source_id="feedbackqa_rater"
        )

    def open(self, command: Command) -> dict[str, Any]:
        """Point MLflow at a sqlite tracking store and an experiment."""
        started = time.perf_counter()
        mlflow.set_tracking_uri(f"sqlite:///{command['tracking_dir']}/mlflow.db")
        experiment = mlflow.set_experiment(command["experiment"])
        self.experiment_id = str(experiment.experiment_id)
        return {
            "wall_s": time.perf_counter() - started,
            "import_s": IMPORTED - STARTED,
            "experiment_id": self.experiment_id,
            "mlflow_version": str(mlflow.__version__),
        }

    def create_judge(self, command: Command) -> dict[str, Any]:
        """make_judge with a bool verdict, named like the human feedback it will learn from."""
        started = time.perf_counter()
        self.base[command["judge"]] = judges_module.make_judge(
            name=FEEDBACK_NAME,
            instructions=command["instructions"],
            feedback_value_type=bool,
            model="openai:/scripted",
        )
        return {"wall_s": time.perf_counter() - started}

    def create_traces(self, command: Command) -> dict[str, Any]:
        """One trace per feedback item with the human feedback logged on it.

        With flush_each (MLflow's notebook) every trace is flushed before its feedback is logged, which costs
        about a second a trace; otherwise all spans are written, flushed once, then the feedback is logged.
        """
        started = time.perf_counter()
        trace_ids: list[tuple[str, str]] = []
        for item in command["items"]:
            with mlflow.start_span("alignment_trace") as span:
                span.set_inputs({"inputs": item["inputs"]})
                span.set_outputs({"outputs": item["outputs"]})
                trace_ids.append((item["id"], span.trace_id))
            if command.get("flush_each"):
                self._log_feedback(item, span.trace_id)
        if not command.get("flush_each"):
            mlflow.flush_trace_async_logging()
            for item, (_, trace_id) in zip(command["items"], trace_ids, strict=True):
                self._log_feedback(item, trace_id, flush=False)
        for item_id, trace_id in trace_ids:
            self.traces[item_id] = mlflow.get_trace(trace_id)
        return {"wall_s": time.perf_counter() - started, "traces": len(command["items"])}

    def _log_feedback(self, item: dict[str, Any], trace_id: str, flush: bool = True) -> None:
        if flush:
            # Trace export is asynchronous: without a flush log_assessment does not find the trace.
            mlflow.flush_trace_async_logging()
        feedback = entities.Feedback(
            name=FEEDBACK_NAME, value=item["value"], rationale=item["rationale"], source=self.source
        )
        mlflow.log_assessment(trace_id, feedback)

    def align(self, command: Command) -> dict[str, Any]:
        """judge.align(traces, MemAlignOptimizer) from the unaligned judge."""
        traces = [self.traces[i] for i in command["ids"]]
        optimizer = optimizers.MemAlignOptimizer(
            reflection_lm="openai:/scripted",
            embedding_model="openai:/text-embedding-3-small",
            retrieval_k=5,
        )
        started = time.perf_counter()
        aligned = self.base[command["base"]].align(traces=traces, optimizer=optimizer)
        wall = time.perf_counter() - started
        self.aligned[command["judge"]] = aligned
        return {"wall_s": wall, **_memory(aligned)}

    def score(self, command: Command) -> dict[str, Any]:
        """Score one response with the aligned judge, or with the unaligned one when memory is false."""
        memory = command.get("memory", True)
        judge = self.aligned[command["judge"]] if memory else self.base[command["base"]]
        started = time.perf_counter()
        result = judge(inputs=command["inputs"], outputs=command["outputs"])
        return {"wall_s": time.perf_counter() - started, "value": _jsonable(result.value)}

    def unalign(self, command: Command) -> dict[str, Any]:
        """aligned_judge.unalign(traces=[one]); the result replaces the aligned judge."""
        judge = self.aligned[command["judge"]]
        started = time.perf_counter()
        updated = judge.unalign(traces=[self.traces[command["id"]]])
        wall = time.perf_counter() - started
        self.aligned[command["judge"]] = updated
        return {"wall_s": wall, **_memory(updated)}

    def persist(self, command: Command) -> dict[str, Any]:
        """Register the aligned judge as a scorer of the experiment (MLflow's way to keep it)."""
        judge = self.aligned[command["judge"]]
        started = time.perf_counter()
        judge.register(experiment_id=self.experiment_id)
        return {"wall_s": time.perf_counter() - started, "experiment_id": self.experiment_id}

    def load(self, command: Command) -> dict[str, Any]:
        """get_scorer: the registered aligned judge, as a fresh process sees it."""
        started = time.perf_counter()
        judge = genai.get_scorer(name=FEEDBACK_NAME, experiment_id=command["experiment_id"])
        wall = time.perf_counter() - started
        self.aligned[command["judge"]] = judge
        return {
            "wall_s": wall,
            "kind": type(judge).__name__,
            "semantic": len(judge._semantic_memory),
            "episodic_trace_ids": len(judge._episodic_trace_ids),
        }


def _memory(judge: Any) -> dict[str, Any]:
    return {"episodic": len(judge._episodic_memory), "semantic": len(judge._semantic_memory)}


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


def main() -> None:
    """Serve the benchmark's commands."""
    worker = MlflowWorker()
    serve(
        {
            "open": worker.open,
            "create_judge": worker.create_judge,
            "create_traces": worker.create_traces,
            "align": worker.align,
            "score": worker.score,
            "unalign": worker.unalign,
            "persist": worker.persist,
            "load": worker.load,
        }
    )


if __name__ == "__main__":
    main()
