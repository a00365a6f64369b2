"""Streamable HTTP with bounds on what one client can hold: uvicorn's knobs, plus the two it lacks.

This module owns running the SDK's streamable-HTTP app under uvicorn (the only uvicorn import) with the limits of
`[server]` in the settings:
- `[limits] max_request_bytes`: the SDK's own body limit (HTTP 413, whether declared or streamed);
- `max_connections`: uvicorn's `limit_concurrency` (a request when that many connections or tasks are open gets
  503), and a connection accepted beyond it is closed at once, so open sockets stay bounded;
- `header_timeout_s` and `body_timeout_s`: uvicorn's h11 protocol has neither. It closes a kept-alive connection
  that stays silent after a response, but a fresh connection, or one that sends a request a byte at a time, is
  kept forever (slowloris), and the ASGI app, which could time out a slow body, is not called until the headers
  are complete and cannot close the socket. `BoundedH11Protocol` adds one timer per connection at that level;
- `sse_idle_timeout_s`: a `GET /mcp` event stream is never ended by the SDK (in stateless mode nothing is ever
  sent on it). `IdleStreamLimit` ends an event stream that sent no event (keep-alive comments do not count) for
  that long;
- DNS rebinding: on a loopback address the SDK's Host/Origin check (421/403) is on; it is switched on here for
  every loopback host, not only the three spellings the SDK recognises, and allows `public_url`'s host.
It must never hold tool logic or parse MCP messages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

import anyio
import h11
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from memalign_mcp.auth import is_loopback
from memalign_mcp.settings import ServerSettings

if TYPE_CHECKING:
    from memalign_mcp.judge_server import JudgeServer

log = logging.getLogger(__name__)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head and body, and a cap on connections."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 256

    _deadline: asyncio.TimerHandle | None = None
    _awaiting: str | None = None  # "head" or "body": the part of a request the client owes now

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Accept the connection, or close it at once when the server already holds `max_connections`."""
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning(
                "closed a new HTTP connection: %d are open (server.max_connections)", self.max_connections
            )
            transport.close()
            return
        self._follow()

    def data_received(self, data: bytes) -> None:
        """Read as uvicorn does, then time the part of the request still to come."""
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        """After a response the connection waits for the next request's head, under the header deadline."""
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline of a connection that is gone."""
        self._arm(None, 0.0)
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Start the deadline of the part of a request the client owes now; keep it while that part is unchanged."""
        if self.transport.is_closing():
            self._arm(None, 0.0)
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._arm("head", self.header_timeout_s)
        elif state is h11.SEND_BODY:
            self._arm("body", self.body_timeout_s)
        else:  # the whole request is in (or the connection is ending): the app's time is not the client's
            self._arm(None, 0.0)

    def _arm(self, awaiting: str | None, seconds: float) -> None:
        if awaiting is self._awaiting:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._awaiting = awaiting
        if awaiting is not None:
            self._deadline = self.loop.call_later(seconds, self._expire, awaiting)

    def _expire(self, awaiting: str) -> None:
        log.debug("closed an HTTP connection that did not send a request's %s in time", awaiting)
        self._deadline = None
        self.transport.close()


def bounded_protocol(server: ServerSettings) -> type[BoundedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, carrying these settings' bounds."""
    return type(
        "BoundedH11Protocol",
        (BoundedH11Protocol,),
        {
            "header_timeout_s": server.header_timeout_s,
            "body_timeout_s": server.body_timeout_s,
            "max_connections": server.max_connections,
        },
    )


class IdleStreamLimit:
    """ASGI middleware that ends an event-stream response which sent no event for `idle_s` seconds."""

    def __init__(self, app: ASGIApp, idle_s: float) -> None:
        self.app = app
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; once it streams events, give up waiting on it after `idle_s` without one."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streaming = False
        ended = False
        watch = anyio.CancelScope()

        async def watched(message: Message) -> None:
            nonlocal streaming, ended
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body":
                ended = not message.get("more_body", False)
                body: bytes = message.get("body", b"")
                if streaming and not body.lstrip().startswith(b":"):  # ":" opens a comment: a keep-alive ping
                    watch.deadline = anyio.current_time() + self.idle_s
            await send(message)
            if streaming and message["type"] == "http.response.start":
                watch.deadline = anyio.current_time() + self.idle_s

        with watch:
            await self.app(scope, receive, watched)
        if watch.cancelled_caught and not ended:
            log.debug("ended an event stream that sent nothing for %.0f s", self.idle_s)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def loopback_security(server: ServerSettings) -> TransportSecuritySettings | None:
    """The SDK's Host/Origin check for a loopback host (any spelling), else None (tokens guard other hosts).

    The host of `public_url` is allowed too: a reverse proxy in front of a loopback server passes it on.
    """
    if not is_loopback(server.host):
        return None
    # (host as written in a Host header, scheme of the page that may call it)
    names = {(n, "http") for n in (server.host.strip("[]").lower(), "127.0.0.1", "localhost", "::1")}
    public = urlsplit(server.public_url)
    if public.hostname:
        names.add((public.hostname, public.scheme or "http"))
    shown = {(f"[{name}]" if ":" in name else name, scheme) for name, scheme in names}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted({p for name, _ in shown for p in (name, f"{name}:*")}),
        allowed_origins=sorted(
            {p for name, scheme in shown for p in (f"{scheme}://{name}", f"{scheme}://{name}:*")}
        ),
    )


class _HungUpFilter(logging.Filter):
    """Drops the SDK's error record, with traceback, for a client that hung up while sending its body.

    That is the client's doing (or the body deadline's), not a server error, and a stream of half-sent requests
    would otherwise fill the log with tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record about a ClientDisconnect."""
        return not (record.exc_info and isinstance(record.exc_info[1], ClientDisconnect))


def http_config(server: JudgeServer, settings: ServerSettings, *, max_body_bytes: int) -> uvicorn.Config:
    """uvicorn's configuration for `server` over stateless streamable HTTP at http://host:port/mcp, bounded."""
    app = server.streamable_http_app(
        # Stateless with JSON replies: any replica can answer any request, and plain HTTP clients can read them.
        stateless_http=True,
        json_response=True,
        max_request_body_size=max_body_bytes,
        transport_security=loopback_security(settings),
        host=settings.host,
    )
    sdk_log = logging.getLogger("mcp.server.streamable_http")
    if not any(isinstance(f, _HungUpFilter) for f in sdk_log.filters):
        sdk_log.addFilter(_HungUpFilter())
    return uvicorn.Config(
        IdleStreamLimit(app, settings.sse_idle_timeout_s),
        host=settings.host,
        port=settings.port,
        log_level=server.settings.log_level.lower(),
        http=bounded_protocol(settings),
        limit_concurrency=settings.max_connections,
    )


def serve_http(server: JudgeServer, settings: ServerSettings, *, max_body_bytes: int) -> None:
    """Serve `server` over HTTP until the process is stopped."""
    anyio.run(uvicorn.Server(http_config(server, settings, max_body_bytes=max_body_bytes)).serve)
