"""The model seam: JSON answers from chat models and embeddings from remote models, through litellm.

This module owns every call to a language model. It is the only module that imports litellm, and it imports
it only on the first call (the import takes seconds) after pinning litellm to its bundled price table so that
it never reaches the network on its own. It keeps litellm off stdout, which the MCP stdio transport owns. It
never imports lancedb, onnxruntime or MCP, and it turns every provider failure into a `ModelError` that says
what to check.

Retries: a reply that is not a JSON object, or that fails the caller's `check`, is asked for once more. A
transport failure worth retrying (connection, timeout, 408/409/429, 5xx) is retried here, `max_retries` times
with exponential backoff; litellm's own `num_retries` is not used because in this environment it needs
`tenacity`, which is not installed, and its wrapper would hide how many requests were made.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from memalign_mcp.errors import InvalidInputError, ModelError, show_value

Check = Callable[[dict[str, Any]], None]

EMBEDDING_BATCH = 256
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MAX_BACKOFF_S = 30.0
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
_SETTINGS_HINT = (
    "Check MEMALIGN_MODEL (a litellm model string such as 'openai/gpt-4o-mini'), MEMALIGN_API_BASE "
    "(set only for a self-hosted or proxy server, which must be running) and the key "
    "(MEMALIGN_API_KEY, or the provider's own variable such as OPENAI_API_KEY)."
)


@dataclass(frozen=True)
class Completion:
    """A parsed JSON answer from a model, with what it cost to get."""

    data: dict[str, Any]
    model: str
    latency_ms: float
    prompt_tokens: int | None  # summed over attempts; None when the provider reports no usage
    completion_tokens: int | None
    cost_usd: float | None  # None when litellm has no price for the model
    attempts: int  # completion requests this answer took, unusable replies and transport retries included


class ModelClient(Protocol):
    """Anything that can ask a chat model for a JSON object of a given schema."""

    @property
    def calls(self) -> int:
        """How many completion requests the client has sent, retries included."""
        ...

    def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        check: Check | None = None,
    ) -> Completion:
        """Ask `model` for one JSON object fitting `schema`; `check` raises ValueError on a bad reply."""
        ...


@functools.cache
def _prepare_litellm() -> None:
    """Import litellm once, offline and quiet."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # Without this litellm prints "Give Feedback / Get Help" banners to stdout on every provider error.
    litellm.suppress_debug_info = True
    # litellm's own stream handler writes records below WARNING to stdout; drop it so its records reach
    # only the host's handlers (stderr for the MCP server), at WARNING unless LITELLM_LOG asks for more.
    level = logging.getLevelNamesMapping().get(os.environ.get("LITELLM_LOG", "").upper(), logging.WARNING)
    for name in _LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.setLevel(level)


def preload_litellm() -> None:
    """Import and quiet litellm now (servers call this in the background at start when a model is set)."""
    _prepare_litellm()


def close_cached_clients() -> None:
    """Close the HTTP clients litellm keeps between calls, so no connection outlives its user."""
    import sys

    litellm = sys.modules.get("litellm")
    if litellm is None:
        return  # never imported: nothing was opened
    cache = litellm.in_memory_llm_clients_cache
    for client in list(cache.cache_dict.values()):
        close = getattr(client, "close", None)
        if callable(close) and not inspect.iscoroutinefunction(close):
            close()
    cache.flush_cache()


def _is_retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in _RETRYABLE_STATUS or status >= 500)


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


@functools.cache
def _litellm_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="litellm")


