"""Evaluation: leave-one-out never shows an item its own verdict; reports agree with hand counts."""

from __future__ import annotations

import pytest

from conftest import EngineFactory
from memalign_mcp.errors import ModelError
from memalign_mcp.models import LabelledExample
from memalign_mcp.report import render_markdown
from memalign_mcp.seed_scenario import ALIGNMENT, HELD_OUT, JUDGE
from scripted_model import ChatCall, Reply, Script, ScriptedModelServer
from support_desk_model import EMPATHY, support_desk


def test_leave_one_out_excludes_the_item_and_the_guidelines_it_sourced(
    engines: EngineFactory, model: ScriptedModelServer
) -> None:
    engine = engines.open()
    engine.add_feedback(JUDGE, ALIGNMENT)
    model.calls.clear()
    report = engine.evaluate(JUDGE)
    assert report.mode == "leave-one-out"
    assert report.n_items == 5
    judged = [c for c in model.calls if c.schema_name == "judgement"]
    assert len(judged) == 5
    sweater_prompt = next(
        c.prompt_text() for c in judged if "nothing like the photo" in c.messages[-1]["content"]
    )
    assert EMPATHY not in sweater_prompt  # sourced only by the sweater item itself
    assert sweater_prompt.count("nothing like the photo") == 1  # not retrieved as its own example
    # Without its own guideline the cold sweater reply passes: the one miss the scripted judge makes.
    assert report.aligned.accuracy == 0.8
    [miss] = [i for i in report.items if i.aligned != i.human]
    assert miss.id == "sweater"


def test_dataset_evaluation_with_baseline_counts_both(engines: EngineFactory) -> None:
    engine = engines.open()
    engine.add_feedback(JUDGE, ALIGNMENT)
    dataset = [LabelledExample(inputs=i["inputs"], outputs=i["outputs"], value=i["value"]) for i in HELD_OUT]
    report = engine.evaluate(JUDGE, dataset, compare_baseline=True)
    assert report.baseline is not None
    assert (report.baseline.accuracy, report.aligned.accuracy) == (0.8, 1.0)
    matrix = report.baseline.confusion_matrix
    assert matrix is not None
    assert matrix.labels == [False, True]
    assert matrix.matrix == [[2, 1], [0, 2]]  # the double-charge reply: human false, judge true


def test_memory_judge_abstentions_are_counted_apart(engines: EngineFactory) -> None:
    engine = engines.open(with_model=False)
    dataset = [LabelledExample(inputs=i["inputs"], outputs=i["outputs"], value=i["value"]) for i in HELD_OUT]
    report = engine.evaluate(JUDGE, dataset)
    assert report.model == "memory"
    assert report.aligned.n_abstained == 5
    assert report.aligned.accuracy is None


def failing_on(marker: str) -> Script:
    """The support-desk script, except that judging any prompt showing `marker` never gets a usable reply."""

    def script(call: ChatCall) -> Reply:
        if call.schema_name == "judgement" and marker in call.messages[1]["content"]:
            return "I am not able to judge this one."
        return support_desk(call)

    return script


def test_a_failing_item_is_counted_and_agreement_is_measured_on_the_rest(
    engines: EngineFactory, model: ScriptedModelServer
) -> None:
    engine = engines.open()
    engine.add_feedback(JUDGE, ALIGNMENT)
    model.reset(failing_on("gift wrap"))
    dataset = [
        LabelledExample(inputs=i["inputs"], outputs=i["outputs"], value=i["value"], id=i["id"])
        for i in HELD_OUT
    ]

    report = engine.evaluate(JUDGE, dataset, compare_baseline=True)

    assert report.n_items == 5
    assert report.n_errors == 1
    assert [(e.index, e.id, e.side) for e in report.errors] == [
        (0, "gift-wrap", "aligned"),
        (0, "gift-wrap", "baseline"),
    ]
    error = report.errors[0].error
    assert "openai/scripted" in error
    assert "not valid JSON" in error
    assert report.items[0].error == error
    assert report.items[0].aligned is None
    # The four that scored: aligned agrees on all; with memory off the double-charge reply is the one miss.
    assert (report.aligned.n_items, report.aligned.n_abstained) == (4, 0)
    assert report.baseline is not None
    assert (report.aligned.accuracy, report.baseline.accuracy) == (1.0, 0.75)
    assert report.baseline.n_items == 4  # the same items on both sides
    text = render_markdown(report)
    assert "1 of 5 items could not be scored" in text
    assert "item 0 (`gift-wrap`), aligned:" in text


def test_an_evaluation_where_every_item_fails_is_an_error_not_a_report(
    engines: EngineFactory, model: ScriptedModelServer
) -> None:
    engine = engines.open()
    engine.add_feedback(JUDGE, ALIGNMENT)
    model.reset(failing_on(""))
    dataset = [LabelledExample(inputs=i["inputs"], outputs=i["outputs"], value=i["value"]) for i in HELD_OUT]

    with pytest.raises(ModelError, match="Every one of the 5 items failed"):
        engine.evaluate(JUDGE, dataset)
