"""Size of the `tools/list` answer: what every agent pays in context before it calls a single tool.

Builds the server as `memalign-mcp serve` does (the engine is never opened), serialises the tools/list result
the way the SDK puts it on the wire (compact JSON, aliases, no nulls) and prints its size in bytes, in total
and per tool, split into description, input schema and output schema. Run from the repository root:

    .venv/bin/python benchmarks/tools_list_size.py
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from mcp_types import ListToolsResult

from memalign_mcp.app import build_server
from memalign_mcp.settings import Settings

BUDGET_BYTES = 16 * 1024


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _never_opened(_settings: Settings) -> Any:
    raise AssertionError("measuring tools/list must not open the engine")


async def measure() -> tuple[int, list[tuple[str, int, int, int, int]]]:
    """The total size of tools/list and, per tool, (name, total, description, input schema, output schema)."""
    server = build_server(Settings(), engine_factory=_never_opened)
    result = ListToolsResult(tools=await server.list_tools())
    wire = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    rows = [
        (
            tool["name"],
            _size(tool),
            _size(tool.get("description", "")),
            _size(tool.get("inputSchema", {})),
            _size(tool.get("outputSchema", {})),
        )
        for tool in wire["tools"]
    ]
    return _size(wire), rows


def main() -> None:
    """Print the sizes as Markdown for BENCHMARKS.md."""
    total, rows = anyio.run(measure)
    print(
        f"tools/list: {total} bytes ({total / 1024:.1f} KiB) for {len(rows)} tools; budget {BUDGET_BYTES} bytes"
    )
    print("\n| tool | total | description | input schema | output schema |\n|---|---|---|---|---|")
    for name, size, description, inputs, outputs in sorted(rows, key=lambda r: -r[1]):
        print(f"| {name} | {size} | {description} | {inputs} | {outputs} |")


if __name__ == "__main__":
    main()
