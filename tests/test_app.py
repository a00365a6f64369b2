"""The MCP face through the real protocol: an in-memory MCP client against build_server() on a real LanceDB.

Most tests share one server per module whose judges answer from memory (no model) and embed with the hashing
embedder; each test makes judges of its own names. Tests that need a model use the scripted OpenAI-compatible
server from conftest. Every contract error path is checked to come back as a tool error the agent can act on.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent, TextResourceContents

from conftest import hashing_settings
from mcp_calls import ok, refused, text_of
from memalign_mcp.alignment import MemAlignService
from memalign_mcp.app import build_server, open_default_engine
from memalign_mcp.errors import SettingsError
from memalign_mcp.settings import Settings
from scripted_model import ChatCall, Reply, ScriptedError, ScriptedModelServer
from support_desk_model import POLITE, support_desk

pytestmark = pytest.mark.anyio
SCRIPTED = "openai/scripted"
RUDE = {"inputs": "Where is my order?", "outputs": "Not my problem, look it up yourself.", "value": False}
KIND = {
    "inputs": "Where is my order?",
    "outputs": "It left our warehouse today; here is the link.",
    "value": True,
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One asyncio loop per module, so the module's server and client are shared by its tests."""
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """An MCP client connected in memory to a server whose judges answer from memory."""
    server = build_server(hashing_settings(tmp_path_factory.mktemp("memory")))
    async with Client(server) as connected:
        yield connected


@pytest.fixture(scope="module")
async def model_client(
    tmp_path_factory: pytest.TempPathFactory, model_server: ScriptedModelServer
) -> AsyncIterator[Client]:
    """An MCP client connected in memory to a server whose judges and reflection use the scripted model."""
    settings = hashing_settings(tmp_path_factory.mktemp("model"), model_server)
    async with Client(build_server(settings)) as connected:
        yield connected


async def make_judge(client: Client, name: str, **spec: Any) -> dict[str, Any]:
    """Create a judge over {{ inputs }} and {{ outputs }}."""
    spec.setdefault("instructions", "Is the reply {{ outputs }} to {{ inputs }} polite and helpful?")
    return await ok(client, "create_judge", name=name, **spec)


async def version_of(client: Client, name: str) -> int:
    """A judge's memory version as list_judges reports it."""
    judges = (await ok(client, "list_judges"))["judges"]
    return next(j["memory_version"] for j in judges if j["name"] == name)


# --- judges -------------------------------------------------------------------------------------------------


async def test_create_judge_returns_the_judge_and_is_idempotent_for_an_identical_spec(client: Client) -> None:
    first = await make_judge(client, "idem", feedback_type="int", min_value=1, max_value=5)
    assert first["name"] == "idem"
    assert first["feedback_type"] == "int"
    assert (first["min_value"], first["max_value"]) == (1, 5)
    assert first["effective_model"] == "memory"  # no model configured
    assert first["memory_version"] == 0

    again = await make_judge(client, "idem", feedback_type="int", min_value=1, max_value=5)
    assert again == first


async def test_create_judge_refuses_a_different_spec_under_a_taken_name(client: Client) -> None:
    await make_judge(client, "taken")
    text = await refused(
        client, "create_judge", name="taken", instructions="Is {{ outputs }} short?", feedback_type="bool"
    )
    assert "'taken' already exists with a different instructions" in text
    assert "delete_judge" in text
    judges = (await ok(client, "list_judges"))["judges"]
    kept = next(j for j in judges if j["name"] == "taken")
    assert "polite" in kept["instructions"]


@pytest.mark.parametrize("name", ["Tone", "has space", "-lead", "x" * 65, ""])
async def test_create_judge_refuses_a_bad_name(client: Client, name: str) -> None:
    text = await refused(client, "create_judge", name=name, instructions="Is {{ outputs }} polite?")
    assert f"Invalid name: got {name!r}" in text
    assert "a name matching" in text
    assert name not in {j["name"] for j in (await ok(client, "list_judges"))["judges"]}


async def test_create_judge_refuses_a_template_with_an_unknown_variable(client: Client) -> None:
    text = await refused(
        client, "create_judge", name="unknown-var", instructions="Is {{ outputs }} right for {{ question }}?"
    )
    assert "{{ question }}" in text
    assert "only the template variables {{ inputs }}, {{ outputs }} and {{ expectations }}" in text


