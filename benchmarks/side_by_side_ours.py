"""Worker for the side-by-side benchmark: drives memalign-mcp's engine, one command at a time.

Run by benchmarks/mlflow_side_by_side.py with the project's virtual environment; it times each engine call
from the inside and leaves request counting to the scripted model server. It uses only the engine's public
surface (load_settings, open_engine, the service's methods) and never changes what it measures.
"""

from __future__ import annotations

import os
import time
from typing import Any

from side_by_side_wire import Command, serve

STARTED = time.perf_counter()
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from memalign_mcp.alignment import MemAlignService  # noqa: E402 - the import is part of what is timed
from memalign_mcp.engine import make_embedder, open_engine  # noqa: E402
from memalign_mcp.models import JudgeSpec  # noqa: E402
from memalign_mcp.settings import load_settings  # noqa: E402

IMPORTED = time.perf_counter()


class OursWorker:
    """The engine under test and the commands the benchmark sends it."""

    def __init__(self) -> None:
        self.engine: MemAlignService | None = None

    def _engine(self) -> MemAlignService:
        if self.engine is None:
            raise RuntimeError("send an open command first")
        return self.engine

    def open(self, command: Command) -> dict[str, Any]:
        """Open the engine on a data dir against the scripted server, timing its parts."""
        started = time.perf_counter()
        settings = load_settings(
            overrides={
                "store.data_dir": command["data_dir"],
                "model.judge": "openai/scripted",
                "model.api_base": command["base_url"],
                "model.api_key": "test",
                "embedding.model": "openai/text-embedding-3-small",
            }
        )
        embedder = make_embedder(settings)
        # A new store asks the remote embedder for its dimension (one request, and litellm's import); a store
        # that recorded it does not, so a restart's open is measured as a user would meet it.
        opening = time.perf_counter()
        self.engine = open_engine(settings, embedder=embedder)
        done = time.perf_counter()
        return {
            "wall_s": done - started,
            "import_s": IMPORTED - STARTED,
            "open_engine_s": done - opening,
            "dim": self.engine.store.dim,
        }

    def create_judge(self, command: Command) -> dict[str, Any]:
        """Create a bool judge."""
        started = time.perf_counter()
        spec = JudgeSpec(name=command["judge"], instructions=command["instructions"], feedback_type="bool")
        self._engine().create_judge(spec)
        return {"wall_s": time.perf_counter() - started}

    def align(self, command: Command) -> dict[str, Any]:
        """Add feedback items (episodic memory) and distil guidelines (semantic memory)."""
        engine = self._engine()
        started = time.perf_counter()
        result = engine.add_feedback(command["judge"], command["items"])
        wall = time.perf_counter() - started
        judge = engine.get_judge(command["judge"])
        return {
            "wall_s": wall,
            "episodic": judge.feedback_count,
            "semantic": judge.guideline_count,
            "pending": len(result.pending_ids),
            "note": result.note,
        }

    def score(self, command: Command) -> dict[str, Any]:
        """Score one response with the aligned judge, or without its memory when memory is false."""
        started = time.perf_counter()
        result = self._engine().score(
            command["judge"], command["inputs"], command["outputs"], use_memory=command.get("memory", True)
        )
        return {
            "wall_s": time.perf_counter() - started,
            "value": result.value,
            "examples": len(result.examples_used),
            "guidelines": len(result.guidelines_used),
        }

    def unalign(self, command: Command) -> dict[str, Any]:
        """Remove one feedback item and everything derived only from it."""
        engine = self._engine()
        started = time.perf_counter()
        result = engine.remove_feedback(command["judge"], [command["id"]])
        wall = time.perf_counter() - started
        judge = engine.get_judge(command["judge"])
        return {
            "wall_s": wall,
            "removed": result.removed_ids,
            "guidelines_removed": len(result.guidelines_removed),
            "guidelines_revised": len(result.guidelines_revised),
            "episodic": judge.feedback_count,
            "semantic": judge.guideline_count,
        }

    def persist(self, _command: Command) -> dict[str, Any]:
        """Nothing to do: every change is written to the store as it is made."""
        return {"wall_s": 0.0, "note": "every change is already stored"}


def main() -> None:
    """Serve the benchmark's commands."""
    worker = OursWorker()
    serve(
        {
            "open": worker.open,
            "create_judge": worker.create_judge,
            "align": worker.align,
            "score": worker.score,
            "unalign": worker.unalign,
            "persist": worker.persist,
        }
    )


if __name__ == "__main__":
    main()
