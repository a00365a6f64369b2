"""Arguments that do not fit a tool's schema, through the real protocol: one line naming the field, no pydantic dump.

The SDK validates arguments before our tool code runs; what an agent reads must still say which field was wrong,
what it got, what was expected and what to do, like the engine's own errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client
from mcp_types import TextContent

from conftest import hashing_settings
from memalign_mcp.app import build_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One asyncio loop per module, so the module's server and client are shared by its tests."""
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """An MCP client connected in memory to a server whose judges answer from memory."""
    settings = hashing_settings(tmp_path_factory.mktemp("args"))
    async with Client(build_server(settings)) as connected:
        yield connected


async def refused(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """Call a tool whose arguments must be refused; the error's text, checked to be one plain line."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
    assert "\n" not in text
    assert "pydantic" not in text  # neither the error URL nor the dump
    assert "validation error" not in text
    return text


FEEDBACK = {"inputs": "Where is my order?", "outputs": "On its way.", "value": True, "rationale": "Helpful."}


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        (
            "score_response",
            {"inputs": "hi", "outputs": "hello"},
            "Invalid judge: got nothing; expected a value (it is required). "
            "Call score_response again with judge set.",
        ),
        (
            "list_feedback",
            {"judge": "helpfulness", "limit": "ten"},
            "Invalid limit: got 'ten'; expected an integer. Call list_feedback again with limit corrected",
        ),
        (
            "score_response",
            {"judge": "helpfulness", "inputs": ["a", "list"], "outputs": "hello"},
            "Invalid inputs: got ['a', 'list']; expected a string or a JSON object.",
        ),
        (
            "create_judge",
            {"name": "tone", "instructions": "Is {{ outputs }} polite?", "feedback_type": "boolean"},
            "Invalid feedback_type: got 'boolean'; expected one of 'bool', 'int', 'float', 'categorical' or 'text'.",
        ),
        (
            "add_feedback",
            {"judge": "helpfulness", "feedback": [FEEDBACK, FEEDBACK | {"rationale": None}]},
            "Invalid feedback[1].rationale: got None; expected a string.",
        ),
        (
            "add_feedback",
            {"judge": "helpfulness", "feedback": [FEEDBACK | {"label": "good"}]},
            "Unknown field 'label' in feedback[0] of add_feedback. Got 'good'; expected one of inputs, outputs, "
            "value, rationale, expectations, source, id. Call add_feedback again without feedback[0].label.",
        ),
        (
            "remove_feedback",
            {"judge": "helpfulness", "feedback_ids": "sweater"},
            "Invalid feedback_ids: got 'sweater'; expected a list.",
        ),
    ],
)
async def test_an_argument_that_does_not_fit_the_schema_is_named_with_its_value_and_type(
    client: Client, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    text = await refused(client, tool, arguments)
    assert text.startswith(f"Error executing tool {tool}: ")
    assert expected in text


async def test_nothing_is_stored_when_an_item_does_not_fit(client: Client) -> None:
    await refused(client, "add_feedback", {"judge": "helpfulness", "feedback": [FEEDBACK, {"inputs": "x"}]})
    page = await client.call_tool("list_feedback", {"judge": "helpfulness"})
    assert page.structured_content is not None
    assert page.structured_content["total"] == 0


async def test_several_wrong_fields_are_counted_after_the_first(client: Client) -> None:
    text = await refused(client, "score_response", {"judge": 1, "inputs": 2.5})
    assert "Invalid judge: got 1; expected a string." in text
    assert "(2 more field(s) are invalid too.)" in text  # inputs is wrong, outputs is missing
