"""MCP over stdio that answers every line: one the SDK cannot read gets a JSON-RPC error instead of silence.

The SDK's `stdio_server` validates each line with pydantic and, when that fails (not JSON, nested deeper than
its parser's 200 levels, a lone surrogate such as "\\ud800", a JSON array or scalar, an object that is not a
JSON-RPC message), passes the exception into the read stream, where the session logs it at DEBUG and drops it:
the client waits for a reply that never comes. `AnsweringReadStream` sits between the two and turns each such
exception into a reply: -32700 (parse error) for a line that is not JSON we can read, -32600 (invalid request)
for JSON that is not a JSON-RPC request. The request's id is echoed when it can still be read, so the client's
pending call fails at once instead of timing out; otherwise it is null. The server keeps reading the next line.

This module owns that translation only; it never parses a valid message itself and never writes to stdout
except through the SDK's own writer (two writers on one pipe would tear frames).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
from mcp.server.stdio import stdio_server
from mcp.shared._stream_protocols import ReadStream, WriteStream  # the session's own stream types
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

log = logging.getLogger(__name__)
Incoming = SessionMessage | Exception
# pydantic-core's JSON parser refuses deeper nesting than this; the reply says so instead of a column number alone.
MAX_NESTING = 200


def _readable_id(value: Any) -> str | int | None:
    """The JSON-RPC id of a decoded message, or None where it has none a client could match."""
    if not isinstance(value, dict):
        return None
    found: Any = value.get("id")  # pyright: ignore[reportUnknownMemberType] - any JSON object
    if isinstance(found, bool) or not isinstance(found, str | int):
        return None
    return found


def _lenient_id(line: Any) -> str | int | None:
    """The id of a line pydantic refused but Python's json module may still read (a lone surrogate, deep params)."""
    if not isinstance(line, str | bytes):
        return None
    try:
        return _readable_id(json.loads(line))
    except (ValueError, RecursionError):
        return None


def unreadable_reply(exc: Exception) -> JSONRPCError:
    """The error reply to a line the SDK could not turn into a JSON-RPC message."""
    if not isinstance(exc, ValidationError):
        return JSONRPCError(
            jsonrpc="2.0",
            id=None,
            error=ErrorData(
                code=PARSE_ERROR,
                message=f"Parse error: the line could not be read ({type(exc).__name__}). Send one JSON-RPC 2.0 "
                "message per line, as UTF-8 JSON, and send it again.",
            ),
        )
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        detail = str(first["msg"]).removeprefix("Invalid JSON: ")
        return JSONRPCError(
            jsonrpc="2.0",
            id=_lenient_id(first.get("input")),
            error=ErrorData(
                code=PARSE_ERROR,
                message=f"Parse error: the line is not JSON this server reads ({detail}); expected one JSON-RPC 2.0 "
                f"message per line: UTF-8 JSON nested fewer than {MAX_NESTING} levels, with no lone surrogate "
                "escape (\\ud800-\\udfff). Fix the message and send it again.",
            ),
        )
    decoded = _whole_message(exc)
    shape = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(decoded), "number"
    )
    if isinstance(decoded, dict):
        # What JSONRPCRequest itself found wrong: the other members of the union fail on fields a request lacks.
        wrong = next((e for e in exc.errors() if e["loc"][:1] == ("JSONRPCRequest",)), first)
        where = ".".join(str(part) for part in wrong["loc"][1:]) or "message"
        got = f"an object whose {where} is wrong ({str(wrong['msg']).lower()})"
    else:
        got = f"a JSON {shape}"
    return JSONRPCError(
        jsonrpc="2.0",
        id=_readable_id(decoded),
        error=ErrorData(
            code=INVALID_REQUEST,
            message=f'Invalid Request: got {got}; expected one JSON-RPC 2.0 object with "jsonrpc": "2.0", '
            '"method" and, for a request, "id" (batches are not supported). Fix the message and send it again.',
        ),
    )


def _whole_message(exc: ValidationError) -> Any:
    """The decoded line a validation error was about, where one of its errors carries it whole."""
    for error in exc.errors():
        # An error at a union member itself (not an object), or a field missing from the top-level object.
        if len(error["loc"]) == 1 or (error["type"] == "missing" and len(error["loc"]) == 2):
            return error.get("input")
    return None


class AnsweringReadStream:
    """The SDK's read stream, with every unreadable line answered on the write stream and skipped."""

    def __init__(self, inner: ReadStream[Incoming], replies: WriteStream[SessionMessage]) -> None:
        self._inner = inner
        self._replies = replies

    @property
    def last_context(self) -> Any:
        """The sender's context of the last message, as the SDK's own stream keeps it (the session reads it)."""
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Incoming:
        """The next message the SDK could read; each one it could not is answered with an error first."""
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            reply = unreadable_reply(item)
            log.warning(
                "answered an unreadable line on stdin with error %d (id %r)", reply.error.code, reply.id
            )
            try:
                await self._replies.send(SessionMessage(reply))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                log.debug("the error reply was not sent: stdout is closed")

    async def aclose(self) -> None:
        """Close the SDK's stream."""
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Incoming:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def answering_stdio_server() -> AsyncGenerator[tuple[AnsweringReadStream, WriteStream[SessionMessage]]]:
    """The SDK's stdio transport, with unreadable lines answered instead of dropped."""
    async with stdio_server() as (read_stream, write_stream):
        yield AnsweringReadStream(read_stream, write_stream), write_stream
