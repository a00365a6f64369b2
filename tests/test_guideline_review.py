"""Guideline review through the real MCP protocol: proposed guidelines stay out of scoring until an operator
approves them; reject, edit and hand-written guidelines are versioned changes like any other; forgetting treats
proposed guidelines as it treats active ones; and a failure during a review changes nothing.

The model is the scripted support-desk server (it records every prompt), the store a real LanceDB per module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import TextResourceContents

from conftest import hashing_settings
from mcp_calls import ok, refused
from memalign_mcp.app import build_server
from memalign_mcp.errors import GuidelineNotFoundError, InvalidInputError
from memalign_mcp.seed_scenario import ALIGNMENT, JUDGE
from scripted_model import ScriptedModelServer
from store_worker import open_worker_engine
from support_desk_model import DIRECT, POLITE

pytestmark = pytest.mark.anyio
INSTRUCTIONS = "Is the reply {{ outputs }} to {{ inputs }} polite and helpful?"


def rude(item_id: str) -> dict[str, Any]:
    """A rude reply with a rationale the support-desk model distils into POLITE."""
    return {
        "id": item_id,
        "inputs": f"Where is my order? ({item_id})",
        "outputs": "Not my problem, look it up yourself.",
        "value": False,
        "rationale": "The reply is rude and dismissive.",
    }


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One asyncio loop per module, so the module's server and client are shared by its tests."""
    return "asyncio"


@pytest.fixture(scope="module")
async def client(
    tmp_path_factory: pytest.TempPathFactory, model_server: ScriptedModelServer
) -> AsyncIterator[Client]:
    """An MCP client connected in memory to a server whose judges and reflection use the scripted model."""
    settings = hashing_settings(tmp_path_factory.mktemp("review"), model_server)
    async with Client(build_server(settings)) as connected:
        yield connected


async def taught_reviewed_judge(client: Client, name: str, *items: dict[str, Any]) -> dict[str, Any]:
    """A judge with review_guidelines that was taught these items; its only guideline (POLITE), proposed."""
    made = await ok(client, "create_judge", name=name, instructions=INSTRUCTIONS, review_guidelines=True)
    assert made["review_guidelines"] is True
    added = await ok(client, "add_feedback", judge=name, feedback=list(items or [rude("r-1")]))
    (polite,) = added["guidelines_added"]
    assert (polite["text"], polite["status"]) == (POLITE, "proposed")
    return polite


async def scored_prompt(client: Client, model: ScriptedModelServer, judge: str) -> tuple[list[str], str]:
    """Score a polite reply; the guideline ids the result names and the prompt the model was shown."""
    model.calls.clear()
    scored = await ok(client, "score_response", judge=judge, inputs="Refund?", outputs="Here is how.")
    (call,) = [c for c in model.calls if c.schema_name == "judgement"]
    return scored["guidelines_used"], call.prompt_text()


async def document(client: Client, judge: str) -> str:
    """The resource judge://{judge}."""
    content = (await client.read_resource(f"judge://{judge}")).contents[0]
    assert isinstance(content, TextResourceContents)
    return content.text


async def test_a_proposed_guideline_is_not_used_until_approved(
    client: Client, model: ScriptedModelServer
) -> None:
    polite = await taught_reviewed_judge(client, "reviewed")
    listed = await ok(client, "list_guidelines", judge="reviewed")
    assert [(g["id"], g["status"]) for g in listed["guidelines"]] == [(polite["id"], "proposed")]
    used, prompt = await scored_prompt(client, model, "reviewed")
    assert used == []
    assert POLITE not in prompt
    shown = await document(client, "reviewed")
    assert "Distilled Guidelines" not in shown
    assert "review_guidelines: True" in shown
    assert (
        f"Proposed Guidelines (1), not used in scoring until approved:\n- [{polite['id']}] {POLITE}" in shown
    )
    before = listed["judge_version"]

    approved = await ok(
        client, "review_guideline", judge="reviewed", guideline_id=polite["id"], action="approve"
    )
    assert (approved["status"], approved["removed"], approved["judge_version"]) == (
        "active",
        False,
        before + 1,
    )
    used, prompt = await scored_prompt(client, model, "reviewed")
    assert used == [polite["id"]]
    assert POLITE in prompt
    assert "Distilled Guidelines (1)" in await document(client, "reviewed")
    again = await ok(
        client, "review_guideline", judge="reviewed", guideline_id=polite["id"], action="approve"
    )
    assert again["judge_version"] == before + 1  # approving an active guideline changes nothing

    history = await ok(client, "judge_history", judge="reviewed", limit=1)
    (latest,) = history["versions"]
    assert latest["change"] == "review"
    assert latest["summary"]["guidelines_revised"] == [polite["id"]]
    diff = await ok(client, "diff_judge", judge="reviewed", from_version=before, to_version=before + 1)
    assert [(g["id"], g["status"]) for g in diff["guidelines_changed"]] == [(polite["id"], "active")]
    await ok(client, "rollback_judge", judge="reviewed", version=before)
    listed = await ok(client, "list_guidelines", judge="reviewed")
    assert [g["status"] for g in listed["guidelines"]] == ["proposed"]
    used, prompt = await scored_prompt(client, model, "reviewed")
    assert used == []
    assert POLITE not in prompt


