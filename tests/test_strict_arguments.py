"""Strict tool arguments through the real protocol: an unknown name is refused, and nothing is coerced.

A misspelt optional argument used to be dropped (a bool judge made where an int one was asked for) and "5" or 1
quietly became 5 or true. Each refusal must name the field in one line and leave nothing stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client
from mcp_types import TextContent

from conftest import hashing_settings
from memalign_mcp.app import build_server

pytestmark = pytest.mark.anyio
INSTRUCTIONS = "Is {{ outputs }} a polite answer to {{ inputs }}?"
FEEDBACK = {"inputs": "Where is my order?", "outputs": "On its way.", "value": True, "rationale": "Helpful."}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One asyncio loop per module, so the module's server and client are shared by its tests."""
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """An MCP client connected in memory to a server whose judges answer from memory."""
    settings = hashing_settings(tmp_path_factory.mktemp("strict"))
    async with Client(build_server(settings)) as connected:
        yield connected


async def ok(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """Call a tool whose arguments must be refused; the error's text, checked to be one line about this tool."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
    assert "\n" not in text
    assert "pydantic" not in text
    assert text.startswith(f"Error executing tool {tool}: ")
    return text


async def judge_names(client: Client) -> set[str]:
    """The judges list_judges shows."""
    return {j["name"] for j in (await ok(client, "list_judges", {}))["judges"]}


async def feedback_total(client: Client, judge: str) -> int:
    """How many feedback items a judge holds."""
    return (await ok(client, "list_feedback", {"judge": judge}))["total"]


async def test_a_misspelt_argument_is_refused_with_the_closest_name_and_no_judge_is_made(
    client: Client,
) -> None:
    text = await refused(
        client, "create_judge", {"name": "typo", "instructions": INSTRUCTIONS, "feedbak_type": "int"}
    )
    assert (
        "Unknown argument 'feedbak_type' for create_judge; did you mean 'feedback_type'? Got 'int';" in text
    )
    assert "Call create_judge again with feedback_type instead." in text
    assert "typo" not in await judge_names(client)


async def test_an_unknown_argument_with_no_close_name_lists_the_known_ones(client: Client) -> None:
    text = await refused(client, "list_feedback", {"judge": "helpfulness", "colour": "red"})
    assert (
        "Unknown argument 'colour' for list_feedback. Got 'red'; expected one of judge, limit, offset."
        in text
    )
    assert "Call list_feedback again without colour." in text


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("list_judges", {"verbose": True}),
        ("score_response", {"judge": "helpfulness", "inputs": "a", "outputs": "b", "expectation": "c"}),
        ("delete_judge", {"judge": "helpfulness", "force": True}),
        ("distill_pending", {"judge": "helpfulness", "now": True}),
        ("judge_history", {"judge": "helpfulness", "limt": 5}),
        ("evaluate_judge", {"judge": "helpfulness", "compare_baselines": True}),
    ],
)
async def test_every_tool_refuses_an_unknown_argument(
    client: Client, tool: str, arguments: dict[str, Any]
) -> None:
    unknown = next(name for name in arguments if name not in {"judge", "inputs", "outputs"})
    assert f"Unknown argument {unknown!r} for {tool}" in await refused(client, tool, arguments)
    assert "helpfulness" in await judge_names(client)  # delete_judge did not run


async def test_an_unknown_field_in_a_feedback_item_is_refused_and_nothing_is_stored(client: Client) -> None:
    await ok(client, "create_judge", {"name": "items", "instructions": INSTRUCTIONS})
    text = await refused(
        client, "add_feedback", {"judge": "items", "feedback": [FEEDBACK, FEEDBACK | {"rationales": "Kind."}]}
    )
    assert "Unknown field 'rationales' in feedback[1] of add_feedback; did you mean 'rationale'?" in text
    assert "Call add_feedback again with feedback[1].rationale instead." in text
    assert await feedback_total(client, "items") == 0


async def test_an_unknown_field_in_a_dataset_example_is_refused(client: Client) -> None:
    example = {"inputs": "a", "outputs": "b", "value": True, "expectation": "c"}
    text = await refused(client, "evaluate_judge", {"judge": "helpfulness", "dataset": [example]})
    assert "Unknown field 'expectation' in dataset[0] of evaluate_judge; did you mean 'expectations'?" in text


@pytest.mark.parametrize("purge", ["yes", 1, "true"])
async def test_purge_must_be_true_or_false(client: Client, purge: Any) -> None:
    await ok(client, "create_judge", {"name": "purged", "instructions": INSTRUCTIONS})
    await ok(client, "add_feedback", {"judge": "purged", "feedback": [FEEDBACK | {"id": "p1"}]})
    text = await refused(
        client, "remove_feedback", {"judge": "purged", "feedback_ids": ["p1"], "purge": purge}
    )
    assert f"Invalid purge: got {purge!r}; expected true or false." in text
    assert await feedback_total(client, "purged") == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        (
            "list_feedback",
            {"judge": "helpfulness", "limit": "5"},
            "Invalid limit: got '5'; expected an integer.",
        ),
        (
            "list_feedback",
            {"judge": "helpfulness", "limit": True},
            "Invalid limit: got True; expected an integer (a boolean is not a number).",
        ),
        (
            "score_response",
            {"judge": "helpfulness", "inputs": "a", "outputs": "b", "version": "3"},
            "Invalid version: got '3'; expected an integer.",
        ),
        (
            "rollback_judge",
            {"judge": "helpfulness", "version": 1.0},
            "Invalid version: got 1.0; expected an integer.",
        ),
    ],
)
async def test_numbers_are_not_coerced(
    client: Client, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    assert expected in await refused(client, tool, arguments)


async def test_a_boolean_is_not_a_number_and_no_judge_is_made(client: Client) -> None:
    arguments = {"name": "bool-min", "instructions": INSTRUCTIONS, "feedback_type": "int", "min_value": True}
    text = await refused(client, "create_judge", arguments)
    assert "Invalid min_value: got True; expected a number (a boolean is not a number)." in text
    assert "bool-min" not in await judge_names(client)


async def test_a_string_argument_must_be_a_string(client: Client) -> None:
    text = await refused(client, "create_judge", {"name": "numbered", "instructions": 5})
    assert "Invalid instructions: got 5; expected a string." in text
    assert "numbered" not in await judge_names(client)


async def test_values_keep_their_json_type_and_the_judge_type_decides(client: Client) -> None:
    await ok(client, "create_judge", {"name": "flags", "instructions": INSTRUCTIONS})
    added = await ok(client, "add_feedback", {"judge": "flags", "feedback": [FEEDBACK | {"value": False}]})
    assert len(added["feedback_ids"]) == 1
    await ok(client, "create_judge", {"name": "stars", "instructions": INSTRUCTIONS, "feedback_type": "int"})
    await ok(client, "add_feedback", {"judge": "stars", "feedback": [FEEDBACK | {"value": 4, "id": "s1"}]})
    assert "value" in await refused_by_engine(client, "stars", True)
    assert "value" in await refused_by_engine(client, "stars", "4")
    page = await ok(client, "list_feedback", {"judge": "stars"})
    assert [item["value"] for item in page["feedback"]] == [4]


async def refused_by_engine(client: Client, judge: str, value: Any) -> str:
    """add_feedback of one item with this value, which the judge's type must refuse; the error's text."""
    result = await client.call_tool(
        "add_feedback", {"judge": judge, "feedback": [FEEDBACK | {"value": value}]}
    )
    assert result.is_error
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def test_judged_text_may_be_a_string_or_an_object(client: Client) -> None:
    await ok(client, "create_judge", {"name": "shapes", "instructions": INSTRUCTIONS})
    await ok(
        client, "score_response", {"judge": "shapes", "inputs": {"question": "Where?"}, "outputs": "Here."}
    )
    await ok(
        client, "score_response", {"judge": "shapes", "inputs": "Where?", "outputs": {"answer": "Here."}}
    )


async def test_a_list_sent_as_a_json_string_is_still_read_as_a_list(client: Client) -> None:
    # Some clients (Claude Desktop among them) send list arguments as JSON text; the SDK's parsing stays for
    # arguments that cannot be strings, while judged text that may be a string is kept as sent.
    await ok(client, "create_judge", {"name": "as-text", "instructions": INSTRUCTIONS})
    added = await ok(client, "add_feedback", {"judge": "as-text", "feedback": json.dumps([FEEDBACK])})
    assert len(added["feedback_ids"]) == 1
    removed = await ok(
        client, "remove_feedback", {"judge": "as-text", "feedback_ids": json.dumps(added["feedback_ids"])}
    )
    assert removed["removed_ids"] == added["feedback_ids"]
