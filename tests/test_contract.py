"""The agent-facing contract, pinned: tool names, input and output schemas, annotations, resources, prompts.

Clients written by others depend on these, so any change must show up as a reviewed diff of
tests/snapshots/contract.json. After an intended change, regenerate it with

    UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_contract.py

and review the diff before committing. The annotations of CONTRACT.md's table are also asserted directly, so
regenerating the snapshot cannot quietly flip a hint.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from memalign_mcp.app import build_server
from memalign_mcp.settings import Settings

pytestmark = pytest.mark.anyio
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "contract.json"
REGENERATE = "UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_contract.py"

# tool -> (readOnlyHint, destructiveHint, idempotentHint, openWorldHint), as CONTRACT.md's table says.
ANNOTATIONS = {
    "create_judge": (False, False, True, False),
    "list_judges": (True, False, True, False),
    "score_response": (True, False, True, True),
    "add_feedback": (False, False, True, False),
    "remove_feedback": (False, True, True, False),
    "list_guidelines": (True, False, True, False),
    "list_feedback": (True, False, True, False),
    "evaluate_judge": (True, False, True, True),
    "delete_judge": (False, True, False, False),
    "update_judge": (False, False, True, False),
    "distill_pending": (False, False, True, False),
    "judge_history": (True, False, True, False),
    "diff_judge": (True, False, True, False),
    "rollback_judge": (False, True, True, False),
    "add_guideline": (False, False, False, False),
    "review_guideline": (False, True, False, False),
}


@pytest.fixture
def anyio_backend() -> str:
    """The SDK's listing methods are async; asyncio runs them."""
    return "asyncio"


def _never_opened(settings: Settings) -> Any:
    raise AssertionError("listing the contract must not open the engine")


async def current_contract() -> dict[str, Any]:
    """What a client sees of the server, without descriptions (prose may change without a contract change)."""
    server = build_server(Settings(), engine_factory=_never_opened)
    tools = [
        tool.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            include={"name", "title", "input_schema", "output_schema", "annotations"},
        )
        for tool in await server.list_tools()
    ]
    templates = [
        t.model_dump(
            mode="json", by_alias=True, exclude_none=True, include={"uri_template", "name", "mime_type"}
        )
        for t in await server.list_resource_templates()
    ]
    prompts = [
        p.model_dump(mode="json", by_alias=True, exclude_none=True, include={"name", "title", "arguments"})
        for p in await server.list_prompts()
    ]
    return {
        "tools": sorted(tools, key=lambda t: t["name"]),
        "resource_templates": templates,
        "prompts": sorted(prompts, key=lambda p: p["name"]),
    }


def _entries(contract: dict[str, Any]) -> dict[str, str]:
    """Each tool, resource template and prompt as its own JSON text, keyed by kind and name."""
    out: dict[str, str] = {}
    for kind, items in contract.items():
        for item in items:
            key = f"{kind} {item.get('name')}"
            out[key] = json.dumps(item, indent=2, sort_keys=True) + "\n"
    return out


def _diff(expected: dict[str, Any], current: dict[str, Any]) -> str:
    """A unified diff per changed entry, headed by the entry's name, so a change is easy to review."""
    before, after = _entries(expected), _entries(current)
    parts: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            parts.extend(
                difflib.unified_diff(
                    (before.get(key) or "").splitlines(keepends=True),
                    (after.get(key) or "").splitlines(keepends=True),
                    fromfile=f"{key} (reviewed snapshot)" if key in before else "(absent from the snapshot)",
                    tofile=f"{key} (server now)" if key in after else "(gone from the server)",
                )
            )
    return "".join(parts)


async def test_the_contract_matches_the_reviewed_snapshot() -> None:
    current = await current_contract()
    text = json.dumps(current, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text, encoding="utf-8")
    assert SNAPSHOT.is_file(), f"{SNAPSHOT} is missing; create it with: {REGENERATE}"
    expected_text = SNAPSHOT.read_text(encoding="utf-8")
    if text != expected_text:
        pytest.fail(
            "The MCP contract changed. Clients depend on it: if the change is intended, regenerate the "
            f"snapshot with\n\n    {REGENERATE}\n\nand review its diff in the commit.\n\n"
            + (_diff(json.loads(expected_text), current) or "(only the file's formatting differs)"),
            pytrace=False,
        )


async def test_every_tool_of_the_contract_has_its_annotations_a_description_and_an_output_schema() -> None:
    server = build_server(Settings(), engine_factory=_never_opened)
    tools = {tool.name: tool for tool in await server.list_tools()}
    assert set(tools) == set(ANNOTATIONS)
    for name, (read_only, destructive, idempotent, open_world) in ANNOTATIONS.items():
        tool = tools[name]
        hints = tool.annotations
        assert hints is not None, name
        got = (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint, hints.open_world_hint)
        assert got == (read_only, destructive, idempotent, open_world), name
        assert tool.output_schema is not None, name
        assert tool.description, name
        assert "\n" not in tool.description.strip(), name  # one line per paragraph, dedented


async def test_contract_fields_named_in_contract_md_are_in_the_schemas() -> None:
    contract = await current_contract()
    tools = {t["name"]: t for t in contract["tools"]}

    def inputs(tool: str) -> set[str]:
        return set(tools[tool]["inputSchema"]["properties"])

    def outputs(tool: str) -> set[str]:
        return set(tools[tool]["outputSchema"]["properties"])

    assert {"name", "instructions", "feedback_type", "choices", "min_value", "max_value", "model"} <= inputs(
        "create_judge"
    )
    assert "retrieval_k" in inputs("create_judge")
    assert inputs("score_response") == {"judge", "inputs", "outputs", "expectations", "version"}
    assert {"value", "rationale", "judge", "judge_version", "guidelines_used", "examples_used"} <= outputs(
        "score_response"
    )
    assert {"model", "latency_ms", "cost_usd"} <= outputs("score_response")
    assert inputs("add_feedback") == {"judge", "feedback"}
    assert {"judge", "judge_version", "feedback_ids", "guidelines_added", "guidelines_removed"} <= outputs(
        "add_feedback"
    )
    assert "pending_ids" in outputs("add_feedback")
    assert inputs("remove_feedback") == {"judge", "feedback_ids", "purge"}
    assert {"removed_ids", "not_found_ids", "guidelines_removed", "guidelines_revised"} <= outputs(
        "remove_feedback"
    )
    assert inputs("list_feedback") == {"judge", "limit", "offset"}
    assert {"judge", "judge_version", "total", "feedback"} <= outputs("list_feedback")
    assert {"judge", "judge_version", "guidelines"} <= outputs("list_guidelines")
    assert {"judge", "dataset"} <= inputs("evaluate_judge")
    assert inputs("delete_judge") == {"judge"}
    assert inputs("list_judges") == set()
    assert [t["uriTemplate"] for t in contract["resource_templates"]] == ["judge://{name}"]
