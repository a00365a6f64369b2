"""moto's S3 server for the object-storage tests and benchmarks: requests serialised and counted, 127.0.0.1 only.

`python tests/s3_server.py` binds an ephemeral port on 127.0.0.1, prints `PORT <n>` on stdout, then serves
until killed, logging each request line to stderr as `moto_server` does. Two differences from `moto_server`:
- requests are handled one at a time. moto checks `If-None-Match: *` and then writes, in two steps; served by
  several threads at once, two conditional PUTs of one key can both succeed, which real S3 never allows, and
  LanceDB's commits on S3 rely on exactly that refusal (a manifest written with PutMode::Create). Serialised,
  moto's conditional PUT is as atomic as S3's;
- `GET /_requests` returns the requests served so far by method as JSON, and `DELETE /_requests` resets them
  (no bucket can be named `_requests`), so a benchmark can count object-store requests per score.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

COUNTS_PATH = "/_requests"
StartResponse = Callable[..., Any]


def serialised_app() -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """moto's WSGI app behind one lock, counting requests by method."""
    moto = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    counts: Counter[str] = Counter()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", ""))
        if environ.get("PATH_INFO") == COUNTS_PATH:
            with lock:
                if method == "DELETE":
                    counts.clear()
                body = json.dumps(dict(counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        with lock:
            counts[method] += 1
            return list(moto(environ, start_response))

    return app


def main() -> None:
    """Serve on an ephemeral port of 127.0.0.1 until killed."""
    server = make_server("127.0.0.1", 0, serialised_app(), threaded=True, request_handler=MotoRequestHandler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