def _off_main_thread(request: Callable[[], Any]) -> Any:
    """Run a litellm call where it cannot leave an event loop behind.

    litellm's sync path logs through `asyncio.get_event_loop()`, which on the main thread creates an event loop,
    sets it as current and never closes it. On any other thread that call fails and litellm uses `asyncio.run`,
    which closes its loop, so main-thread callers (the CLI, tests, benchmarks) hand the call to a worker thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return request()
    return _litellm_thread().submit(request).result()


class _Retrier:
    """Sends one request with bounded retries on transport failures, counting every request made."""

    def __init__(self, max_retries: int, backoff_s: float) -> None:
        if max_retries < 0:
            raise InvalidInputError("max_retries", max_retries, "0 or more")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.calls = 0
        self._lock = threading.Lock()

    def send(
        self, request: Callable[[], Any], *, model: str, api_base: str | None, what: str
    ) -> tuple[Any, int]:
        """Run `request` until it succeeds or retries run out; return its result and the requests made."""
        import openai

        attempts = 0
        while True:
            attempts += 1
            with self._lock:
                self.calls += 1
            try:
                return _off_main_thread(request), attempts
            except openai.OpenAIError as exc:
                if attempts > self.max_retries or not _is_retryable(exc):
                    raise _transport_error(
                        exc, model=model, api_base=api_base, what=what, attempts=attempts
                    ) from exc
                delay = _retry_after_s(exc)
                if delay is None:
                    delay = min(self.backoff_s * 2 ** (attempts - 1), _MAX_BACKOFF_S)
                if delay > 0:
                    time.sleep(delay)


def _transport_error(
    exc: Exception, *, model: str, api_base: str | None, what: str, attempts: int
) -> ModelError:
    import openai

    where = f" at {api_base}" if api_base else ""
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        hint = "The provider rejected the key: set MEMALIGN_API_KEY or the provider's own key variable."
    elif isinstance(exc, openai.NotFoundError):
        hint = "The model or endpoint was not found. " + _SETTINGS_HINT
    else:
        hint = _SETTINGS_HINT
    failure = f"{type(exc).__name__}: {_failure_text(exc)}"
    return ModelError(f"The {what} to model {model!r}{where} failed{tries}: {failure}. {hint}")


def _read_reply(response: Any, check: Check | None) -> tuple[Any, str]:
    """The reply's JSON object and an empty string, or None and what was wrong with the reply."""
    choices = getattr(response, "choices", None) or [None]
    content = getattr(getattr(choices[0], "message", None), "content", None)
    finish_reason = getattr(choices[0], "finish_reason", None)
    if not isinstance(content, str) or not content.strip():
        return None, "the reply was empty"
    text = content.strip()
    if text.startswith("```"):
        # Some models fence JSON in markdown even when asked for structured output.
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (it was cut off at the output token limit)" if finish_reason == "length" else ""
        return (
            None,
            f"the reply was not valid JSON{cut}: {exc.msg} at character {exc.pos}; "
            f"it began {show_value(text[:80])}",
        )
    if not isinstance(data, dict):
        return None, f"the reply was JSON but not an object: {show_value(data)}"
    if check is not None:
        try:
            check(data)
        except ValueError as exc:
            return None, f"the reply did not fit: {exc}"
    return data, ""


def _usage(response: Any) -> tuple[int | None, int | None]:
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def _cost(response: Any) -> float | None:
    """litellm's price for a response, or None for a model it has no price for.

    litellm runs `completion_cost` on every response and stores the result in its hidden params (None when
    the model is unpriced); calling `completion_cost` again would raise ModelNotMappedError, or a bare
    Exception, for such models.
    """
    hidden = getattr(response, "_hidden_params", None)
    if not isinstance(hidden, dict):
        return None
    cost = hidden.get("response_cost")
    return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None


