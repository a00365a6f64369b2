"""Sending one request to a model server: bounded retries, and failures turned into errors that say what to do.

This module owns what happens between "send this request" and "here is the server's response": which transport
failures are worth a retry (connection refused, 408/409/429, 5xx), how long to wait, and the text of the
`ModelError` when it gives up. A timeout is never retried: at temperature 0 the same request would most likely
run into the same timeout, so the error names the timeout and how to raise it instead. A server that refuses the
structured-output request (`response_format`) raises `FormatRefusedError`, so the client can fall back. It
imports only the OpenAI SDK's exception types (litellm's exceptions subclass them) and never calls a model.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from memalign_mcp.errors import InvalidInputError, ModelError

_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MAX_BACKOFF_S = 30.0
# Words a server or litellm uses when it refuses the structured-output part of a request; "schema" alone covers
# servers that name only the schema they could not compile into a grammar.
_FORMAT_WORDS = ("response_format", "response format", "json_object", "schema", "structured output")
SETTINGS_HINT = (
    "Check MEMALIGN_MODEL (a litellm model string such as 'openai/gpt-4o-mini'), MEMALIGN_API_BASE "
    "(set only for a self-hosted or proxy server, which must be running) and the key "
    "(MEMALIGN_API_KEY, or the provider's own variable such as OPENAI_API_KEY)."
)


class FormatRefusedError(ModelError):
    """The server refused the request's `response_format`; the client falls back to a plainer mode."""

    def __init__(self, message: str, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(message)


def _is_timeout(exc: Exception) -> bool:
    import openai

    return isinstance(exc, openai.APITimeoutError)


def _is_retryable(exc: Exception) -> bool:
    import openai

    if _is_timeout(exc):
        return False
    if isinstance(exc, openai.APIConnectionError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in _RETRYABLE_STATUS or status >= 500)


def _refuses_format(exc: Exception) -> bool:
    """Whether a failure is the server (or litellm) refusing the structured-output request."""
    status = getattr(exc, "status_code", None)
    if status not in (400, 422):
        return False
    text = str(exc).lower()
    return any(word in text for word in _FORMAT_WORDS)


def _retry_after_s(exc: Exception) -> float | None:
    """The server's Retry-After, in seconds, when it sent one we can honour."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            delay = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(delay) and 0 <= delay <= _MAX_BACKOFF_S:
            return delay
    return None


def _failure_text(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{text[:300]}..." if len(text) > 300 else text


class Retrier:
    """Sends one request with bounded retries on transport failures, counting every request made."""

    def __init__(self, max_retries: int, backoff_s: float, timeout_s: float) -> None:
        if max_retries < 0:
            raise InvalidInputError("max_retries", max_retries, "0 or more")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.calls = 0
        self._lock = threading.Lock()

    def send(
        self,
        request: Callable[[], Any],
        *,
        model: str,
        api_base: str | None,
        what: str,
        run: Callable[[Callable[[], Any]], Any] = lambda request: request(),
    ) -> tuple[Any, int]:
        """Run `request` (through `run`) until it succeeds or retries run out; return its result and requests made."""
        import openai

        attempts = 0
        while True:
            attempts += 1
            with self._lock:
                self.calls += 1
            try:
                return run(request), attempts
            except openai.OpenAIError as exc:
                if attempts > self.max_retries or not _is_retryable(exc):
                    raise self._error(
                        exc, model=model, api_base=api_base, what=what, attempts=attempts
                    ) from exc
                delay = _retry_after_s(exc)
                if delay is None:
                    delay = min(self.backoff_s * 2 ** (attempts - 1), _MAX_BACKOFF_S)
                if delay > 0:
                    time.sleep(delay)

    def _error(
        self, exc: Exception, *, model: str, api_base: str | None, what: str, attempts: int
    ) -> ModelError:
        import openai

        where = f" at {api_base}" if api_base else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if _is_timeout(exc):
            return ModelError(
                f"The {what} to model {model!r}{where} got no reply within the timeout of {self.timeout_s:g} s "
                "and was not sent again (the same request would most likely time out again). A slow model, "
                "such as a local one on a CPU, needs a longer timeout: set MEMALIGN_TIMEOUT_S (or timeout_s "
                "in the [model] section of the config file), for example MEMALIGN_TIMEOUT_S=300."
            )
        failure = f"{type(exc).__name__}: {_failure_text(exc)}"
        if _refuses_format(exc):
            return FormatRefusedError(
                f"The {what} to model {model!r}{where} was refused for its structured-output format: {failure}",
                attempts,
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            hint = "The provider rejected the key: set MEMALIGN_API_KEY or the provider's own key variable."
        elif isinstance(exc, openai.NotFoundError):
            hint = "The model or endpoint was not found. " + SETTINGS_HINT
        else:
            hint = SETTINGS_HINT
        return ModelError(f"The {what} to model {model!r}{where} failed{tries}: {failure}. {hint}")
