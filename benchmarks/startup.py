"""Start-up latency of the MCP server: from spawning `memalign-mcp serve` to the answer to tools/list.

A real MCP client (the SDK's stdio client) spawns the server N times, each on a fresh data directory, and
times process start, handshake and tools/list together. It also times the first tool call (list_judges),
which waits for the engine that opens in the background. Median and spread go out as Markdown table rows
for BENCHMARKS.md. Run from the repository root:

    .venv/bin/python benchmarks/startup.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
SERVER = Path(sys.executable).with_name("memalign-mcp")


def _environment(data_dir: str, embedding: str) -> dict[str, str]:
    """The server's environment: the parent's, with a private store and nothing that reaches a network."""
    env = dict(os.environ)
    env.update(
        {
            "MEMALIGN_DATA_DIR": data_dir,
            "MEMALIGN_EMBEDDING_MODEL": embedding,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


async def one_run(embedding: str) -> tuple[float, float, int]:
    """Seconds from spawn to the tools/list answer and to the first tool's answer; how many tools it listed."""
    with tempfile.TemporaryDirectory(prefix="memalign-startup-") as data_dir:
        params = StdioServerParameters(
            command=str(SERVER),
            args=["serve", "--log-level", "WARNING"],
            env=_environment(data_dir, embedding),
            cwd=str(REPO),
        )
        started = time.perf_counter()
        async with Client(params) as client:
            tools = await client.list_tools()
            listed = time.perf_counter() - started
            judges = await client.call_tool("list_judges", {})
            answered = time.perf_counter() - started
            if judges.is_error:
                raise SystemExit(f"list_judges failed: {judges.content}")
        return listed, answered, len(tools.tools)


async def measure(runs: int, embedding: str) -> tuple[list[float], list[float]]:
    """Time `runs` start-ups after one unrecorded warm-up (which fills the OS file cache)."""
    await one_run(embedding)
    listed: list[float] = []
    answered: list[float] = []
    for _ in range(runs):
        to_list, to_answer, n_tools = await one_run(embedding)
        if n_tools == 0:
            raise SystemExit("the server listed no tools")
        listed.append(to_list)
        answered.append(to_answer)
    return listed, answered


def row(what: str, seconds: list[float], command: str, machine: str) -> str:
    """One Markdown table row: median, min and max in milliseconds."""
    ms = sorted(t * 1000 for t in seconds)
    return (
        f"| {what} | {statistics.median(ms):.0f} ms | {ms[0]:.0f} ms | {ms[-1]:.0f} ms | {len(ms)} "
        f"| `{command}` | {date.today()} | {machine} |"
    )


def main() -> None:
    """Measure and print one Markdown table row."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="timed start-ups (default 15)")
    parser.add_argument(
        "--embedding", default="local", help="MEMALIGN_EMBEDDING_MODEL of the server (default: local)"
    )
    args = parser.parse_args()
    if not SERVER.exists():
        raise SystemExit(f"{SERVER} not found: run `make install` first")
    listed, answered = anyio.run(measure, args.runs, args.embedding)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    command = f".venv/bin/python benchmarks/startup.py --runs {args.runs} --embedding {args.embedding}"
    print("| benchmark | median | min | max | runs | command | date | machine |")
    print("|---|---|---|---|---|---|---|---|")
    print(row("stdio: spawn -> tools/list answered", listed, command, machine))
    print(
        row(
            f"stdio: spawn -> first tool answered (engine open, {args.embedding} embedder)",
            answered,
            command,
            machine,
        )
    )


if __name__ == "__main__":
    main()
