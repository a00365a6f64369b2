"""The guideline quality gate: a reply that would store a useless or made-up guideline is refused and retried.

Each case is what a real tiny model did: cite a guideline number that was never shown, echo the prompt's fence
markers as "rules", copy the judge's own instructions back. The reply is refused with a corrective message; when
the retry is no better, the batch fails and its feedback stays pending, so nothing useless is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from conftest import EngineFactory
from memalign_mcp.prompts import GUIDELINE_MAX_CHARS, rederive_schema
from memalign_mcp.replies import schema_problems
from memalign_mcp.seed_scenario import ALIGNMENT, INSTRUCTIONS, JUDGE, SOURCE
from memalign_mcp.settings import ModelSettings
from scripted_model import ChatCall, Reply, ScriptedModelServer
from support_desk_model import POLITE, support_desk

RUDE_ITEM = next(i for i in ALIGNMENT if i["id"] == "track-order") | {"source": SOURCE}
HOURS_ITEM = next(i for i in ALIGNMENT if i["id"] == "store-hours") | {"source": SOURCE}


def first_reflection_then(bad: dict[str, Any], *, times: int = 1) -> Callable[[ChatCall], Reply]:
    """A script answering the first `times` reflection calls with `bad`, then as the support desk would."""
    served = 0

    def script(call: ChatCall) -> Reply:
        nonlocal served
        if call.schema_name == "guidelines" and served < times:
            served += 1
            return {"guidelines": [bad]}
        # The support-desk script reads the last message; a retry ends with our correction, so show it the prompt.
        return support_desk(dataclasses.replace(call, messages=call.messages[:2]))

    return script


def reflection_calls(model: ScriptedModelServer) -> list[ChatCall]:
    return [c for c in model.calls if c.schema_name == "guidelines"]


def test_an_existing_number_never_shown_is_refused_not_stored_as_an_empty_guideline(
    engines: EngineFactory, model: ScriptedModelServer
) -> None:
    engine = engines.open()
    engine.add_feedback(JUDGE, [RUDE_ITEM])
    [kept] = engine.list_guidelines(JUDGE).guidelines
    model.reset(
        first_reflection_then({"text": "", "source_items": [1], "existing": 1000000000000000}, times=2)
    )

    result = engine.add_feedback(JUDGE, [HOURS_ITEM])

    assert result.pending_ids == ["store-hours"]
    assert [g.text for g in engine.list_guidelines(JUDGE).guidelines] == [kept.text]
    first, retry = reflection_calls(model)
    assert first.schema is not None
    existing = first.schema["properties"]["guidelines"]["items"]["properties"]["existing"]
    assert (existing["minimum"], existing["maximum"]) == (1, 1)  # one guideline was shown
    assert "1000000000000000" in retry.messages[-1]["content"]


def test_an_existing_number_is_refused_by_the_check_even_where_the_server_skips_the_schema() -> None:
    from memalign_mcp.distill import _check_sources  # pyright: ignore[reportPrivateUsage] - the gate itself

    check = _check_sources(1, "source_items", n_existing=2)

    with pytest.raises(ValueError, match="from 1 to 2; got 1000000000000000"):
        check({"guidelines": [{"text": "", "source_items": [1], "existing": 1000000000000000}]})
    with pytest.raises(ValueError, match="must be null"):
        _check_sources(1, "source_items")({"guidelines": [{"text": "x", "source_items": [1], "existing": 1}]})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("<<<DATA-0a1b2c3d human rationale", "markup '<<<'"),
        ("DATA-0a1b2c3d>>>", "markup"),
        ("Data-9be42285 inputs", "markup 'Data-9be42285'"),  # as SmolLM2-135M wrote it
        ("BEGIN HUMAN FEEDBACK", "markup 'BEGIN'"),
        ("Human verdict: false", "markup 'Human verdict:'"),
        ("   ", "empty"),
        ("human rationale", "not a sentence stating a rule"),
        (
            "Evaluate whether the customer support bot's response is helpful given the user query.",
            "copies the judge's instructions",
        ),
    ],
)
def test_a_guideline_that_is_not_a_rule_is_refused_and_the_retry_says_why(
    engines: EngineFactory, model: ScriptedModelServer, text: str, named: str
) -> None:
    model.reset(first_reflection_then({"text": text, "source_items": [1], "existing": None}))
    engine = engines.open()

    result = engine.add_feedback(JUDGE, [RUDE_ITEM])

    assert result.pending_ids == []
    assert [g.text for g in engine.list_guidelines(JUDGE).guidelines] == [POLITE]
    first, retry = reflection_calls(model)
    assert named in retry.messages[-1]["content"]
    assert retry.messages[-2]["role"] == "assistant"
    assert text.strip() not in [g.text for g in result.guidelines_added]
    assert first.messages != retry.messages


def test_a_guideline_over_the_length_limit_is_refused_and_twice_leaves_the_items_pending(
    engines: EngineFactory, model: ScriptedModelServer
) -> None:
    long_rule = "Be polite to customers and " * 20
    model.reset(first_reflection_then({"text": long_rule, "source_items": [1], "existing": None}, times=2))
    engine = engines.open()

    result = engine.add_feedback(JUDGE, [RUDE_ITEM])

    assert result.pending_ids == ["track-order"]
    assert engine.list_guidelines(JUDGE).guidelines == []
    retry = reflection_calls(model)[1]
    assert f"at most {GUIDELINE_MAX_CHARS} are allowed" in retry.messages[-1]["content"]


def test_distillation_requests_carry_their_token_limit_and_number_bounds(
    engines: EngineFactory, model: ScriptedModelServer
) -> None:
    engine = engines.open()

    engine.add_feedback(JUDGE, [RUDE_ITEM, HOURS_ITEM])

    [call] = reflection_calls(model)
    assert call.raw_body["max_tokens"] == ModelSettings().max_tokens_distill
    assert call.schema is not None
    item = call.schema["properties"]["guidelines"]["items"]["properties"]
    assert item["source_items"]["items"]["maximum"] == 2
    assert item["existing"] == {"type": "null"}  # no guidelines shown yet
    assert item["text"]["maxLength"] == GUIDELINE_MAX_CHARS
    assert INSTRUCTIONS.splitlines()[0] in call.prompt_text()


def test_a_merged_guideline_that_echoes_markup_is_refused_and_the_guidelines_are_kept(
    engines: EngineFactory, model: ScriptedModelServer
) -> None:
    def script(call: ChatCall) -> Reply:
        if call.schema_name == "consolidated_guidelines":
            return {"guidelines": [{"text": "<<<DATA-0a1b2c3d Guidelines", "merged_from": [1, 2, 3, 4]}]}
        return support_desk(dataclasses.replace(call, messages=call.messages[:2]))

    model.reset(script)
    engine = engines.open(overrides={"memory.guideline_cap": 2})

    result = engine.add_feedback(JUDGE, [i | {"source": SOURCE} for i in ALIGNMENT])

    texts = [g.text for g in engine.list_guidelines(JUDGE).guidelines]
    assert len(texts) > 2  # over the cap, but nothing was replaced by an echo of the prompt
    assert all("DATA-" not in text for text in texts)
    assert result.note is not None
    assert "consolidation failed" in result.note
    consolidations = [c for c in model.calls if c.schema_name == "consolidated_guidelines"]
    assert len(consolidations) == 2
    assert "markup" in consolidations[1].messages[-1]["content"]


def test_the_rederive_schema_bounds_items_count_and_existing() -> None:
    schema = rederive_schema(3, at_most=2)
    rule = {"text": "Acknowledge the customer's feelings first.", "source_items": [1, 3], "existing": None}

    assert schema_problems(schema, {"guidelines": [rule, rule]}) == []
    assert schema_problems(schema, {"guidelines": [rule, rule, rule]}) == [
        "guidelines has 3 entries; at most 2 are allowed"
    ]
    assert schema_problems(schema, {"guidelines": [rule | {"source_items": [4]}]}) == [
        "guidelines[0].source_items[0] is 4; it must be at most 3"
    ]
    assert schema_problems(schema, {"guidelines": [rule | {"existing": 1}]}) != []
