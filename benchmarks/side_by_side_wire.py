"""The line protocol between the side-by-side benchmark and its worker processes.

A worker reads one JSON command a line on stdin and answers each with one JSON line on the stdout it was
started with; everything the engine under test prints goes to stderr instead, so library chatter can never
corrupt an answer. Standard library only: the MLflow worker imports this from its own virtual environment.
This module times nothing and knows neither engine.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

Command = dict[str, Any]
Handler = Callable[[Command], dict[str, Any]]


def _answer_channel() -> TextIO:
    """Keep the real stdout for answers and point sys.stdout (and fd 1) at stderr."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return answers


def serve(handlers: dict[str, Handler]) -> None:
    """Answer commands until stdin closes or an "exit" command arrives; a failing command answers ok=false."""
    answers = _answer_channel()
    for line in sys.stdin:
        if not line.strip():
            continue
        command: Command = json.loads(line)
        op = str(command.get("op", ""))
        if op == "exit":
            break
        handler = handlers.get(op)
        if handler is None:
            reply: dict[str, Any] = {"ok": False, "error": f"unknown op {op!r}; known: {sorted(handlers)}"}
        else:
            try:
                reply = {"ok": True, **handler(command)}
            except Exception as exc:  # noqa: BLE001 - the benchmark records the failure and measures the rest
                traceback.print_exc()
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(reply) + "\n")
    answers.close()