async def test_create_judge_refuses_choices_on_a_bool_judge(client: Client) -> None:
    text = await refused(
        client, "create_judge", name="bad-choices", instructions="Is {{ outputs }} ok?", choices=["a", "b"]
    )
    assert "Invalid choices" in text
    assert "categorical" in text


async def test_list_judges_shows_each_judge_with_memory_version_and_counts(client: Client) -> None:
    await make_judge(client, "counted")
    await ok(client, "add_feedback", judge="counted", feedback=[RUDE | {"rationale": "Rude.", "id": "c1"}])
    judges = {j["name"]: j for j in (await ok(client, "list_judges"))["judges"]}
    assert "helpfulness" in judges  # shipped in configs/judges
    counted = judges["counted"]
    assert counted["memory_version"] == 1
    assert (counted["feedback_count"], counted["guideline_count"], counted["pending_count"]) == (1, 0, 1)


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("score_response", {"inputs": "hi", "outputs": "hello"}),
        ("add_feedback", {"feedback": [RUDE | {"rationale": "Rude."}]}),
        ("remove_feedback", {"feedback_ids": ["x"]}),
        ("list_guidelines", {}),
        ("list_feedback", {}),
        ("evaluate_judge", {}),
        ("delete_judge", {}),
    ],
)
async def test_an_unknown_judge_is_a_tool_error_naming_the_known_judges(
    client: Client, tool: str, arguments: dict[str, Any]
) -> None:
    await make_judge(client, "tone")
    text = await refused(client, tool, judge="tonne", **arguments)
    assert "Unknown judge 'tonne'. Known judges: " in text
    assert "helpfulness" in text
    assert "tone" in text
    assert "Call list_judges" in text


async def test_arguments_that_break_the_input_schema_are_a_tool_error(client: Client) -> None:
    await make_judge(client, "schema")
    text = await refused(client, "score_response", judge="schema", inputs="Where is my order?")
    assert "outputs" in text


# --- scoring from memory ------------------------------------------------------------------------------------


async def test_a_memory_judge_abstains_without_feedback_then_follows_it(client: Client) -> None:
    await make_judge(client, "recall")
    empty = await ok(client, "score_response", judge="recall", inputs=RUDE["inputs"], outputs=RUDE["outputs"])
    assert empty["value"] is None  # cannot decide: says so rather than guess
    assert empty["model"] == "memory"
    assert empty["judge_version"] == 0

    added = await ok(
        client,
        "add_feedback",
        judge="recall",
        feedback=[
            RUDE | {"rationale": "Dismissive.", "id": "rude"},
            KIND | {"rationale": "Helpful.", "id": "kind"},
        ],
    )
    scored = await ok(
        client, "score_response", judge="recall", inputs=RUDE["inputs"], outputs=RUDE["outputs"]
    )
    assert scored["value"] is False
    assert scored["examples_used"][0] == "rude"
    assert scored["judge_version"] == added["judge_version"]


async def test_score_response_accepts_json_objects_and_refuses_empty_text(client: Client) -> None:
    await make_judge(client, "objects")
    scored = await ok(
        client, "score_response", judge="objects", inputs={"question": "Hours?"}, outputs={"answer": "9 to 5"}
    )
    assert scored["judge"] == "objects"
    text = await refused(client, "score_response", judge="objects", inputs="Hours?", outputs="  ")
    assert "Invalid outputs" in text
    assert "non-empty" in text


# --- adding and removing feedback ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "good", "bad", "expected"),
    [
        ({}, True, "yes", "a boolean (true or false)"),
        ({"feedback_type": "int", "min_value": 1, "max_value": 5}, 4, 7, "an integer from 1 to 5"),
        ({"feedback_type": "float", "min_value": 0, "max_value": 1}, 0.5, "high", "a number from 0 to 1"),
        ({"feedback_type": "categorical", "choices": ["good", "bad"]}, "good", "meh", "one of 'good', 'bad'"),
    ],
)
async def test_a_value_of_the_wrong_type_is_refused_and_nothing_of_the_call_is_stored(
    client: Client, spec: dict[str, Any], good: Any, bad: Any, expected: str
) -> None:
    name = f"typed-{spec.get('feedback_type', 'bool')}"
    await make_judge(client, name, **spec)
    feedback = [
        {"inputs": "q1", "outputs": "a1", "value": good, "rationale": "Fine."},
        {"inputs": "q2", "outputs": "a2", "value": bad, "rationale": "Not fine."},
    ]
    text = await refused(client, "add_feedback", judge=name, feedback=feedback)
    assert f"Invalid feedback[1].value: got {bad!r}; expected {expected}." in text
    page = await ok(client, "list_feedback", judge=name)
    assert page["total"] == 0  # the good first item was not stored either
    assert page["judge_version"] == 0