async def test_reject_removes_a_guideline_and_records_it(client: Client) -> None:
    polite = await taught_reviewed_judge(client, "rejecting")
    rejected = await ok(
        client, "review_guideline", judge="rejecting", guideline_id=polite["id"], action="reject"
    )
    assert (rejected["id"], rejected["removed"]) == (polite["id"], True)
    assert (await ok(client, "list_guidelines", judge="rejecting"))["guidelines"] == []
    (latest,) = (await ok(client, "judge_history", judge="rejecting", limit=1))["versions"]
    assert latest["summary"]["guidelines_removed"] == [polite["id"]]
    text = await refused(
        client, "review_guideline", judge="rejecting", guideline_id=polite["id"], action="reject"
    )
    assert f"Unknown guideline {polite['id']!r} of judge 'rejecting'" in text
    assert "list_guidelines" in text


async def test_edit_rewrites_keeps_sources_and_puts_it_in_use(
    client: Client, model: ScriptedModelServer
) -> None:
    polite = await taught_reviewed_judge(client, "editing")
    rule = "Never brush a customer off;\n  answer their question politely."
    edited = await ok(
        client, "review_guideline", judge="editing", guideline_id=polite["id"], action="edit", text=rule
    )
    flat = "Never brush a customer off; answer their question politely."
    assert (edited["text"], edited["status"]) == (flat, "active")
    assert edited["source_feedback_ids"] == ["r-1"]
    used, prompt = await scored_prompt(client, model, "editing")
    assert used == [polite["id"]]
    assert flat in prompt
    assert POLITE not in prompt


async def test_an_operator_guideline_is_active_at_once_and_survives_forgetting(
    client: Client, model: ScriptedModelServer
) -> None:
    await taught_reviewed_judge(client, "by-hand")
    added = await ok(client, "add_guideline", judge="by-hand", text=DIRECT)
    assert (added["status"], added["provenance"], added["source_feedback_ids"]) == (
        "active",
        "operator:local",
        [],
    )
    (latest,) = (await ok(client, "judge_history", judge="by-hand", limit=1))["versions"]
    assert (latest["change"], latest["summary"]["guidelines_added"]) == ("guideline", [added["id"]])
    used, prompt = await scored_prompt(client, model, "by-hand")
    assert used == [added["id"]]
    assert DIRECT in prompt

    removed = await ok(client, "remove_feedback", judge="by-hand", feedback_ids=["r-1"])
    assert [g["text"] for g in removed["guidelines_removed"]] == [POLITE]  # the proposal citing it goes
    listed = await ok(client, "list_guidelines", judge="by-hand")
    assert [(g["id"], g["text"]) for g in listed["guidelines"]] == [(added["id"], DIRECT)]


async def test_forgetting_rederives_into_a_proposal_on_a_reviewed_judge(
    client: Client, model: ScriptedModelServer
) -> None:
    polite = await taught_reviewed_judge(client, "forgetting", rude("r-1"), rude("r-2"))
    assert polite["source_feedback_ids"] == ["r-1", "r-2"]
    await ok(client, "review_guideline", judge="forgetting", guideline_id=polite["id"], action="approve")
    removed = await ok(client, "remove_feedback", judge="forgetting", feedback_ids=["r-1"])
    (revised,) = removed["guidelines_revised"]
    assert (revised["text"], revised["source_feedback_ids"], revised["status"]) == (
        POLITE,
        ["r-2"],
        "proposed",
    )
    used, prompt = await scored_prompt(client, model, "forgetting")
    assert used == []
    assert POLITE not in prompt


