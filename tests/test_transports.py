"""The real `memalign-mcp` command in subprocesses: MCP over stdio and over streamable HTTP, exit codes, start-up.

Each server gets a fresh data directory and the hashing embedder; no model is configured, so judges answer from
memory and nothing reaches a network. Readiness of the HTTP server is found by polling its port within a
deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parent.parent
SERVER = Path(sys.executable).with_name("memalign-mcp")
CALL_DEADLINE_S = 120  # a hung server fails the test instead of stalling the run
CONTRACT_TOOLS = {
    "create_judge",
    "list_judges",
    "score_response",
    "add_feedback",
    "remove_feedback",
    "list_guidelines",
    "list_feedback",
    "evaluate_judge",
    "delete_judge",
    "update_judge",
    "distill_pending",
    "judge_history",
    "diff_judge",
    "rollback_judge",
    "add_guideline",
    "review_guideline",
}
FEEDBACK = [
    {
        "inputs": "Where is my order?",
        "outputs": "Not my problem.",
        "value": False,
        "rationale": "Rude.",
        "id": "a",
    }
]


@pytest.fixture
def anyio_backend() -> str:
    """The MCP clients run on asyncio."""
    return "asyncio"


def server_env(data_dir: Path) -> dict[str, str]:
    """The server's own settings: a private store, the hashing embedder, no model, nothing from the network."""
    return {
        "MEMALIGN_DATA_DIR": str(data_dir),
        "MEMALIGN_EMBEDDING_MODEL": "hashing",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }


def clean_env(data_dir: Path) -> dict[str, str]:
    """This process's environment without any MEMALIGN_* of the developer's, plus the server's settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MEMALIGN_")}
    return inherited | server_env(data_dir)


async def exercise(client: Client) -> None:
    """What every transport must carry: the tool list, a judge, feedback, a score and a tool error."""
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} == CONTRACT_TOOLS
    created = await client.call_tool(
        "create_judge", {"name": "tone", "instructions": "Is {{ outputs }} polite?"}
    )
    assert not created.is_error
    added = await client.call_tool("add_feedback", {"judge": "tone", "feedback": FEEDBACK})
    assert added.structured_content is not None
    assert added.structured_content["feedback_ids"] == ["a"]
    scored = await client.call_tool(
        "score_response", {"judge": "tone", "inputs": "Where is my order?", "outputs": "Not my problem."}
    )
    assert scored.structured_content is not None
    assert (scored.structured_content["value"], scored.structured_content["model"]) == (False, "memory")
    unknown = await client.call_tool("list_guidelines", {"judge": "tonne"})
    assert unknown.is_error
    judges = await client.call_tool("list_judges", {})
    assert judges.structured_content is not None
    assert {"helpfulness", "tone"} <= {j["name"] for j in judges.structured_content["judges"]}


async def test_serve_speaks_mcp_over_stdio_and_logs_only_to_stderr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from_env, from_flag = tmp_path / "env-dir", tmp_path / "flag-dir"
    params = StdioServerParameters(
        command=str(SERVER),
        args=["serve", "--data-dir", str(from_flag)],
        env=server_env(from_env),
        cwd=str(tmp_path),  # not the checkout: the shipped helpfulness judge must come from the package
    )
    stderr_path = tmp_path / "stderr.log"
    with (
        stderr_path.open("w") as errlog,
        caplog.at_level(logging.WARNING, logger="mcp.client"),
        anyio.fail_after(CALL_DEADLINE_S),
    ):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            await exercise(client)
    # A stray line on stdout would have been reported by the client as an unparsable message.
    assert not [r for r in caplog.records if "parse" in r.getMessage().lower()]
    assert "judge engine ready" in stderr_path.read_text()
    # The flag overrides MEMALIGN_DATA_DIR.
    assert (from_flag / "lancedb").is_dir()
    assert not from_env.exists()


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_listening(
    process: subprocess.Popen[Any], port: int, log: Path, deadline_s: float = 60
) -> None:
    """Poll the port until it accepts a connection; fail at once if the server exits, or at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not listen on port {port} within {deadline_s} s:\n{log.read_text()}")
        try:
            # Doubles as the pause between attempts: returns only if the server died.
            process.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")


@dataclass(frozen=True)
class HttpServed:
    """A running `serve --transport http`: its port and the file its log goes to."""

    port: int
    log: Path

    @property
    def url(self) -> str:
        """Its MCP endpoint."""
        return f"http://127.0.0.1:{self.port}/mcp"


@contextmanager
def serving_http(
    root: Path, *args: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> Generator[HttpServed]:
    """`memalign-mcp serve --transport http [args]` with its data and log under `root`, stopped on exit."""
    port = port or free_port()
    log = root / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(SERVER), "serve", "--transport", "http", "--port", str(port), *args],
            cwd=REPO,
            env=clean_env(root / "data") | dict(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(process, port, log)
        yield HttpServed(port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """`memalign-mcp serve --transport http` on a free port; yields its MCP endpoint URL."""
    with serving_http(tmp_path) as served:
        yield served.url


async def test_serve_speaks_mcp_over_streamable_http(http_server: str) -> None:
    with anyio.fail_after(CALL_DEADLINE_S):
        async with Client(http_server) as client:
            await exercise(client)
    # Stateless: a second, independent client sees what the first one stored.
    with anyio.fail_after(CALL_DEADLINE_S):
        async with Client(http_server) as again:
            listed = await again.call_tool("list_feedback", {"judge": "tone"})
    assert listed.structured_content is not None
    assert listed.structured_content["total"] == 1


def test_a_bad_setting_prints_its_message_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SERVER), "serve", "--transport", "http", "--port", "99999"],
        cwd=REPO,
        env=clean_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Bad setting server.port: got 99999" in done.stderr
    assert done.stdout == ""


def test_a_missing_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    done = subprocess.run(
        [str(SERVER), "serve", "--config", str(missing)],
        env=clean_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"Bad setting --config: got '{missing}'" in done.stderr


def test_the_path_to_the_handshake_imports_no_heavy_library() -> None:
    # What a client waits for: the command line and the built server. litellm, lancedb and onnxruntime take
    # seconds to import; they must load in the background, after the handshake.
    code = (
        "import sys\n"
        "from memalign_mcp.cli import build_parser\n"
        "from memalign_mcp.app import build_server\n"
        "from memalign_mcp.settings import Settings\n"
        "build_parser().parse_args(['serve'])\n"
        "build_server(Settings())\n"
        "print(sorted(m for m in ('litellm', 'lancedb', 'onnxruntime', 'pyarrow', 'openai') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=REPO
    )
    assert done.stdout.strip() == "[]"