async def test_add_feedback_is_idempotent_per_id_and_replaces_changed_content(client: Client) -> None:
    await make_judge(client, "ids")
    item = RUDE | {"rationale": "Dismissive.", "id": "t-1", "source": "support-team"}
    first = await ok(client, "add_feedback", judge="ids", feedback=[item])
    assert first["feedback_ids"] == ["t-1"]
    assert first["pending_ids"] == ["t-1"]  # no reflection model: stored, used as an example, not distilled
    assert "No reflection model" in first["note"]

    again = await ok(client, "add_feedback", judge="ids", feedback=[item])
    assert again["unchanged_ids"] == ["t-1"]
    assert again["judge_version"] == first["judge_version"]

    corrected = await ok(
        client, "add_feedback", judge="ids", feedback=[item | {"rationale": "Rude and curt."}]
    )
    assert corrected["replaced_ids"] == ["t-1"]
    assert corrected["judge_version"] > first["judge_version"]
    page = await ok(client, "list_feedback", judge="ids")
    assert page["total"] == 1
    assert page["feedback"][0]["rationale"] == "Rude and curt."
    assert page["feedback"][0]["source"] == "support-team"


async def test_add_feedback_makes_an_id_when_none_is_given(client: Client) -> None:
    await make_judge(client, "made-ids")
    added = await ok(client, "add_feedback", judge="made-ids", feedback=[KIND | {"rationale": "Clear."}])
    (made,) = added["feedback_ids"]
    assert made.startswith("fb-")
    page = await ok(client, "list_feedback", judge="made-ids")
    assert [f["id"] for f in page["feedback"]] == [made]


async def test_remove_feedback_forgets_items_and_reports_ids_it_did_not_have(client: Client) -> None:
    await make_judge(client, "forget")
    items = [RUDE | {"rationale": "Rude.", "id": "f-1"}, KIND | {"rationale": "Kind.", "id": "f-2"}]
    added = await ok(client, "add_feedback", judge="forget", feedback=items)

    removed = await ok(client, "remove_feedback", judge="forget", feedback_ids=["f-1", "nope"])
    assert removed["removed_ids"] == ["f-1"]
    assert removed["not_found_ids"] == ["nope"]
    assert removed["purged"] is False
    assert removed["judge_version"] == added["judge_version"] + 1
    page = await ok(client, "list_feedback", judge="forget")
    assert [f["id"] for f in page["feedback"]] == ["f-2"]

    again = await ok(client, "remove_feedback", judge="forget", feedback_ids=["f-1"])
    assert again["removed_ids"] == []
    assert again["not_found_ids"] == ["f-1"]
    assert again["judge_version"] == removed["judge_version"]  # idempotent: nothing changed


async def test_remove_feedback_with_purge_says_the_text_is_erased(client: Client) -> None:
    await make_judge(client, "purged")
    await ok(client, "add_feedback", judge="purged", feedback=[RUDE | {"rationale": "Rude.", "id": "p-1"}])
    removed = await ok(client, "remove_feedback", judge="purged", feedback_ids=["p-1"], purge=True)
    assert removed["removed_ids"] == ["p-1"]
    assert removed["purged"] is True


