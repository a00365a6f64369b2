"""The transports never go silent: raw bytes against real `memalign-mcp serve` subprocesses.

Over stdio, every line the server cannot read (too deep, a lone surrogate, invalid UTF-8, not JSON, a JSON array
or scalar, an object that is not a request) gets a JSON-RPC error reply, and the next tools/list is answered.
Over HTTP (one server for the module, with bounds of a second or two from a config file): a client that sends
its headers a byte at a time, or half a body, is disconnected while a normal call succeeds; an idle event stream
is ended; connections beyond the cap are closed at once; foreign Host and Origin headers are refused; and ~200
malformed requests leave the server answering and the store unchanged. Waits read sockets and pipes until a
deadline; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from memalign_mcp.http_serving import loopback_security
from memalign_mcp.settings import ServerSettings
from test_transports import SERVER, clean_env, serving_http

DEADLINE_S = 60  # a hung server fails the test instead of stalling the run
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 1.5
SSE_IDLE_S = 1.0
MAX_CONNECTIONS = 24
MAX_BODY_BYTES = 64 * 1024
TOOLS_LIST = {"jsonrpc": "2.0", "id": 99, "method": "tools/list"}


class LineReader:
    """Lines from a pipe, each awaited with select() until a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def line(self, deadline_s: float = DEADLINE_S) -> bytes:
        """The next line; fails the test when none comes before the deadline."""
        until = time.monotonic() + deadline_s
        while b"\n" not in self.buffer:
            left = until - time.monotonic()
            readable, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not readable:
                pytest.fail(f"no reply within {deadline_s} s (the server went silent)")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                pytest.fail("the server closed stdout")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


@pytest.fixture
def stdio(tmp_path: Path) -> Iterator[tuple[Callable[[bytes], None], LineReader]]:
    """`memalign-mcp serve` over stdio, initialized; yields a line sender and a reader of its replies."""
    process = subprocess.Popen(
        [str(SERVER), "serve", "--log-level", "ERROR"],
        cwd=tmp_path,
        env=clean_env(tmp_path / "data"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    stdin = process.stdin

    def send(line: bytes) -> None:
        stdin.write(line + b"\n")
        stdin.flush()

    reader = LineReader(process.stdout.fileno())
    hello = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "fuzz", "version": "1"},
    }
    send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}).encode())
    assert json.loads(reader.line())["id"] == 0
    send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
    try:
        yield send, reader
    finally:
        stdin.close()
        process.terminate()  # not waiting for the engine, still opening in the background, to finish
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


DEEP = b"[" * 300 + b"]" * 300
UNREADABLE_LINES = [
    # (what, line, expected code, expected id): the id is echoed where it can still be read.
    (
        "deep params",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"a":' + DEEP + b"}}",
        -32700,
        1,
    ),
    ("deep array", DEEP, -32700, None),
    ("lone surrogate", b'{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"a":"\\ud800"}}', -32700, 2),
    ("invalid UTF-8", b"\xff\xfe\x80\xc3(", -32700, None),
    ("not JSON", b"GET / HTTP/1.1", -32700, None),
    ("truncated JSON", b'{"jsonrpc":"2.0","id":3,"method":', -32700, None),
    ("JSON array", b'[{"jsonrpc":"2.0","id":4,"method":"tools/list"}]', -32600, None),
    ("JSON scalar", b"42", -32600, None),
    ("JSON string", b'"tools/list"', -32600, None),
    ("method not a string", b'{"jsonrpc":"2.0","id":"s","method":5}', -32600, "s"),
    ("no jsonrpc", b'{"id":6,"method":"tools/list"}', -32600, 6),
]


def test_stdio_answers_every_unreadable_line_and_keeps_serving(
    stdio: tuple[Callable[[bytes], None], LineReader],
) -> None:
    send, reader = stdio
    for what, line, code, request_id in UNREADABLE_LINES:
        send(line)
        reply = json.loads(reader.line())
        assert reply["error"]["code"] == code, what
        assert reply["id"] == request_id, what
        assert "send it again" in reply["error"]["message"], what
        send(json.dumps(TOOLS_LIST).encode())
        listed = json.loads(reader.line())
        assert listed["id"] == 99, what
        assert listed["result"]["tools"], what
    # Invalid UTF-8 inside a string of a valid request is read as U+FFFD, and the request is served.
    send(b'{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":{"x":"\xff"}}}')
    assert json.loads(reader.line())["result"]["tools"]


