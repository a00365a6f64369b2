"""What tools/list costs an agent: compact schemas that still describe every field, under a size budget."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mcp_types import ListToolsResult
from pydantic import BaseModel, Field

from memalign_mcp.app import build_server
from memalign_mcp.settings import Settings
from memalign_mcp.tool_schemas import compact_schema

pytestmark = pytest.mark.anyio
# tools/list is read into the context of every conversation; BENCHMARKS.md has the figures and the command.
BUDGET_BYTES = 16 * 1024


@pytest.fixture
def anyio_backend() -> str:
    """The SDK's listing methods are async; asyncio runs them."""
    return "asyncio"


def _never_opened(settings: Settings) -> Any:
    raise AssertionError("listing tools must not open the engine")


async def test_tools_list_fits_the_budget() -> None:
    server = build_server(Settings(), engine_factory=_never_opened)
    wire = ListToolsResult(tools=await server.list_tools()).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    size = len(json.dumps(wire, separators=(",", ":")).encode("utf-8"))
    assert size < BUDGET_BYTES, (
        f"tools/list is {size} bytes; trim descriptions (see benchmarks/tools_list_size.py)"
    )


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
