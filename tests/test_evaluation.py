"""Evaluation: leave-one-out never shows an item its own verdict; reports agree with hand counts."""

from __future__ import annotations

from conftest import EngineFactory
from memalign_mcp.models import LabelledExample
from memalign_mcp.seed_scenario import ALIGNMENT, HELD_OUT, JUDGE
from scripted_model import ScriptedModelServer
from support_desk_model import EMPATHY


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