async def test_history_diff_rollback_and_scoring_an_old_version_over_mcp(client: Client) -> None:
    await make_judge(client, "history")
    items = [RUDE | {"rationale": "Rude.", "id": "h-1"}, KIND | {"rationale": "Kind.", "id": "h-2"}]
    added = await ok(client, "add_feedback", judge="history", feedback=items)
    removed = await ok(client, "remove_feedback", judge="history", feedback_ids=["h-1"])
    history = await ok(client, "judge_history", judge="history", limit=2)
    assert [v["version"] for v in history["versions"]] == [removed["judge_version"], added["judge_version"]]
    assert history["versions"][0]["summary"]["feedback_removed"] == ["h-1"]
    assert history["versions"][1]["summary"]["feedback_added"] == ["h-1", "h-2"]
    diff = await ok(
        client,
        "diff_judge",
        judge="history",
        from_version=added["judge_version"],
        to_version=removed["judge_version"],
    )
    assert diff["feedback_removed"] == ["h-1"]
    response = {"inputs": RUDE["inputs"], "outputs": RUDE["outputs"]}  # a verdict is no argument of a score
    then = await ok(client, "score_response", judge="history", version=added["judge_version"], **response)
    assert "h-1" in then["examples_used"]
    assert then["judge_version"] == added["judge_version"]
    rolled = await ok(client, "rollback_judge", judge="history", version=added["judge_version"])
    assert rolled["judge_version"] == removed["judge_version"] + 1
    page = await ok(client, "list_feedback", judge="history")
    assert sorted(f["id"] for f in page["feedback"]) == ["h-1", "h-2"]
    too_new = await refused(client, "score_response", judge="history", version=99, **response)
    assert "version" in too_new
    assert "99" in too_new


async def test_remove_feedback_refuses_an_empty_list(client: Client) -> None:
    await make_judge(client, "empty-ids")
    text = await refused(client, "remove_feedback", judge="empty-ids", feedback_ids=[])
    assert "Invalid feedback_ids" in text
    assert "non-empty list" in text


async def test_list_feedback_pages_oldest_first_and_refuses_a_bad_limit(client: Client) -> None:
    await make_judge(client, "paged")
    for i in range(3):  # one call each, so created_at orders them
        item = {"inputs": f"q{i}", "outputs": f"a{i}", "value": True, "rationale": "Fine.", "id": f"p{i}"}
        await ok(client, "add_feedback", judge="paged", feedback=[item])
    first = await ok(client, "list_feedback", judge="paged", limit=2)
    assert first["total"] == 3
    assert [f["id"] for f in first["feedback"]] == ["p0", "p1"]
    rest = await ok(client, "list_feedback", judge="paged", limit=2, offset=2)
    assert [f["id"] for f in rest["feedback"]] == ["p2"]
    assert rest["feedback"][0]["inputs"] == "q2"
    text = await refused(client, "list_feedback", judge="paged", limit=0)
    assert "Invalid limit: got 0; expected an integer from 1 to 500." in text


async def test_list_guidelines_of_a_judge_without_a_reflection_model_is_empty(client: Client) -> None:
    await make_judge(client, "no-rules")
    await ok(client, "add_feedback", judge="no-rules", feedback=[RUDE | {"rationale": "Rude."}])
    listed = await ok(client, "list_guidelines", judge="no-rules")
    assert listed == {"judge": "no-rules", "judge_version": 1, "guidelines": []}


# --- evaluation and deletion ---------------------------------------------------------------------------------


async def test_evaluate_judge_leave_one_out_and_on_a_dataset_with_progress(client: Client) -> None:
    await make_judge(client, "graded")
    items = [
        {
            "inputs": f"Where is order {i}?",
            "outputs": f"Order {i} ships today.",
            "value": True,
            "rationale": "Ok.",
        }
        for i in range(3)
    ]
    await ok(client, "add_feedback", judge="graded", feedback=items)
    reported: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    result = await client.call_tool("evaluate_judge", {"judge": "graded"}, progress_callback=on_progress)
    assert not result.is_error, text_of(result)
    report = result.structured_content
    assert report is not None
    assert (report["mode"], report["n_items"], report["model"]) == ("leave-one-out", 3, "memory")
    assert reported[-1][:2] == (3, 3)

    dataset = [{"inputs": "Where is order 1?", "outputs": "Order 1 ships today.", "value": True}]
    on_data = await ok(client, "evaluate_judge", judge="graded", dataset=dataset, compare_baseline=True)
    assert (on_data["mode"], on_data["n_items"]) == ("dataset", 1)
    assert on_data["items"][0]["aligned"] is True
    assert on_data["baseline"] is not None

    text = await refused(client, "evaluate_judge", judge="graded", dataset=[dataset[0] | {"value": "yes"}])
    assert "Invalid dataset[0].value: got 'yes'" in text


