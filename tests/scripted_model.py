"""A local OpenAI-compatible HTTP server that stands in for the model in tests and benchmarks.

It owns the fake side of the one outside system we cannot run for real: chat completions answered by a script
and deterministic embeddings, with every request recorded so a test can assert on the prompt. It uses only the
standard library, listens on 127.0.0.1 on an ephemeral port, never logs requests, never reaches the network.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

DEFAULT_EMBEDDING_DIM = 64
_WORD = re.compile(r"\w+")
# How the client names the schema when it cannot send it as response_format (see replies.messages_for).
_PROMPT_SCHEMA = re.compile(r"JSON Schema \(named ([\w-]+)\)[^\n]*:\n(\{.*\})\s*$", re.DOTALL)


@dataclass(frozen=True)
class ChatCall:
    """One recorded chat completion request."""

    model: str
    messages: list[dict[str, Any]]
    schema_name: str | None  # from response_format, or from the prompt where the client described it there
    schema: dict[str, Any] | None
    raw_body: dict[str, Any]

    @property
    def format_type(self) -> str | None:
        """The request's response_format type: "json_schema", "json_object", or None when it asked for none."""
        response_format = self.raw_body.get("response_format")
        return (
            cast(dict[str, Any], response_format).get("type") if isinstance(response_format, dict) else None
        )

    def prompt_text(self) -> str:
        """All message contents joined by blank lines, for asserting on what the model was shown."""
        return "\n\n".join(_content_text(message.get("content")) for message in self.messages)


@dataclass(frozen=True)
class EmbeddingCall:
    """One recorded embeddings request."""

    model: str
    texts: list[str]


@dataclass(frozen=True)
class ScriptedError:
    """A reply that makes the server answer with an HTTP error instead of a completion."""

    status: int = 500
    message: str = "scripted failure"


class CutOffReply(str):
    """Reply text the server sends as cut off at the output token limit (finish_reason "length").

    A `str`, so every script and in-process stand-in that handles text replies handles it unchanged.
    """

    __slots__ = ()


Reply = str | dict[str, Any] | ScriptedError
Script = Callable[[ChatCall], Reply]


def queue_script(replies: Sequence[Reply]) -> Script:
    """A script answering each call with the next reply in order, then a 500 saying the queue ran out."""
    pending = list(replies)
    lock = threading.Lock()
    counter = itertools.count(1)

    def script(call: ChatCall) -> Reply:
        with lock:
            number = next(counter)
            if pending:
                return pending.pop(0)
        return ScriptedError(
            500, f"scripted model: no reply left for call {number} (the queue held {len(replies)} replies)"
        )

    return script


def _unscripted(call: ChatCall) -> Reply:
    return ScriptedError(500, "scripted model: no script set; pass one to ScriptedModelServer or reset()")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = cast(list[Any], content)
        return "\n".join(
            str(cast(dict[str, Any], part).get("text", "")) for part in parts if isinstance(part, dict)
        )
    return ""


def _schema_in_prompt(messages: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any] | None]:
    """The schema a request without json_schema describes in its system message (JSON mode, prompt-only)."""
    system = _content_text(messages[0].get("content")) if messages else ""
    found = _PROMPT_SCHEMA.search(system)
    if found is None:
        return None, None
    return found.group(1), cast(dict[str, Any], json.loads(found.group(2)))


def rough_tokens(text: str) -> int:
    """The token count the server reports for a text: about four characters a token."""
    return len(text) // 4


