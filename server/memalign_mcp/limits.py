"""Limits that keep one caller, or one bad input, from exhausting the server.

This module owns the size bounds of a judge spec, the per-caller token bucket (`RateLimiter`) and the
process-wide gate on model calls (`ModelGate`, a `ModelClient` that lets a bounded number of calls in flight).
It knows nothing of MCP and imports no litellm: the MCP face asks the limiter before each tool call, and the
judge service wraps its model client in the gate. The clock is injected, so tests need no sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from memalign_mcp.errors import InvalidInputError, MemAlignError, ModelError
from memalign_mcp.llm import Check, Completion, ModelClient
from memalign_mcp.models import JudgeSpec
from memalign_mcp.settings import LimitsSettings

Clock = Callable[[], float]
# Buckets kept before the full ones (callers idle for a minute) are dropped: addresses must not grow it forever.
_MAX_BUCKETS = 10_000


def check_spec_limits(spec: JudgeSpec, limits: LimitsSettings) -> None:
    """Refuse a judge spec whose instructions, model name or choices are over the configured sizes."""
    if len(spec.instructions) > limits.max_instructions_chars:
        raise InvalidInputError(
            "instructions",
            spec.instructions,
            f"at most {limits.max_instructions_chars} characters (limits.max_instructions_chars); shorten them",
        )
    if spec.model is not None and len(spec.model) > limits.max_model_chars:
        raise InvalidInputError(
            "model",
            spec.model,
            f"a model name of at most {limits.max_model_chars} characters (limits.max_model_chars)",
        )
    choices = spec.choices or []
    if len(choices) > limits.max_choices:
        raise InvalidInputError(
            "choices", f"{len(choices)} choices", f"at most {limits.max_choices} choices (limits.max_choices)"
        )
    for i, choice in enumerate(choices):
        if len(choice) > limits.max_choice_chars:
            raise InvalidInputError(
                f"choices[{i}]",
                choice,
                f"a choice of at most {limits.max_choice_chars} characters (limits.max_choice_chars)",
            )


class RateLimitedError(MemAlignError):
    """A caller made more tool calls than its per-minute allowance; it may retry after the time named."""

    def __init__(self, who: str, per_minute: int, setting: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(
            f"Too many requests from {who}: got more than {per_minute} tool calls a minute; expected at most "
            f"{per_minute} ({setting}). Retry in {retry_after_s:.1f} s; nothing of this call was done."
        )


class RateLimiter:
    """A token bucket per caller: a burst of `per_minute` calls, refilled at `per_minute` a minute; 0: no limit."""

    def __init__(self, per_minute: int, setting: str, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self.setting = setting
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens left, when counted)
        self._lock = threading.Lock()

    def take(self, who: str) -> None:
        """Count one call of `who`; RateLimitedError, saying when to retry, if its bucket is empty."""
        if self.per_minute <= 0:
            return
        capacity, rate = float(self.per_minute), self.per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(who, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[who] = (tokens, now)
                raise RateLimitedError(who, self.per_minute, self.setting, (1.0 - tokens) / rate)
            self._buckets[who] = (tokens - 1.0, now)
            if len(self._buckets) > _MAX_BUCKETS:
                self._forget_idle(now, capacity, rate)

    def _forget_idle(self, now: float, capacity: float, rate: float) -> None:
        full = [w for w, (t, at) in self._buckets.items() if t + (now - at) * rate >= capacity]
        for who in full:
            del self._buckets[who]


class ModelBusyError(ModelError):
    """Every model slot of this process stayed taken for as long as a call may wait."""


class ModelGate:
    """A ModelClient letting at most `limit` calls in flight in this process; the rest wait up to `wait_s`.

    One gate per engine (one per process) bounds scoring, distillation and re-derivation together, so a flood
    of calls queues here instead of opening a connection each to the model server.
    """

    def __init__(self, client: ModelClient, limit: int, wait_s: float) -> None:
        self.inner = client
        self.limit = limit
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(limit)

    @property
    def calls(self) -> int:
        """How many completion requests the wrapped client has sent."""
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
        """The wrapped client's answer, once a slot is free; ModelBusyError if none frees within `wait_s`."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise ModelBusyError(
                f"Model busy: got no free slot within {self.wait_s:g} s; expected fewer than {self.limit} model "
                "calls in flight (limits.model_concurrency). Retry in a few seconds."
            )
        try:
            return self.inner.complete_json(
                model=model, messages=messages, schema_name=schema_name, schema=schema, check=check
            )
        finally:
            self._slots.release()