async def test_delete_judge_removes_the_judge_and_its_memory(client: Client) -> None:
    await make_judge(client, "doomed")
    await ok(client, "add_feedback", judge="doomed", feedback=[RUDE | {"rationale": "Rude."}])
    deleted = await ok(client, "delete_judge", judge="doomed")
    assert deleted == {"judge": "doomed", "deleted": True, "feedback_deleted": 1, "guidelines_deleted": 0}
    assert "doomed" not in {j["name"] for j in (await ok(client, "list_judges"))["judges"]}
    text = await refused(client, "delete_judge", judge="doomed")
    assert "Unknown judge 'doomed'" in text


# --- resource and prompts ------------------------------------------------------------------------------------


async def test_the_judge_resource_shows_its_spec_and_instructions(client: Client) -> None:
    await make_judge(client, "documented", feedback_type="int", min_value=1, max_value=5)
    templates = (await client.list_resource_templates()).resource_templates
    assert [t.uri_template for t in templates] == ["judge://{name}"]
    read = await client.read_resource("judge://documented")
    (content,) = read.contents
    assert isinstance(content, TextResourceContents)
    assert "name: documented" in content.text
    assert "feedback_type: int" in content.text
    assert "Is the reply {{ outputs }} to {{ inputs }} polite and helpful?" in content.text


async def test_reading_an_unknown_judge_resource_is_an_error_naming_the_known_judges(client: Client) -> None:
    with pytest.raises(MCPError, match=r"Unknown judge 'ghost'\. Known judges: .*helpfulness"):
        await client.read_resource("judge://ghost")


async def test_the_self_check_prompt_walks_an_agent_through_score_revise_rescore(client: Client) -> None:
    prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {"self_check", "review_guidelines"}
    got = await client.get_prompt("self_check", {"judge": "helpfulness"})
    (message,) = got.messages
    assert isinstance(message.content, TextContent)
    text = message.content.text
    assert "score_response with judge='helpfulness'" in text
    assert "rationale" in text
    assert "again" in text
    custom = await client.get_prompt("self_check", {"judge": "helpfulness", "passing": "value >= 4"})
    assert isinstance(custom.messages[0].content, TextContent)
    assert "Passing means: value >= 4" in custom.messages[0].content.text


async def test_the_review_prompt_walks_an_operator_through_guidelines_and_forgetting(client: Client) -> None:
    got = await client.get_prompt("review_guidelines", {"judge": "helpfulness"})
    assert isinstance(got.messages[0].content, TextContent)
    text = got.messages[0].content.text
    steps = ("list_guidelines", "list_feedback", "remove_feedback", "purge=true", "review_guideline")
    for step in (*steps, "judge://helpfulness"):
        assert step in text


# --- start-up: the engine opens in the background -------------------------------------------------------------


async def test_tools_are_listed_before_the_engine_is_open_and_wait_for_it(tmp_path: Path) -> None:
    release = threading.Event()
    opened: list[MemAlignService] = []

    def slow_engine(settings: Settings) -> MemAlignService:
        # Bounded, so a broken test fails rather than hangs.
        assert release.wait(timeout=30), "the test never released the engine"
        engine = open_default_engine(settings)
        opened.append(engine)
        return engine

    server = build_server(hashing_settings(tmp_path), engine_factory=slow_engine)
    async with Client(server) as connected:
        with anyio.fail_after(20):
            tools = await connected.list_tools()  # answered while the engine is still closed
        assert len(tools.tools) == 16
        assert opened == []
        release.set()
        judges = await ok(connected, "list_judges")  # waits for the engine, then answers
        assert "helpfulness" in {j["name"] for j in judges["judges"]}
    assert len(opened) == 1  # opened once for the whole run