@dataclass(frozen=True)
class Http:
    """The module's HTTP server: its port and its log."""

    port: int
    log: Path

    def connect(self) -> socket.socket:
        """A fresh TCP connection to the server."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S)

    def exchange(self, request: bytes) -> bytes:
        """Send raw bytes and read until the server closes; what it sent back."""
        with self.connect() as conn:
            conn.sendall(request)
            return read_until_eof(conn)

    def post(self, payload: Any, *, headers: str = "", host: str = "127.0.0.1") -> tuple[int, Any]:
        """POST a JSON body to /mcp; the status and the decoded JSON reply (None when not JSON)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: {host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nConnection: close\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return parse_response(self.exchange(head.encode() + body))

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """tools/call over a plain POST; the structured result of a call that must succeed."""
        status, reply = self.post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            }
        )
        assert status == 200, reply
        assert not reply["result"].get("isError"), reply
        return reply["result"]["structuredContent"]


def read_until_eof(conn: socket.socket, deadline_s: float = DEADLINE_S) -> bytes:
    """Everything the peer sends until it closes; fails the test at the deadline."""
    conn.settimeout(deadline_s)
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open past {deadline_s} s")
    return received


def parse_response(raw: bytes) -> tuple[int, Any]:
    """Status code and JSON body of a raw HTTP/1.1 response (0, None when there is none)."""
    if not raw.startswith(b"HTTP/1.1 "):
        return 0, None
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), json.loads(body)
    except ValueError:
        return int(head.split(b" ", 2)[1]), None


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    """`serve --transport http` with small bounds, for the whole module (one subprocess)."""
    root = tmp_path_factory.mktemp("wire")
    config = root / "config.toml"
    config.write_text(
        "[server]\n"
        f"header_timeout_s = {HEADER_TIMEOUT_S}\nbody_timeout_s = {BODY_TIMEOUT_S}\n"
        f"sse_idle_timeout_s = {SSE_IDLE_S}\nmax_connections = {MAX_CONNECTIONS}\n"
        f"[limits]\nmax_request_bytes = {MAX_BODY_BYTES}\n"
    )
    with serving_http(root, "--config", str(config)) as served:
        yield Http(served.port, served.log)


def trickle(http: Http, request: bytes) -> tuple[int, float]:
    """Send `request` a byte at a time, each after reading for a tenth of a second; bytes sent before the server
    hung up, and seconds it took."""
    started = time.monotonic()
    with http.connect() as conn:
        for sent in range(len(request)):
            try:
                conn.sendall(request[sent : sent + 1])
                conn.settimeout(0.1)
                if conn.recv(1024) == b"":
                    return sent + 1, time.monotonic() - started
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return sent, time.monotonic() - started
        pytest.fail("the server read the whole slow request without hanging up")


def half_body(http: Http) -> tuple[bytes, float]:
    """Headers announcing 1,000 bytes, then 20 of them; what the server sent back and when it hung up."""
    started = time.monotonic()
    with http.connect() as conn:
        conn.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Accept: application/json\r\nContent-Length: 1000\r\n\r\n{"jsonrpc": "2.0", '
        )
        return read_until_eof(conn), time.monotonic() - started


def test_a_slow_head_and_a_half_body_are_cut_off_while_a_normal_call_succeeds(http: Http) -> None:
    head = (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + b"X-Pad: a\r\n" * 40
    )
    with ThreadPoolExecutor(2) as attackers:
        slow = attackers.submit(trickle, http, head)
        half = attackers.submit(half_body, http)
        status, reply = http.post(TOOLS_LIST)  # meanwhile, an ordinary caller
        assert status == 200
        assert reply["result"]["tools"]
        sent, slow_s = slow.result(timeout=DEADLINE_S)
        answered, half_s = half.result(timeout=DEADLINE_S)
    assert sent < len(head)  # hung up on before the head was complete
    assert slow_s < HEADER_TIMEOUT_S + 10
    assert answered == b""  # no request was ever served: the connection was closed
    assert half_s < BODY_TIMEOUT_S + 10


