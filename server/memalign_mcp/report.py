"""Evaluation reports for people: Markdown, PNG charts, and the files an evaluation run leaves behind.

This module owns the presentation of agreement figures: a baseline-versus-aligned comparison table, the
per-side sections (from metrics.format_markdown), confusion-matrix and learning-curve charts. It computes no
figure itself (metrics.py does) and never scores, stores or calls a model. matplotlib is imported only inside
the drawing functions and only through its Agg canvas, so importing this module is cheap, needs no display and
touches no global pyplot state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from memalign_mcp.errors import InvalidInputError
from memalign_mcp.metrics import AgreementReport, format_markdown

if TYPE_CHECKING:
    from memalign_mcp.evaluation import EvaluationReport, ScoringError

BASELINE_TITLE = "Baseline (memory off)"
ALIGNED_TITLE = "Aligned (memory on)"


class CurvePoint(BaseModel):
    """One point of a learning curve: agreement of one variant after n feedback items (0 = baseline)."""

    variant: str
    n_feedback: int = Field(ge=0, description="Feedback items in memory; 0 draws the variant's baseline.")
    value: float | None = Field(description="Agreement (e.g. accuracy); None when every item abstained.")
    ci: tuple[float, float] | None = None
    abstention_rate: float = 0.0


# --- Markdown --------------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _headline_cell(side: AgreementReport | None) -> str:
    if side is None:
        return "not measured"
    head = side.headline
    if head.value is None:
        return f"n/a ({side.abstention_rate:.0%} abstained)"
    ci = "" if head.ci is None else f" ({head.level:.0%} CI {_num(head.ci[0])} to {_num(head.ci[1])})"
    return f"{_num(head.value)}{ci}"


def _change(before: float | None, after: float | None, *, percent: bool = False) -> str:
    if before is None or after is None:
        return "n/a"
    delta = after - before
    return f"{delta * 100:+.1f} pts" if percent else f"{delta:+.3f}"


def comparison_table(rows: Sequence[tuple[str, EvaluationReport]]) -> str:
    """A Markdown table of baseline versus aligned figures, one group of rows per (dataset name, report)."""
    lines = ["| Dataset | Figure | Baseline | Aligned | Change |", "|---|---|---|---|---|"]
    for dataset, report in rows:
        base, aligned = report.baseline, report.aligned
        name = dataset.replace("|", "\\|")
        head = aligned.headline
        figures: list[tuple[str, str, str, str]] = [
            (
                head.name,
                _headline_cell(base),
                _headline_cell(aligned),
                _change(base.headline.value if base else None, head.value),
            )
        ]
        if aligned.kind in ("bool", "categorical"):
            figures.append(
                (
                    "Cohen's kappa",
                    _num(base.cohen_kappa) if base else "not measured",
                    _num(aligned.cohen_kappa),
                    _change(base.cohen_kappa if base else None, aligned.cohen_kappa),
                )
            )
        figures.append(
            (
                "abstentions",
                f"{base.abstention_rate:.1%}" if base else "not measured",
                f"{aligned.abstention_rate:.1%}",
                _change(base.abstention_rate if base else None, aligned.abstention_rate, percent=True),
            )
        )
        for i, (figure, before, after, change) in enumerate(figures):
            lines.append(f"| {name if i == 0 else ''} | {figure} | {before} | {after} | {change} |")
    return "\n".join(lines) + "\n"


def render_markdown(report: EvaluationReport, *, dataset: str = "evaluation set") -> str:
    """The whole report as Markdown: what was measured, the comparison table, then each side in detail."""
    source = "the judge's own feedback, leave-one-out" if report.mode == "leave-one-out" else dataset
    parts = [
        f"# Agreement of judge `{report.judge}` with human verdicts",
        "",
        f"Judge memory version {report.judge_version}; model `{report.model}`; {report.n_items} items "
        f"from {source}. Abstentions (no verdict) are left out of every figure and counted apart.",
        "",
    ]
    if report.n_errors:
        parts += [
            f"**{report.n_errors} of {report.n_items} items could not be scored**; agreement below is measured "
            f"on the {report.n_items - report.n_errors} that were.",
            "",
            *(_error_line(e) for e in report.errors),
            "",
        ]
    parts += [
        comparison_table([(dataset, report)]),
        format_markdown(report.aligned, ALIGNED_TITLE),
    ]
    if report.baseline is not None:
        parts += ["", format_markdown(report.baseline, BASELINE_TITLE)]
    return "\n".join(parts)


def _error_line(error: ScoringError) -> str:
    named = f" (`{error.id}`)" if error.id else ""
    text = " ".join(error.error.split())
    shown = text if len(text) <= 300 else text[:300] + "..."
    return f"- item {error.index}{named}, {error.side}: {shown}"


# --- charts ----------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure attached to an Agg canvas (no pyplot, no display, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw_matrix(axes: Any, side: AgreementReport | None, title: str) -> None:
    cm = side.confusion_matrix if side is not None else None
    if side is None or cm is None:
        axes.set_axis_off()
        why = "not measured" if side is None else f"no verdicts ({side.abstention_rate:.0%} abstained)"
        axes.set_title(title)
        axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes)
        return
    labels = [str(label) for label in cm.labels]
    peak = max((max(row) for row in cm.matrix), default=0)
    axes.imshow(cm.matrix, cmap="Blues", vmin=0, vmax=max(peak, 1))
    for i, row in enumerate(cm.matrix):
        for j, count in enumerate(row):
            # Dark cells get white text so that every count stays readable.
            colour = "white" if peak and count > peak / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=12)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("judge")
    axes.set_ylabel("human")
    accuracy = "n/a" if side.accuracy is None else f"{side.accuracy:.1%}"
    axes.set_title(f"{title}\naccuracy {accuracy}, {side.n_scored} scored, {side.n_abstained} abstained")


def draw_confusion(report: EvaluationReport, path: str | Path) -> Path:
    """Draw the baseline and aligned confusion matrices side by side into a PNG; return its path."""
    if report.aligned.confusion_matrix is None and (
        report.baseline is None or report.baseline.confusion_matrix is None
    ):
        raise InvalidInputError(
            "report", report.aligned.kind, "a report of a bool or categorical judge with at least one verdict"
        )
    target = Path(path)
    figure = _new_figure(10, 4.6)
    left, right = figure.subplots(1, 2)
    _draw_matrix(left, report.baseline, BASELINE_TITLE)
    _draw_matrix(right, report.aligned, ALIGNED_TITLE)
    figure.suptitle(f"Judge {report.judge} (memory version {report.judge_version}, model {report.model})")
    figure.savefig(target, format="png", dpi=110)
    return target


def draw_learning_curve(
    points: Sequence[CurvePoint],
    ceiling: float | None,
    path: str | Path,
    title: str,
    *,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Agreement against feedback items (log x), one line per variant, human ceiling dashed; return the path.

    A point with n_feedback 0 is the variant's baseline and is drawn as a dotted horizontal line, since 0
    has no place on a log axis. Points whose value is None (everything abstained) are left out.
    """
    if not points:
        raise InvalidInputError("points", [], "at least one learning-curve point")
    target = Path(path)
    figure = _new_figure(8, 5)
    axes = figure.subplots()
    variants = list(dict.fromkeys(p.variant for p in points))
    colours = [f"C{i % 10}" for i in range(len(variants))]
    sizes: set[int] = set()
    for variant, colour in zip(variants, colours, strict=True):
        mine = sorted((p for p in points if p.variant == variant), key=lambda p: p.n_feedback)
        for p in mine:
            if p.n_feedback == 0 and p.value is not None:
                axes.axhline(
                    p.value, color=colour, linestyle=":", linewidth=1.2, label=f"{variant}: baseline"
                )
        drawn = [p for p in mine if p.n_feedback > 0 and p.value is not None]
        if not drawn:
            continue
        xs = [p.n_feedback for p in drawn]
        ys = [float(p.value) for p in drawn if p.value is not None]
        low = [y - (p.ci[0] if p.ci else y) for p, y in zip(drawn, ys, strict=True)]
        high = [(p.ci[1] if p.ci else y) - y for p, y in zip(drawn, ys, strict=True)]
        axes.errorbar(xs, ys, yerr=[low, high], color=colour, marker="o", capsize=3, label=variant)
        sizes.update(xs)
    if ceiling is not None:
        axes.axhline(
            ceiling, color="black", linestyle="--", linewidth=1.2, label=f"human ceiling {ceiling:.1%}"
        )
    for i, (name, value) in enumerate((references or {}).items()):
        axes.axhline(value, color="grey", linestyle=(0, (1 + i, 2)), linewidth=1, label=f"{name} {value:.1%}")
    axes.set_xscale("log")
    if sizes:
        ordered = sorted(sizes)
        axes.set_xticks(ordered, [str(n) for n in ordered])
        axes.minorticks_off()
    axes.set_xlabel("feedback items in memory (log scale)")
    axes.set_ylabel("agreement with human verdicts")
    axes.set_ylim(0.0, 1.0)
    axes.grid(visible=True, alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    figure.savefig(target, format="png", dpi=110)
    return target


# --- files -----------------------------------------------------------------------------------------------


def write_report(
    report: EvaluationReport, out_dir: str | Path, *, dataset: str = "evaluation set"
) -> dict[str, Path]:
    """Write report.json, report.md and (for bool or categorical judges with verdicts) confusion.png."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "markdown": directory / "report.md"}
    paths["json"].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report, dataset=dataset), encoding="utf-8")
    sides = [report.aligned, report.baseline]
    if any(side is not None and side.confusion_matrix is not None for side in sides):
        paths["confusion"] = draw_confusion(report, directory / "confusion.png")
    return paths
