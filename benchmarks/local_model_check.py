"""Robustness of the model path against a real (tiny) model: scores and one distillation, timed per call.

Not a quality measure: the model meant for this is SmolLM2-135M on a CPU, whose verdicts are near chance. What it
checks is that every call through the engine comes back (a verdict, or a clear ModelError) without running into
the timeout, against a real OpenAI-compatible server that rambles, echoes markers and makes up numbers. Start
a server (see the local-llm notes), then, from the repository root:

    MEMALIGN_MODEL=openai/smollm2 MEMALIGN_API_BASE=http://127.0.0.1:PORT/v1 MEMALIGN_API_KEY=x \\
        .venv/bin/python benchmarks/local_model_check.py

It opens the engine on a temporary store exactly as `serve` would (settings from configs/default.toml and the
environment), scores the five held-out items of the seed scenario, adds the five alignment items (one
distillation), and prints one line per call and a JSON summary.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from memalign_mcp.engine import open_engine
from memalign_mcp.errors import ModelError
from memalign_mcp.seed_scenario import ALIGNMENT, HELD_OUT, JUDGE, SOURCE
from memalign_mcp.settings import load_settings

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def main() -> int:
    """Run the check and print per-call times; exit 1 if any call timed out."""
    if not os.environ.get("MEMALIGN_MODEL"):
        print("set MEMALIGN_MODEL, MEMALIGN_API_BASE and MEMALIGN_API_KEY first", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {"scores": [], "distillation": None}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(CONFIG, overrides={"store.data_dir": data_dir})
        engine = open_engine(settings)
        print(
            f"model {settings.model.judge} at {settings.model.api_base}, timeout {settings.model.timeout_s:g} s"
        )
        for item in HELD_OUT:
            started = time.perf_counter()
            try:
                result = engine.score(JUDGE, item["inputs"], item["outputs"])
                outcome: dict[str, Any] = {"value": result.value, "rationale_chars": len(result.rationale)}
            except ModelError as exc:
                outcome = {"error": str(exc)[:300]}
            seconds = time.perf_counter() - started
            summary["scores"].append({"id": item["id"], "seconds": round(seconds, 2), **outcome})
            print(f"score {item['id']}: {seconds:.1f} s {outcome}")
        started = time.perf_counter()
        added = engine.add_feedback(JUDGE, [i | {"source": SOURCE} for i in ALIGNMENT])
        seconds = time.perf_counter() - started
        summary["distillation"] = {
            "seconds": round(seconds, 2),
            "items": len(ALIGNMENT),
            "pending": added.pending_ids,
            "guidelines": [g.text for g in engine.list_guidelines(JUDGE).guidelines],
            "note": added.note,
        }
        print(f"add_feedback with distillation: {seconds:.1f} s, pending {added.pending_ids}")
        summary["model_requests"] = engine.client.calls if engine.client is not None else 0
    print(json.dumps(summary, indent=2))
    timed_out = [s for s in summary["scores"] if "timeout" in s.get("error", "")]
    timed_out += ["distillation"] if "timeout" in str(summary["distillation"].get("note") or "") else []
    return 1 if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