async def test_an_engine_that_cannot_open_makes_every_call_an_error_saying_why(tmp_path: Path) -> None:
    def broken(settings: Settings) -> MemAlignService:
        raise SettingsError("judge file judges/x.toml", "x.toml", "a valid judge spec")

    async with Client(build_server(hashing_settings(tmp_path), engine_factory=broken)) as connected:
        assert len((await connected.list_tools()).tools) == 16
        for _ in range(2):  # the failure is reported on every call, not only the first
            text = await refused(connected, "list_judges")
            assert "The judge engine could not start: Bad setting judge file judges/x.toml" in text
            assert "restart the server" in text
        with pytest.raises(MCPError, match="could not start"):
            await connected.read_resource("judge://helpfulness")


# --- with a model ---------------------------------------------------------------------------------------------


async def test_add_feedback_reports_progress_and_distils_guidelines_that_cite_their_sources(
    model_client: Client, model: ScriptedModelServer
) -> None:
    await make_judge(model_client, "support")
    reported: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    feedback = [
        RUDE | {"rationale": "The reply is rude and dismissive.", "id": "r-1"},
        KIND | {"rationale": "Direct and accurate.", "id": "k-1"},
    ]
    result = await model_client.call_tool(
        "add_feedback", {"judge": "support", "feedback": feedback}, progress_callback=on_progress
    )
    assert not result.is_error, text_of(result)
    added = result.structured_content
    assert added is not None
    assert reported == [(0, 1, "distilling 2 items in 1 batch"), (1, 1, "distilled batch 1 of 1")]
    assert added["pending_ids"] == []
    polite = next(g for g in added["guidelines_added"] if g["text"] == POLITE)
    assert polite["source_feedback_ids"] == ["r-1"]

    listed = await ok(model_client, "list_guidelines", judge="support")
    assert polite | {"provenance": None} in listed["guidelines"]
    assert listed["judge_version"] == added["judge_version"]
    read = await model_client.read_resource("judge://support")
    content = read.contents[0]
    assert isinstance(content, TextResourceContents)
    assert f"Distilled Guidelines ({len(listed['guidelines'])})" in content.text
    assert POLITE in content.text

    scored = await ok(model_client, "score_response", judge="support", inputs="Refund?", outputs="meh")
    assert scored["value"] is False
    assert scored["model"] == SCRIPTED
    assert polite["id"] in scored["guidelines_used"]
    assert POLITE in model.calls[-1].prompt_text()  # the guideline reached the judge's prompt

    removed = await ok(model_client, "remove_feedback", judge="support", feedback_ids=["r-1"])
    assert [g["text"] for g in removed["guidelines_removed"]] == [POLITE]
    after = await ok(model_client, "list_guidelines", judge="support")
    assert POLITE not in [g["text"] for g in after["guidelines"]]


def _fail_judgements(reply: Reply) -> Any:
    def script(call: ChatCall) -> Reply:
        return reply if call.schema_name == "judgement" else support_desk(call)

    return script


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (ScriptedError(500, "the model is down"), "the model is down"),
        ("this is not JSON", "gave no usable answer in 2 tries"),
    ],
)
async def test_a_failing_model_is_a_tool_error_never_a_made_up_score(
    model_client: Client, model: ScriptedModelServer, reply: Reply, expected: str
) -> None:
    await make_judge(model_client, "flaky")
    model.reset(_fail_judgements(reply))
    text = await refused(model_client, "score_response", judge="flaky", inputs="Refund?", outputs="Sure.")
    assert expected in text
    assert SCRIPTED in text
    assert model.calls  # the model was really asked


async def test_a_reply_outside_the_judges_type_is_a_tool_error(
    model_client: Client, model: ScriptedModelServer
) -> None:
    await make_judge(model_client, "scale", feedback_type="int", min_value=1, max_value=5)
    model.reset(_fail_judgements({"rationale": "Great.", "value": 9}))
    text = await refused(model_client, "score_response", judge="scale", inputs="Refund?", outputs="Sure.")
    assert "gave no usable answer" in text
    assert len(model.calls) == 2  # retried once, then refused


async def test_judged_text_that_is_json_in_a_string_reaches_the_model_as_sent(
    model_client: Client, model: ScriptedModelServer
) -> None:
    await make_judge(model_client, "verbatim")
    sent = '{"answer":"Sure, here is your refund."}'
    await ok(model_client, "score_response", judge="verbatim", inputs="Refund?", outputs=sent)
    assert sent in model.calls[-1].prompt_text()  # not parsed into an object and re-indented