def _endpoint_options(api_base: str | None, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": timeout_s}
    if api_base is not None:
        options["api_base"] = api_base
    if api_key is not None:
        options["api_key"] = api_key
    return options


def _total_tokens(parts: list[int | None]) -> int | None:
    return None if None in parts else sum(part for part in parts if part is not None)


def _total_cost(parts: list[float | None]) -> float | None:
    return None if None in parts else sum(part for part in parts if part is not None)


class LiteLLMClient:
    """A `ModelClient` for any provider litellm knows, or an OpenAI-compatible server at `api_base`."""

    def __init__(
        self,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60,
        max_retries: int = 2,
        temperature: float | None = 0.0,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.api_base = api_base or None
        self.api_key = api_key or None
        self.timeout_s = timeout_s
        self.temperature = temperature
        self._retrier = _Retrier(max_retries, retry_backoff_s)
        self._first_calls_done: set[str] = set()
        self._first_call_lock = threading.Lock()

    @property
    def calls(self) -> int:
        """How many completion requests this client has sent, retries included."""
        return self._retrier.calls

    def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        check: Check | None = None,
    ) -> Completion:
        """Ask `model` for one JSON object fitting `schema`, asking once more if the reply is unusable."""
        _prepare_litellm()
        import litellm

        options = _endpoint_options(self.api_base, self.api_key, self.timeout_s)
        options["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": schema, "strict": True},
        }
        # Retries happen in _Retrier; zeros here keep litellm and the OpenAI SDK from retrying underneath.
        options.update(num_retries=0, max_retries=0)
        if self.temperature is not None:
            options["temperature"] = self.temperature

        started = time.perf_counter()
        request_messages: list[dict[str, str]] = list(messages)
        prompt_tokens: list[int | None] = []
        completion_tokens: list[int | None] = []
        costs: list[float | None] = []
        attempts = 0
        problem = ""
        for _ in range(2):
            request = functools.partial(litellm.completion, model=model, messages=request_messages, **options)
            response, tries = self._send_first_alone(model, request)
            attempts += tries
            used_prompt, used_completion = _usage(response)
            prompt_tokens.append(used_prompt)
            completion_tokens.append(used_completion)
            costs.append(_cost(response))
            data, problem = _read_reply(response, check)
            if not problem:
                return Completion(
                    data=data,
                    model=model,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    prompt_tokens=_total_tokens(prompt_tokens),
                    completion_tokens=_total_tokens(completion_tokens),
                    cost_usd=_total_cost(costs),
                    attempts=attempts,
                )
            request_messages = [
                *messages,
                {
                    "role": "user",
                    "content": f"Your previous reply could not be used: {problem}. "
                    f"Reply again with only one JSON object that fits the {schema_name} schema.",
                },
            ]
        raise ModelError(
            f"Model {model!r} gave no usable answer in 2 tries; last time {problem}. "
            "Try again, or choose a model that supports JSON-schema structured output "
            "(MEMALIGN_MODEL, or the judge's model)."
        )

    def _send_first_alone(self, model: str, request: Callable[[], Any]) -> tuple[Any, int]:
        """Send a request; the first one for a model goes alone.

        litellm caches its HTTP client per model and endpoint. Concurrent first calls each make one and all but
        the last cached are dropped with their connections open, so the first call is made before any other.
        """
        send = functools.partial(
            self._retrier.send, request, model=model, api_base=self.api_base, what="completion request"
        )
        if model in self._first_calls_done:
            return send()
        with self._first_call_lock:
            try:
                return send()
            finally:
                self._first_calls_done.add(model)


class LiteLLMEmbedder:
    """An `Embedder` backed by a remote embedding model through litellm; unit-length float32 rows."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60,
        max_retries: int = 2,
        batch_size: int = EMBEDDING_BATCH,
    ) -> None:
        if not 1 <= batch_size <= EMBEDDING_BATCH:
            raise InvalidInputError("batch_size", batch_size, f"a whole number from 1 to {EMBEDDING_BATCH}")
        self.model = model
        self.api_base = api_base or None
        self.api_key = api_key or None
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        # litellm's OpenAI embedding path retries inside the OpenAI SDK and reads max_retries=0 as "use the
        # default of 2", so transport retries are left to it rather than stacked on top here.
        self.max_retries = max_retries
        self._retrier = _Retrier(0, 0.0)
        self._dim: int | None = None

    @property
    def name(self) -> str:
        """The name recorded with stored vectors: litellm/<model>."""
        return f"litellm/{self.model}"

    @property
    def dim(self) -> int:
        """The vector length, learned from the first response (one probe request if nothing was embedded)."""
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    @property
    def calls(self) -> int:
        """How many embedding requests this embedder has sent (the SDK's own retries not counted)."""
        return self._retrier.calls

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One unit-length float32 row per text, shape (len(texts), dim), in requests of at most 256 texts."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = [
            self._embed_batch(list(texts[start : start + self.batch_size]))
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(rows, axis=0)

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        _prepare_litellm()
        import litellm

        options = _endpoint_options(self.api_base, self.api_key, self.timeout_s)
        options["max_retries"] = self.max_retries

        request = functools.partial(litellm.embedding, model=self.model, input=texts, **options)
        response, _ = self._retrier.send(
            request, model=self.model, api_base=self.api_base, what="embedding request"
        )
        items: list[Any] = sorted(response.data, key=lambda item: _field(item, "index"))
        if len(items) != len(texts):
            raise ModelError(
                f"Embedding model {self.model!r} returned {len(items)} vectors for {len(texts)} texts. "
                + _SETTINGS_HINT
            )
        try:
            vectors = np.asarray([_field(item, "embedding") for item in items], dtype=np.float32)
        except ValueError as exc:
            raise ModelError(
                f"Embedding model {self.model!r} returned vectors that are not number lists of one length."
            ) from exc
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise ModelError(
                f"Embedding model {self.model!r} returned {vectors.shape[1]}-dimensional vectors after "
                f"{self._dim}-dimensional ones; the model behind MEMALIGN_EMBEDDING_MODEL changed."
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # A zero vector stays zero rather than becoming NaN.
        return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _field(item: Any, key: str) -> Any:
    return item[key] if isinstance(item, dict) else getattr(item, key)
