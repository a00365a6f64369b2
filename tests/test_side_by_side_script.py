"""The side-by-side benchmark's scripted model answers both engines' requests with replies they act on.

A reply that cites no valid item makes MLflow drop every guideline silently, and one that does not fit our
checks makes our engine retry; either would make the benchmark measure the wrong work, so these tests build
requests from the engine's real prompts and check what the script answers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from memalign_mcp.models import JudgeSpec
from memalign_mcp.prompts import (
    CONSOLIDATE_SCHEMA,
    DISTILL_SCHEMA,
    REDERIVE_SCHEMA_NAME,
    FeedbackView,
    consolidate_messages,
    distill_messages,
    rederive_messages,
    rederive_schema,
    score_schema,
)
from scripted_model import ChatCall, ScriptedError

# The script lives beside its benchmark, in benchmarks/ (a namespace package under the project root).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.side_by_side_script import SideBySideScript

SPEC = JudgeSpec(name="helpful", instructions="Is it helpful?\n{{ inputs }}\n{{ outputs }}")


def _call(messages: list[dict[str, str]], name: str, schema: dict[str, Any]) -> ChatCall:
    return ChatCall(model="scripted", messages=list(messages), schema_name=name, schema=schema, raw_body={})


def _items(n: int) -> list[FeedbackView]:
    # Item text that itself says "Item 9:" must not make the script cite an item that is not there.
    return [
        FeedbackView(
            inputs=f"question {i}", outputs=f"Item 9:\nanswer {i}", value=i % 2 == 0, rationale="why"
        )
        for i in range(n)
    ]


def _reply(script: SideBySideScript, call: ChatCall) -> dict[str, Any]:
    reply = script(call)
    assert isinstance(reply, dict), reply
    return reply


def test_our_distillation_cites_only_items_of_the_batch() -> None:
    script = SideBySideScript()
    call = _call(distill_messages(SPEC, _items(7), ["an old rule"]), "guidelines", DISTILL_SCHEMA)
    guidelines = _reply(script, call)["guidelines"]
    assert len(guidelines) == 3
    cited = sorted(n for g in guidelines for n in g["source_items"])
    assert cited == list(range(1, 8))
    assert len({g["text"] for g in guidelines}) == 3
    assert all(g["existing"] is None for g in guidelines)


def test_our_rederivation_gets_one_guideline() -> None:
    script = SideBySideScript()
    guidelines = _reply(
        script, _call(rederive_messages(SPEC, _items(2)), REDERIVE_SCHEMA_NAME, rederive_schema(2))
    )["guidelines"]
    assert len(guidelines) == 1
    assert sorted(guidelines[0]["source_items"]) == [1, 2]
    assert script.kinds["ours.rederive"] == 1


def test_our_consolidation_fits_under_the_cap_and_keeps_every_guideline() -> None:
    script = SideBySideScript()
    texts = [f"rule {i}" for i in range(35)]
    call = _call(consolidate_messages(SPEC, texts, 30), "consolidated_guidelines", CONSOLIDATE_SCHEMA)
    guidelines = _reply(script, call)["guidelines"]
    assert len(guidelines) <= 30
    assert sorted(n for g in guidelines for n in g["merged_from"]) == list(range(1, 36))


def test_mlflow_distillation_cites_the_batch_ids_it_was_shown() -> None:
    script = SideBySideScript()
    records = "\n".join(f'{{\n  "id": {i},\n  "result": "true",\n}}' for i in (50, 51, 52, 53))
    call = _call([{"role": "user", "content": "examples:\n" + records}], "Guidelines", {"properties": {}})
    guidelines = _reply(script, call)["guidelines"]
    assert sorted(i for g in guidelines for i in g["source_trace_ids"]) == [50, 51, 52, 53]
    assert all(g["guideline_text"] for g in guidelines)


@pytest.mark.parametrize(
    ("name", "schema", "expected"),
    [
        ("judgement", score_schema(SPEC), {"value": True}),
        (
            "ResponseFormat",
            {"properties": {"result": {"type": "boolean"}, "rationale": {}}},
            {"result": True},
        ),
    ],
)
def test_judges_get_a_valid_bool_verdict(name: str, schema: dict[str, Any], expected: dict[str, Any]) -> None:
    reply = _reply(SideBySideScript(), _call([{"role": "user", "content": "judge"}], name, schema))
    assert expected.items() <= reply.items()
    assert reply["rationale"]


def test_an_unknown_request_is_refused_and_counted() -> None:
    script = SideBySideScript()
    reply = script(_call([{"role": "user", "content": "?"}], "something_else", {}))
    assert isinstance(reply, ScriptedError)
    assert "something_else" in reply.message
    assert script.kinds["unknown"] == 1
