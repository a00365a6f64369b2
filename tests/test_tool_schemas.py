"""What tools/list costs an agent: compact schemas that still describe every field, under a size budget."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from mcp_types import ListToolsResult
from pydantic import BaseModel, Field

from memalign_mcp.app import build_server
from memalign_mcp.settings import Settings
from memalign_mcp.tool_schemas import compact_schema

pytestmark = pytest.mark.anyio
# tools/list is read into the context of every conversation; BENCHMARKS.md has the figures and the command.
# The contract's nine tools fit 16 KiB; the five history and update tools of 0.2 add about 8 KB of mostly
# output-schema structure, so all fourteen, and since the two review tools all sixteen, are held to 24 KiB (a
# scoped token lists fewer).
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
}
BUDGET_BYTES = 16 * 1024
ALL_TOOLS_BUDGET_BYTES = 24 * 1024


@pytest.fixture
def anyio_backend() -> str:
    """The SDK's listing methods are async; asyncio runs them."""
    return "asyncio"


def _never_opened(settings: Settings) -> Any:
    raise AssertionError("listing tools must not open the engine")


async def test_tools_list_fits_the_budget() -> None:
    server = build_server(Settings(), engine_factory=_never_opened)
    tools = await server.list_tools()

    def size(listed: list[Any]) -> int:
        wire = ListToolsResult(tools=listed).model_dump(mode="json", by_alias=True, exclude_none=True)
        return len(json.dumps(wire, separators=(",", ":")).encode("utf-8"))

    contract = size([t for t in tools if t.name in CONTRACT_TOOLS])
    assert contract < BUDGET_BYTES, (
        f"the contract's tools list {contract} bytes; trim descriptions (see benchmarks/tools_list_size.py)"
    )
    assert size(tools) < ALL_TOOLS_BUDGET_BYTES


class _Page(BaseModel):
    """A result whose fields are named like JSON Schema keywords."""

    title: str = Field(description="A field named title.")
    default: int | None = None
    description: str | None = None


def test_fields_named_like_schema_keywords_are_kept() -> None:
    schema = compact_schema(_Page.model_json_schema(), output=True)
    assert set(schema["properties"]) == {"title", "default", "description"}
    assert schema["properties"]["default"] == {"type": ["integer", "null"]}
    assert "title" not in schema["properties"]["title"]  # the generated title of a field goes, not the field


def test_a_compact_output_schema_accepts_and_refuses_what_the_full_one_does() -> None:
    full = _Page.model_json_schema()
    compact = compact_schema(full, output=True)
    for instance in ({"title": "t", "default": None}, {"title": "t", "default": 3, "description": "d"}):
        assert Draft202012Validator(compact).is_valid(instance)
        assert Draft202012Validator(full).is_valid(instance)
    for instance in ({"default": 3}, {"title": 1}, {"title": "t", "default": "three"}):
        assert not Draft202012Validator(compact).is_valid(instance)
        assert not Draft202012Validator(full).is_valid(instance)


def test_input_schemas_keep_field_descriptions_and_meaningful_defaults() -> None:
    class _Args(BaseModel):
        limit: int = Field(default=50, description="Items per page.")
        judge: str | None = Field(default=None, description="Judge name.")

    schema = compact_schema(_Args.model_json_schema(), output=False)
    assert schema["properties"]["limit"] == {
        "default": 50,
        "description": "Items per page.",
        "type": "integer",
    }
    assert schema["properties"]["judge"] == {"description": "Judge name.", "type": ["string", "null"]}


class _Reviewed(BaseModel):
    """A result with a string enum and a nullable list, the two shapes folded further."""

    status: Literal["active", "proposed"]
    tags: list[str] | None = None


def test_an_enum_and_a_nullable_list_fold_and_still_accept_and_refuse_the_same() -> None:
    full = _Reviewed.model_json_schema()
    compact = compact_schema(full, output=True)
    assert compact["properties"] == {
        "status": {"enum": ["active", "proposed"]},
        "tags": {"items": {"type": "string"}, "type": ["array", "null"]},
    }
    for instance in (
        {"status": "active"},
        {"status": "proposed", "tags": ["a"]},
        {"status": "active", "tags": None},
    ):
        assert Draft202012Validator(compact).is_valid(instance)
        assert Draft202012Validator(full).is_valid(instance)
    for instance in (
        {"status": "gone"},
        {"status": 1},
        {"status": "active", "tags": [1]},
        {"status": "active", "tags": "a"},
    ):
        assert not Draft202012Validator(compact).is_valid(instance)
        assert not Draft202012Validator(full).is_valid(instance)