def test_an_idle_connection_is_closed_and_an_idle_event_stream_is_ended(http: Http) -> None:
    with http.connect() as idle:
        assert read_until_eof(idle, HEADER_TIMEOUT_S + 10) == b""
    stream = http.exchange(
        f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{http.port}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    assert stream.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/event-stream" in stream.lower()
    assert stream.endswith(b"0\r\n\r\n")  # the chunked stream was ended properly, not cut


def test_connections_beyond_the_cap_are_closed_at_once(http: Http) -> None:
    held = [http.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        with http.connect() as extra:
            assert read_until_eof(extra, HEADER_TIMEOUT_S) == b""  # before any of the held ones timed out
        held[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            held[0].recv(1)  # still open: the extra one was refused because of the cap, not a timeout
    finally:
        for conn in held:
            conn.close()
    status, _ = http.post(TOOLS_LIST)
    assert status == 200


def test_foreign_host_and_origin_are_refused_on_loopback(http: Http) -> None:
    assert http.post(TOOLS_LIST, host="judges.evil.example")[0] == 421
    assert http.post(TOOLS_LIST, headers="Origin: http://evil.example\r\n")[0] == 403
    assert http.post(TOOLS_LIST, headers=f"Origin: http://localhost:{http.port}\r\n")[0] == 200
    assert http.post(TOOLS_LIST, host="localhost")[0] == 200
    # Every loopback spelling gets the check, not only the three the SDK recognises, and a proxy's public name
    # (public_url) passes it.
    other = loopback_security(ServerSettings(host="127.0.0.2", public_url="https://judges.example/mcp"))
    assert other is not None
    assert {"127.0.0.2:*", "judges.example", "judges.example:*"} <= set(other.allowed_hosts)
    assert "https://judges.example" in other.allowed_origins
    assert (
        loopback_security(ServerSettings(host="0.0.0.0")) is None
    )  # tokens guard a public address (auth.py)


def test_a_body_over_the_limit_gets_413_declared_or_streamed(http: Http) -> None:
    declared = http.exchange(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: 52428800\r\n\r\n"
    )
    assert parse_response(declared)[0] == 413
    chunk = b"x" * 8192
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 2))
    streamed = http.exchange(
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
    )
    assert parse_response(streamed)[0] == 413


def malformed_requests(port: int, count: int, seed: int = 9) -> list[tuple[bytes, bool]]:
    """`count` malformed requests, each with whether it is complete (else the client gives up after sending)."""
    rng = random.Random(seed)
    host = f"Host: 127.0.0.1:{port}\r\n"

    def http_post(body: bytes, extra: str = "", ctype: str = "application/json") -> bytes:
        return (
            f"POST /mcp HTTP/1.1\r\n{host}Content-Type: {ctype}\r\nAccept: application/json, text/event-stream\r\n"
            f"Connection: close\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def bad_call() -> bytes:
        tool, arguments = rng.choice(
            [
                ("delete_judge", {"judge": 5}),
                ("delete_judge", {"judge": "fuzzed", "force": True}),
                ("remove_feedback", {"judge": "fuzzed", "feedback_ids": "a", "purge": "yes"}),
                ("add_feedback", {"judge": "fuzzed", "feedback": [{"inputs": "x"}]}),
                ("add_feedback", {"judge": "fuzzed", "feedback": {"inputs": "x", "outputs": "y"}}),
                ("rollback_judge", {"judge": "fuzzed", "version": "0"}),
                ("update_judge", {"judge": "fuzzed", "retrieval_k": -1}),
                ("create_judge", {"name": "Bad Name!", "instructions": ""}),
            ]
        )
        return json.dumps(
            {
                "jsonrpc": "2.0",
                "id": rng.randrange(1000),
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            }
        ).encode()

    bodies: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randrange(1, 400)),
        lambda: b"[" * rng.randrange(150, 3000) + b"]" * 10,
        lambda: b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"a":"\\ud800"}}',
        lambda: b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"n":' + b"9" * 5000 + b"}}",
        lambda: b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]',
        lambda: rng.choice([b"null", b"1", b'"x"', b"true", b"{}", b"[]", b""]),
        lambda: b'{"jsonrpc":"1.0","id":[],"method":{}}',
        bad_call,
    ]
    makers: list[Callable[[], tuple[bytes, bool]]] = [
        lambda: (rng.randbytes(rng.randrange(1, 600)), False),  # not HTTP at all
        lambda: (http_post(rng.choice(bodies)()), True),
        lambda: (
            http_post(
                rng.choice(bodies)(), ctype=rng.choice(["text/plain", "", "application/json;;", "\x7f"])
            ),
            True,
        ),
        lambda: (
            http_post(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', extra="Content-Length: 3\r\n"),
            True,
        ),
        lambda: (http_post(b"{}")[:-2], False),  # declared but missing body
        lambda: (
            f"POST /mcp HTTP/1.1\r\n{host}Content-Length: {rng.choice([-1, 2**70, 'x'])}\r\n\r\n".encode(),
            True,
        ),
        lambda: (
            f"POST /mcp HTTP/1.1\r\n{host}Content-Length: 999999999\r\nConnection: close\r\n\r\n".encode(),
            True,
        ),
        lambda: (
            f"POST /mcp HTTP/1.1\r\n{host}Transfer-Encoding: gzip, chunked\r\n\r\nzz\r\n".encode(),
            False,
        ),
        lambda: (f"POST /mcp HTTP/1.1\r\n{host}Bad Header: x\r\n\r\n".encode(), True),
        lambda: (
            f"GET /mcp HTTP/1.1\r\n{host}X-Long: {'a' * 70000}\r\nConnection: close\r\n\r\n".encode(),
            True,
        ),
        lambda: (f"DELETE /mcp HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode(), True),
        lambda: (b"GET /mcp\r\n\r\n", True),
        lambda: (b"POST /mcp HTTP/1.1\r\nHost: \r\nHost: a\r\nConnection: close\r\n\r\n", True),
    ]
    weights = [2, 6, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4]
    makers.append(lambda: (http_post(bad_call()), True))
    return [maker() for maker in rng.choices(makers, weights, k=count)]


def test_200_malformed_requests_leave_the_server_answering_and_the_store_unchanged(http: Http) -> None:
    http.call("create_judge", {"name": "fuzzed", "instructions": "Is {{ outputs }} polite?"})
    feedback = {
        "inputs": "Where is my order?",
        "outputs": "Not my problem.",
        "value": False,
        "rationale": "Rude.",
    }
    http.call("add_feedback", {"judge": "fuzzed", "feedback": [feedback | {"id": "a"}]})
    before = (http.call("list_judges", {}), http.call("list_feedback", {"judge": "fuzzed"}))

    def attack(case: tuple[bytes, bool]) -> int:
        request, complete = case
        with http.connect() as conn:
            try:
                conn.sendall(request)
            except (ConnectionResetError, BrokenPipeError):
                return 0  # refused while still sending: a fine answer to garbage
            if not complete:
                return 0  # a client that gives up; the server must cope with the hang-up
            return parse_response(read_until_eof(conn))[0]

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(attack, malformed_requests(http.port, 200)))
    failed = [status for status in statuses if status >= 500]
    assert not failed, f"malformed requests made the server fail ({failed}); see {http.log}"
    status, reply = http.post(TOOLS_LIST)
    assert status == 200
    assert reply["result"]["tools"]
    assert (http.call("list_judges", {}), http.call("list_feedback", {"judge": "fuzzed"})) == before
    assert "Traceback" not in http.log.read_text()  # garbage and hang-ups are not server errors in the log
