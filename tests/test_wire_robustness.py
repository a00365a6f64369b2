"""The transports never go silent: raw bytes against real `memalign-mcp serve` subprocesses.

Over stdio, every line the server cannot read (too deep, a lone surrogate, invalid UTF-8, not JSON, a JSON array
or scalar, an object that is not a request) gets a JSON-RPC error reply, and the next tools/list is answered.
Waits read pipes until a deadline; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from test_transports import SERVER, clean_env

DEADLINE_S = 60  # a hung server fails the test instead of stalling the run
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
