"""A model client that runs a script in-process, for tests where litellm's import (seconds) would dominate.

It answers through the engine's own `ModelClient` seam with the same scripts as the scripted HTTP server, so
crash loops and two-process tests can start a fresh worker process many times. Tests of the litellm path itself
use the HTTP server (scripted_model.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from memalign_mcp.errors import ModelError
from memalign_mcp.llm import Check, Completion
from scripted_model import ChatCall, Script, ScriptedError


class InProcessModel:
    """A ModelClient answering from a script; `fail` decides, per call number (from 1), to raise instead."""

    def __init__(self, script: Script, fail: Callable[[int], bool] | None = None) -> None:
        self.script = script
        self.fail = fail
        self.prompts: list[ChatCall] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        """How many completion requests were made."""
        return len(self.prompts)

    def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        check: Check | None = None,
        **_: Any,
    ) -> Completion:
        """Answer one request from the script, or raise ModelError where `fail` says so."""
        call = ChatCall(
            model=model, messages=list(messages), schema_name=schema_name, schema=schema, raw_body={}
        )
        with self._lock:
            self.prompts.append(call)
            number = len(self.prompts)
        if self.fail is not None and self.fail(number):
            raise ModelError(f"injected model failure on call {number}")
        reply = self.script(call)
        if isinstance(reply, ScriptedError):
            raise ModelError(f"scripted error {reply.status}: {reply.message}")
        data = json.loads(reply) if isinstance(reply, str) else reply
        if check is not None:
            try:
                check(data)
            except ValueError as exc:
                raise ModelError(f"reply did not fit: {exc}") from exc
        return Completion(
            data=data,
            model=model,
            latency_ms=0.0,
            prompt_tokens=None,
            completion_tokens=None,
            cost_usd=None,
            attempts=1,
        )
