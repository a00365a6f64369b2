"""What the HTTP bounds cost a normal caller: tools/list latency with and without them.

Two uvicorn servers in this process, each on its own thread and port, serve the same MCP server object: one as
`MCPServer.run("streamable-http")` configured it before 0.2 (the SDK's app, uvicorn's defaults), one as
`serve --transport http` does now (`http_serving.http_config`: read deadlines, connection cap, idle-stream
limit). A plain keep-alive HTTP/1.1 client sends tools/list to each in turn, alternating in rounds so that
machine noise hits both alike, and the medians go out as a Markdown row for BENCHMARKS.md. Run from the
repository root:

    .venv/bin/python benchmarks/http_limits_overhead.py --requests 2000
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import socket
import statistics
import tempfile
import threading
import time
from datetime import date

import uvicorn

from memalign_mcp.app import build_server
from memalign_mcp.http_serving import http_config
from memalign_mcp.settings import load_settings

BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(config: uvicorn.Config) -> uvicorn.Server:
    """Run a uvicorn server on a thread of its own; returns once it accepts connections."""
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start within 60 s")
        time.sleep(0.01)
    return server


def _time_one(conn: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    conn.request("POST", "/mcp", BODY, HEADERS)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"tools/list answered {response.status}")
    return time.perf_counter() - started


def main() -> None:
    """Time tools/list against both servers and print the medians as a Markdown row."""
    parser = argparse.ArgumentParser(description="tools/list latency with and without the HTTP bounds")
    parser.add_argument("--requests", type=int, default=2000, help="tools/list calls per server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memalign-http-bench-") as data_dir:
        settings = load_settings(
            overrides={"store.data_dir": data_dir, "embedding.model": "hashing", "server.transport": "http"}
        )
        before_port, after_port = _free_port(), _free_port()
        plain = build_server(settings, log_level="WARNING")
        plain_app = plain.streamable_http_app(stateless_http=True, json_response=True)
        before = _start(uvicorn.Config(plain_app, port=before_port, log_level="warning", access_log=False))
        bounded = build_server(settings, log_level="WARNING")
        srv = settings.server.model_copy(update={"port": after_port})
        config = http_config(bounded, srv, max_body_bytes=settings.limits.max_request_bytes)
        config.access_log = False
        after = _start(config)
        ports = {"before": before_port, "after": after_port}
        timings: dict[str, list[float]] = {"before": [], "after": []}
        for port in ports.values():  # warm-up: imports, first schema build
            warm = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(20):
                _time_one(warm)
            warm.close()
        for _ in range(args.requests // 100):
            for name, port in ports.items():
                # A fresh keep-alive connection per round: an idle one is closed by either server meanwhile.
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                _time_one(conn)  # connects; not counted
                timings[name].extend(_time_one(conn) for _ in range(100))
                conn.close()
        before.should_exit = after.should_exit = True
    med = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    p99 = {name: statistics.quantiles(values, n=100)[98] * 1000 for name, values in timings.items()}
    print(f"{date.today()} {platform.machine()} python {platform.python_version()}, {args.requests} each")
    print("| server | tools/list p50 (ms) | p99 (ms) |")
    print("|---|---|---|")
    for name in ("before", "after"):
        print(f"| {name} | {med[name]:.2f} | {p99[name]:.2f} |")
    print(f"ratio after/before (p50): {med['after'] / med['before']:.3f}")


if __name__ == "__main__":
    main()