async def test_update_judge_turns_review_on_for_guidelines_distilled_from_then(client: Client) -> None:
    await ok(client, "create_judge", name="later", instructions=INSTRUCTIONS)
    first = await ok(client, "add_feedback", judge="later", feedback=[rude("r-1")])
    assert [g["status"] for g in first["guidelines_added"]] == ["active"]
    updated = await ok(client, "update_judge", judge="later", review_guidelines=True)
    assert updated["review_guidelines"] is True
    kind = {**rude("k-1"), "outputs": "It ships today.", "value": True, "rationale": "Direct and accurate."}
    second = await ok(client, "add_feedback", judge="later", feedback=[kind])
    assert [(g["text"], g["status"]) for g in second["guidelines_added"]] == [(DIRECT, "proposed")]
    listed = await ok(client, "list_guidelines", judge="later")
    assert sorted((g["text"], g["status"]) for g in listed["guidelines"]) == [
        (DIRECT, "proposed"),
        (POLITE, "active"),
    ]


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("review_guideline", {"action": "approve", "text": "A rule for this."}, "Invalid text"),
        ("review_guideline", {"action": "edit"}, "which action 'edit' needs"),
        ("review_guideline", {"action": "delete"}, "action"),
        ("review_guideline", {"action": "approve", "guideline_id": "g-nope"}, "Unknown guideline 'g-nope'"),
        ("add_guideline", {"text": " \n "}, "Invalid text: got ' \\n '; expected a non-empty rule"),
        ("add_guideline", {"text": "x" * 301}, "Invalid text: got '301 characters'"),
        ("add_guideline", {"judge": "no-such-judge", "text": DIRECT}, "Unknown judge 'no-such-judge'"),
    ],
)
async def test_bad_review_arguments_are_one_line_errors(
    client: Client, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    await ok(client, "create_judge", name="errors", instructions=INSTRUCTIONS, review_guidelines=True)
    given = {
        "judge": "errors",
        **({"guideline_id": "g-1"} if tool == "review_guideline" else {}),
        **arguments,
    }
    assert expected in await refused(client, tool, **given)


# --- a failure during a review changes nothing ------------------------------------------------------------------


class Fault(Exception):
    """Injected at one step of a change."""


@pytest.mark.parametrize(
    "step", ["review:prepared", "review:writing", "guideline:prepared", "guideline:writing"]
)
def test_a_failure_during_a_review_changes_nothing(tmp_path: Path, step: str) -> None:
    engine = open_worker_engine(str(tmp_path))
    engine.update_judge(JUDGE, {"review_guidelines": True})
    engine.add_feedback(JUDGE, ALIGNMENT)
    proposed = engine.list_guidelines(JUDGE).guidelines
    assert proposed
    assert {g.status for g in proposed} == {"proposed"}

    def act() -> None:
        if step.startswith("review"):
            engine.review_guideline(JUDGE, proposed[0].id, "approve")
        else:
            engine.add_guideline(JUDGE, DIRECT + " Always.")

    def fail_at(_: str, reached: str) -> None:
        if reached == step:
            raise Fault(reached)

    before = engine.list_guidelines(JUDGE)
    engine.ledger.on_step = fail_at
    with pytest.raises(Fault):
        act()
    assert engine.list_guidelines(JUDGE) == before
    assert open_worker_engine(str(tmp_path)).list_guidelines(JUDGE) == before  # and for a fresh process
    engine.ledger.on_step = None
    act()
    after = open_worker_engine(str(tmp_path)).list_guidelines(JUDGE)  # the retry survives a restart
    assert after.judge_version == before.judge_version + 1
    assert len(after.guidelines) == len(before.guidelines) + (step.startswith("guideline"))


def test_review_refuses_text_with_approve_and_an_unknown_id_before_storing(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    version = engine.state(JUDGE).version
    with pytest.raises(InvalidInputError, match="text is for 'edit' only"):
        engine.review_guideline(JUDGE, "g-1", "reject", "some text")
    with pytest.raises(GuidelineNotFoundError, match="g-1"):
        engine.review_guideline(JUDGE, "g-1", "approve")
    assert engine.state(JUDGE).version == version


def test_a_review_overtaken_by_a_removal_of_its_guideline_is_refused_not_applied(tmp_path: Path) -> None:
    engine = open_worker_engine(str(tmp_path))
    engine.update_judge(JUDGE, {"review_guidelines": True})
    engine.add_feedback(JUDGE, ALIGNMENT)
    target = engine.list_guidelines(JUDGE).guidelines[0]
    other = open_worker_engine(str(tmp_path))  # another process on the same store

    def remove_meanwhile(_: str, reached: str) -> None:
        if reached == "review:prepared":
            engine.ledger.on_step = None
            other.remove_feedback(JUDGE, target.source_feedback_ids)

    engine.ledger.on_step = remove_meanwhile
    with pytest.raises(GuidelineNotFoundError, match=target.id):
        engine.review_guideline(JUDGE, target.id, "approve")
    assert target.id not in {
        g.id for g in open_worker_engine(str(tmp_path)).list_guidelines(JUDGE).guidelines
    }
