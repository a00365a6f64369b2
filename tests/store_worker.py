"""A second process on a test's store: runs engine calls sent as JSON lines, pausing where the test says.

Protocol (one JSON object per stdin line; one reply line on stdout per command):
- {"pause_at": "distill:prepared"}: from now on, when a change reaches that step (see Ledger.on_step), print
  "AT <step>" and wait for a line "GO" before going on. Replies "OK".
- {"call": "add_feedback", "args": {...}}: replies "OK <result JSON>" or "ERR <error type>: <message>".
- {"stream": {"seed": 1, "start": 0}}: adds and removes feedback forever, printing "ACK add <id>" and
  "ACK remove <id>" only after each call returned, and "BEGIN remove <id>" before a removal (for SIGKILL loops);
  `"purge": false` makes every removal a plain one.
- {"maintain": {"pause_at": "compact", "lease_ttl_s": 60}}: one maintenance run; with `pause_at` it prints
  "AT maintain:<step>" before that step (the lease held) and waits for "GO". Replies "OK <report JSON>".
The model is the support-desk script run in-process, so starting this worker does not import litellm.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from in_process_model import InProcessModel
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.embeddings import HashingEmbedder
from memalign_mcp.engine import open_engine
from memalign_mcp.errors import MemAlignError
from memalign_mcp.maintenance import LEASE_TTL_S, Maintainer
from memalign_mcp.seed_scenario import ALIGNMENT, JUDGE
from memalign_mcp.settings import load_settings
from support_desk_model import support_desk

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def open_worker_engine(data_dir: str) -> MemAlignService:
    """An engine on the store with the in-process scripted model (as tests' own engines use)."""
    settings = load_settings(
        CONFIG, env={}, overrides={"store.data_dir": data_dir, "model.judge": "scripted/in-process"}
    )
    return open_engine(settings, embedder=HashingEmbedder(), client=InProcessModel(support_desk))


def stream_item(n: int) -> dict[str, Any]:
    """The n-th feedback item of a crash-loop stream: a seed-scenario item under a unique id."""
    base = ALIGNMENT[n % len(ALIGNMENT)]
    return {**base, "id": f"s-{n}", "inputs": f"{base['inputs']} (case {n})"}


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stream(engine: MemAlignService, seed: int, start: int, purge: bool = True) -> None:
    rng = random.Random(seed)
    added: list[str] = [i for i in engine.state(JUDGE).feedback if i.startswith("s-")]
    n = start
    while True:
        if added and rng.random() < 0.3:
            victim = added.pop(rng.randrange(len(added)))
            _say(f"BEGIN remove {victim}")
            engine.remove_feedback(JUDGE, [victim], purge=purge and rng.random() < 0.2)
            _say(f"ACK remove {victim}")
        else:
            batch = [stream_item(n + k) for k in range(rng.randint(1, 3))]
            n += len(batch)
            engine.add_feedback(JUDGE, batch)
            added.extend(i["id"] for i in batch)
            for item in batch:
                _say(f"ACK add {item['id']}")


def _maintain(engine: MemAlignService, pause_at: str | None = None, lease_ttl_s: float = LEASE_TTL_S) -> None:
    maintainer = Maintainer(engine.store, keep=timedelta(minutes=10), lease_ttl_s=lease_ttl_s)

    def on_step(step: str) -> None:
        if step == pause_at:
            _say(f"AT maintain:{step}")
            if sys.stdin.readline().strip() != "GO":
                raise SystemExit("expected GO")

    maintainer.on_step = on_step
    _say("OK " + json.dumps(maintainer.run().as_dict()))


def main() -> None:
    """Serve commands on stdin until it closes."""
    engine = open_worker_engine(sys.argv[1])
    pause_at: set[str] = set()

    def on_step(_: str, step: str) -> None:
        if step in pause_at:
            pause_at.discard(step)  # once: a redo of the same change must not wait again
            _say(f"AT {step}")
            if sys.stdin.readline().strip() != "GO":
                raise SystemExit("expected GO")

    engine.ledger.on_step = on_step
    _say("READY")
    for line in sys.stdin:
        command = json.loads(line)
        if "pause_at" in command:
            pause_at.add(command["pause_at"])
            _say("OK")
        elif "stream" in command:
            _stream(engine, **command["stream"])
        elif "maintain" in command:
            _maintain(engine, **command["maintain"])
        else:
            try:
                result = getattr(engine, command["call"])(**command["args"])
                _say("OK " + result.model_dump_json())
            except MemAlignError as exc:
                _say(f"ERR {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
