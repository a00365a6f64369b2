"""The model seam: JSON answers from chat models and embeddings from remote models, through litellm.

This module owns every call to a language model. It is the only module that imports litellm, and it imports
it only on the first call (the import takes seconds) after pinning litellm to its bundled price table so that
it never reaches the network on its own. It keeps litellm off stdout, which the MCP stdio transport owns. It
never imports lancedb, onnxruntime or MCP, and it turns every provider failure into a `ModelError` that says
what to check.

Every completion carries `max_tokens`, chosen by the reply schema's name. A reply that is unusable (empty, cut
off at the token limit, not JSON, out of schema, refused by the caller's `check`) is asked for once more, with
the bad reply and what was wrong appended, so the retry never repeats the request that failed. A server that
refuses `response_format` (HTTP 400) gets the schema without its length limits, then JSON mode, then the
schema in the prompt alone; one that ignores it (prose back) gets JSON mode with the schema in the prompt. The
mode that worked is remembered per (api_base, model) for the client's lifetime. Transport retries live in
`model_transport.py`; litellm's own `num_retries` is not used because in this environment it needs `tenacity`,
which is not installed, and its wrapper would hide how many requests were made.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from memalign_mcp.errors import InvalidInputError, ModelError
from memalign_mcp.model_transport import SETTINGS_HINT, FormatRefusedError, Retrier
from memalign_mcp.replies import (
    Check,
    Completion,
    Reading,
    ResponseMode,
    Tally,
    correction,
    first_choice,
    messages_for,
    mode_after_prose,
    next_mode,
    read_reply,
    response_format,
)
from memalign_mcp.settings import ModelSettings

EMBEDDING_BATCH = 256
DEFAULT_MAX_TOKENS = 2048  # for a reply schema the client has no limit for
_REPLY_TRIES = 2
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


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


def _endpoint_options(api_base: str | None, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": timeout_s}
    if api_base is not None:
        options["api_base"] = api_base
    if api_key is not None:
        options["api_key"] = api_key
    return options


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
        max_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.api_base = api_base or None
        self.api_key = api_key or None
        self.timeout_s = timeout_s
        self.temperature = temperature
        # Output token limits keyed by reply schema name; the settings' defaults unless given.
        self.max_tokens = dict(ModelSettings().max_tokens_by_reply() if max_tokens is None else max_tokens)
        self._retrier = Retrier(max_retries, retry_backoff_s, timeout_s)
        self._first_calls_done: set[str] = set()
        self._first_call_lock = threading.Lock()
        # Per (api_base, model): the mode to ask in, and whether a usable reply has come back in it.
        self._modes: dict[tuple[str | None, str], tuple[ResponseMode, bool]] = {}
        self._modes_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> LiteLLMClient:
        """A client for the configured endpoint, timeout, retries and output token limits."""
        return cls(
            api_base=settings.api_base,
            api_key=settings.api_key,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            max_tokens=settings.max_tokens_by_reply(),
        )

    @property
    def calls(self) -> int:
        """How many completion requests this client has sent, retries included."""
        return self._retrier.calls

    def response_mode(self, model: str) -> ResponseMode:
        """How structured output is asked of `model` at this client's api_base (what last worked)."""
        return self._mode(model)[0]

    def _mode(self, model: str) -> tuple[ResponseMode, bool]:
        with self._modes_lock:
            return self._modes.get((self.api_base, model), ("json_schema", False))

    def _remember(self, model: str, mode: ResponseMode, *, worked: bool) -> None:
        with self._modes_lock:
            self._modes[(self.api_base, model)] = (mode, worked)

    def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        check: Check | None = None,
    ) -> Completion:
        """Ask `model` for one JSON object fitting `schema`; an unusable reply is asked for again, corrected."""
        _prepare_litellm()
        import litellm

        options = _endpoint_options(self.api_base, self.api_key, self.timeout_s)
        # Retries happen in Retrier; zeros here keep litellm and the OpenAI SDK from retrying underneath.
        options.update(num_retries=0, max_retries=0)
        if self.temperature is not None:
            options["temperature"] = self.temperature
        max_tokens = self.max_tokens.get(schema_name, DEFAULT_MAX_TOKENS)
        options["max_tokens"] = max_tokens

        tally = Tally()
        mode, confirmed = self._mode(model)
        corrective: list[dict[str, str]] = []
        replies = 0
        while True:
            request_options = dict(options)
            chosen_format = response_format(mode, schema_name, schema)
            if chosen_format is not None:
                request_options["response_format"] = chosen_format
            request = functools.partial(
                litellm.completion,
                model=model,
                messages=[*messages_for(mode, messages, schema_name, schema), *corrective],
                **request_options,
            )
            try:
                response, tries = self._send_first_alone(model, request)
            except FormatRefusedError as exc:
                if mode == "prompt":
                    raise
                tally.attempts += exc.attempts
                # A refusal is the server's answer for every request of this shape: later calls skip it.
                mode, confirmed = next_mode(mode), False
                self._remember(model, mode, worked=False)
                continue
            tally.add(response, tries)
            replies += 1
            content, finish_reason = first_choice(response)
            reading = read_reply(content, finish_reason, schema, check)
            if reading.data is not None:
                self._remember(model, mode, worked=True)
                return tally.completion(reading.data, model)
            if reading.kind == "no_json" and not reading.cut_off and mode != "prompt" and not confirmed:
                # Prose back despite response_format, which has never worked here: the server ignores it, so
                # the retry describes the schema in the prompt. Where the mode has worked before, prose is
                # this reply's fault, not the server's, and the mode stays.
                mode = mode_after_prose(mode)
            if replies >= _REPLY_TRIES:
                raise ModelError(
                    f"Model {model!r} gave no usable answer in {replies} tries; last time {reading.problem}. "
                    + _no_answer_hint(reading, schema_name, max_tokens)
                )
            corrective = correction(content, reading, schema_name=schema_name, max_tokens=max_tokens)

    def _send_first_alone(self, model: str, request: Callable[[], Any]) -> tuple[Any, int]:
        """Send a request; the first one for a model goes alone.

        litellm caches its HTTP client per model and endpoint. Concurrent first calls each make one and all but
        the last cached are dropped with their connections open, so the first call is made before any other.
        """
        send = functools.partial(
            self._retrier.send,
            request,
            model=model,
            api_base=self.api_base,
            what="completion request",
            run=_off_main_thread,
        )
        if model in self._first_calls_done:
            return send()
        with self._first_call_lock:
            try:
                return send()
            finally:
                self._first_calls_done.add(model)


def _no_answer_hint(reading: Reading, schema_name: str, max_tokens: int) -> str:
    if reading.cut_off:
        return (
            f"Replies for {schema_name!r} may take {max_tokens} tokens (the max_tokens_* settings in the [model] "
            "section); a model that keeps repeating itself needs a better model, not a higher limit."
        )
    if reading.kind == "invalid":
        return (
            "The model answered in JSON but not usably; a more capable model may do better (MEMALIGN_MODEL, "
            "MEMALIGN_REFLECTION_MODEL, or the judge's model)."
        )
    return (
        "Try again, or choose a model that follows JSON-schema structured output "
        "(MEMALIGN_MODEL, or the judge's model)."
    )


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
        self._retrier = Retrier(0, 0.0, timeout_s)
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
            request, model=self.model, api_base=self.api_base, what="embedding request", run=_off_main_thread
        )
        items: list[Any] = sorted(response.data, key=lambda item: _field(item, "index"))
        if len(items) != len(texts):
            raise ModelError(
                f"Embedding model {self.model!r} returned {len(items)} vectors for {len(texts)} texts. "
                + SETTINGS_HINT
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
