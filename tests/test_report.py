"""Reports: the Markdown compares baseline with aligned, and the charts are real PNG files."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from memalign_mcp.errors import InvalidInputError
from memalign_mcp.evaluation import EvaluationReport, ScoredExample
from memalign_mcp.metrics import AgreementReport, agreement_report
from memalign_mcp.models import Value
from memalign_mcp.report import CurvePoint, draw_confusion, draw_learning_curve, render_markdown, write_report

HUMAN: list[Value] = [True, True, False, False, True, False, True, False]
BASELINE: list[Value | None] = [True, True, True, True, True, True, False, False]  # 4 of 8 agree
ALIGNED: list[Value | None] = [True, True, False, False, True, False, None, False]  # 7 of 7 scored agree
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _report(baseline: Sequence[Value | None] | None = BASELINE) -> EvaluationReport:
    def side(predicted: Sequence[Value | None]) -> AgreementReport:
        return agreement_report(HUMAN, predicted, "bool", labels=[False, True], resamples=200)

    return EvaluationReport(
        judge="helpful",
        judge_version=3,
        mode="dataset",
        model="memory",
        n_items=len(HUMAN),
        aligned=side(ALIGNED),
        baseline=side(baseline) if baseline is not None else None,
        items=[
            ScoredExample(id=f"i{n}", human=h, aligned=a, baseline=baseline[n] if baseline else None)
            for n, (h, a) in enumerate(zip(HUMAN, ALIGNED, strict=True))
        ],
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk follows the signature
    return width, height


def test_markdown_compares_baseline_with_aligned() -> None:
    text = render_markdown(_report(), dataset="support test set")
    assert "| Dataset | Figure | Baseline | Aligned | Change |" in text
    accuracy_row = next(line for line in text.splitlines() if line.startswith("| support test set |"))
    assert "| accuracy | 0.500 (95% CI" in accuracy_row
    assert accuracy_row.endswith("| 1.000 (95% CI 1.000 to 1.000) | +0.500 |")  # 4/8 -> 7/7
    assert "|  | abstentions | 0.0% | 12.5% | +12.5 pts |" in text
    assert "## Aligned (memory on)" in text
    assert "## Baseline (memory off)" in text


def test_markdown_without_baseline_says_so() -> None:
    text = render_markdown(_report(baseline=None))
    assert "| evaluation set | accuracy | not measured | 1.000" in text
    assert "## Baseline (memory off)" not in text


def test_write_report_writes_json_markdown_and_a_side_by_side_png(tmp_path: Path) -> None:
    report = _report()
    paths = write_report(report, tmp_path / "out", dataset="support test set")
    assert set(paths) == {"json", "markdown", "confusion"}
    assert EvaluationReport.model_validate_json(paths["json"].read_text()) == report
    assert "| Dataset | Figure | Baseline | Aligned | Change |" in paths["markdown"].read_text()
    width, height = _png_size(paths["confusion"])
    assert width > 1.5 * height  # two matrices next to each other


def test_confusion_of_a_baseline_that_always_abstained_still_draws(tmp_path: Path) -> None:
    report = _report(baseline=[None] * len(HUMAN))
    assert report.baseline is not None
    assert report.baseline.confusion_matrix is None
    _png_size(draw_confusion(report, tmp_path / "c.png"))
    assert "n/a (100% abstained)" in render_markdown(report)


def test_confusion_needs_a_judge_with_labels(tmp_path: Path) -> None:
    numeric = agreement_report([1.0, 2.0], [1.0, 3.0], "float", resamples=10)
    report = _report().model_copy(update={"aligned": numeric, "baseline": None})
    with pytest.raises(InvalidInputError, match="bool or categorical"):
        draw_confusion(report, tmp_path / "c.png")
    assert "confusion" not in write_report(report, tmp_path / "out")


def test_learning_curve_is_a_png_and_skips_points_without_verdicts(tmp_path: Path) -> None:
    points = [
        CurvePoint(variant="inputs", n_feedback=0, value=None, abstention_rate=1.0),
        CurvePoint(variant="inputs", n_feedback=10, value=0.55, ci=(0.5, 0.6)),
        CurvePoint(variant="inputs", n_feedback=100, value=0.62, ci=(0.57, 0.67)),
        CurvePoint(variant="model", n_feedback=0, value=0.6),
        CurvePoint(variant="model", n_feedback=100, value=0.7),
    ]
    path = draw_learning_curve(points, 0.785, tmp_path / "curve.png", "test", references={"majority": 0.5})
    assert path.is_file()
    _png_size(path)
    with pytest.raises(InvalidInputError):
        draw_learning_curve([], 0.785, tmp_path / "none.png", "empty")
    assert not (tmp_path / "none.png").exists()