def hashed_embedding(text: str, dim: int = DEFAULT_EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector: each lowercased word hashed to a signed dimension."""
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dim
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in vector))
    if norm == 0.0:
        # A text without words still needs a unit vector, or cosine similarity is undefined.
        vector[0] = 1.0
        return vector
    return [value / norm for value in vector]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, each reply waits ~40 ms for the
    # client's delayed ACK, which would swamp per-call timings in benchmarks.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: test output and the MCP stdio transport must not see request logs."""

    def do_GET(self) -> None:
        """Every GET is unknown to this server."""
        self._send_json(404, _error_body(f"no route GET {self.path}", "not_found"))

    def do_POST(self) -> None:
        """Route the two OpenAI endpoints the engine uses; anything else is a 404."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = cast(dict[str, Any], json.loads(raw or b"{}"))
        except json.JSONDecodeError:
            self._send_json(400, _error_body("request body is not JSON", "invalid_request_error"))
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/chat/completions"):
            self._chat(body)
        elif path.endswith("/embeddings"):
            self._embeddings(body)
        else:
            self._send_json(404, _error_body(f"no route POST {self.path}", "not_found"))

    def _chat(self, body: dict[str, Any]) -> None:
        if body.get("stream"):
            self._send_json(
                400, _error_body("the scripted model supports stream: false only", "invalid_request")
            )
            return
        response_format = cast(dict[str, Any], body.get("response_format") or {})
        json_schema = cast(dict[str, Any], response_format.get("json_schema") or {})
        messages = cast(list[dict[str, Any]], body.get("messages") or [])
        schema_name = cast(str | None, json_schema.get("name"))
        schema = cast(dict[str, Any] | None, json_schema.get("schema"))
        if schema_name is None:
            schema_name, schema = _schema_in_prompt(messages)
        call = ChatCall(
            model=str(body.get("model", "")),
            messages=messages,
            schema_name=schema_name,
            schema=schema,
            raw_body=body,
        )
        owner = cast(_Server, self.server).owner
        with owner.lock:
            owner.calls.append(call)
            script = owner.script
        try:
            reply = script(call)
        except Exception as exc:  # noqa: BLE001 - a failing script must surface in the test as an HTTP error
            reply = ScriptedError(500, f"scripted model: the script raised {type(exc).__name__}: {exc}")
        if isinstance(reply, ScriptedError):
            self._send_json(reply.status, _error_body(reply.message, "scripted_error"))
            return
        finish_reason = "length" if isinstance(reply, CutOffReply) else "stop"
        content = str(reply) if isinstance(reply, str) else json.dumps(reply)
        prompt_tokens = rough_tokens(call.prompt_text())
        completion_tokens = rough_tokens(content)
        self._send_json(
            200,
            {
                "id": f"chatcmpl-scripted-{len(owner.calls)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": call.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _embeddings(self, body: dict[str, Any]) -> None:
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            texts = [raw_input]
        elif isinstance(raw_input, list) and all(
            isinstance(item, str) for item in cast(list[Any], raw_input)
        ):
            texts = cast(list[str], raw_input)
        else:
            self._send_json(
                400, _error_body("input must be a string or a list of strings", "invalid_request")
            )
            return
        owner = cast(_Server, self.server).owner
        model = str(body.get("model", ""))
        with owner.lock:
            owner.embedding_calls.append(EmbeddingCall(model=model, texts=list(texts)))
            failure = owner.embedding_error
        if failure is not None:
            self._send_json(failure.status, _error_body(failure.message, "scripted_error"))
            return
        as_base64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            vector = hashed_embedding(text, owner.embedding_dim)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(rough_tokens(text) for text in texts)
        self._send_json(
            200,
            {
                "object": "list",
                "model": model,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        encoded = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)


def _error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: ScriptedModelServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up (a timed-out request); report anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass
class ScriptedModelServer:
    """An OpenAI-compatible server on 127.0.0.1 answering chat calls with `script`, recording every request.

    Use as a context manager; reach it through litellm with model "openai/<anything>", api_base=`base_url` and
    any api_key.
    """

    script: Script = _unscripted
    embedding_dim: int = DEFAULT_EMBEDDING_DIM
    embedding_error: ScriptedError | None = None
    calls: list[ChatCall] = field(default_factory=list[ChatCall], init=False)
    embedding_calls: list[EmbeddingCall] = field(default_factory=list[EmbeddingCall], init=False)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _server: _Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        """The api_base to hand to litellm, e.g. http://127.0.0.1:PORT/v1."""
        if self._server is None:
            raise RuntimeError("ScriptedModelServer is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ScriptedModelServer:
        """Bind an ephemeral port and serve from a daemon thread."""
        if self._server is None:
            self._server = _Server(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="scripted-model", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def reset(self, script: Script | None = None) -> None:
        """Forget recorded requests and failures; answer chat calls with `script` from now on (default: none)."""
        with self.lock:
            self.calls.clear()
            self.embedding_calls.clear()
            self.embedding_error = None
            self.script = script if script is not None else _unscripted

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
