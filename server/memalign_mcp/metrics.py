"""Agreement figures between a judge's verdicts and human verdicts.

This module owns the arithmetic of evaluation: confusion matrices, accuracy, Cohen's kappa, per-class scores,
mean absolute error, Spearman's rho, Lin's concordance, percentile bootstrap intervals, and the report that
gathers them (with its Markdown form). Every function is pure: no I/O, no model calls, no storage; randomness
comes only from a numpy Generator seeded by the caller, so the same inputs always give the same report.

Conventions for figures that would otherwise be undefined (each chosen so a report never holds NaN):
- a figure over zero items is None;
- Cohen's kappa when chance agreement is certain (pe == 1) is 1.0 if the raters agree on every item, else 0.0;
- precision, recall and F1 are 0.0 when their denominator is 0 (a class never predicted, or never present);
- Spearman's rho is None when either side is constant or there are fewer than two items;
- Lin's concordance is None when there are fewer than two items or both sides are the same constant.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar

import numpy as np
from pydantic import BaseModel

from memalign_mcp.errors import InvalidInputError
from memalign_mcp.models import Value

Label = bool | str | int
Kind = Literal["bool", "categorical", "int", "float", "text"]
H = TypeVar("H")
P = TypeVar("P")


class ConfusionMatrix(BaseModel):
    """Counts of (human, predicted) pairs: matrix[i][j] counts human labels[i] with predicted labels[j]."""

    labels: list[Label]
    matrix: list[list[int]]


class ClassScores(BaseModel):
    """Precision, recall and F1 of one label, treating it as the positive class; support counts human uses."""

    label: Label
    precision: float
    recall: float
    f1: float
    support: int


class Headline(BaseModel):
    """The one figure a reader should look at first, with its bootstrap confidence interval."""

    name: str
    value: float | None
    ci: tuple[float, float] | None
    level: float


class AgreementReport(BaseModel):
    """How well predicted verdicts agree with human ones; abstentions (None predictions) are counted apart."""

    kind: Kind
    n_items: int
    n_scored: int
    n_abstained: int
    abstention_rate: float
    headline: Headline
    accuracy: float | None = None
    cohen_kappa: float | None = None
    confusion_matrix: ConfusionMatrix | None = None
    per_class: list[ClassScores] | None = None
    mean_absolute_error: float | None = None
    spearman: float | None = None
    lins_ccc: float | None = None
    resamples: int
    seed: int


def _check_lengths(human: Sequence[object], predicted: Sequence[object]) -> None:
    if len(human) != len(predicted):
        raise InvalidInputError("predicted", len(predicted), f"as many values as human ({len(human)})")


def _label_key(label: Label) -> tuple[int, int, str]:
    # Numbers sort by value (so 2 comes before 10, False before True); strings by text, after numbers.
    return (1, 0, label) if isinstance(label, str) else (0, int(label), "")


def confusion_matrix(
    human: Sequence[Label], predicted: Sequence[Label], labels: Sequence[Label] | None = None
) -> ConfusionMatrix:
    """Count (human, predicted) pairs over `labels` (given order, else every label seen, sorted)."""
    _check_lengths(human, predicted)
    order = sorted({*human, *predicted}, key=_label_key) if labels is None else list(dict.fromkeys(labels))
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for field, values in (("human", human), ("predicted", predicted)):
        for value in values:
            if value not in index:
                raise InvalidInputError(field, value, "one of the labels " + ", ".join(map(repr, order)))
    for h, p in zip(human, predicted, strict=True):
        matrix[index[h]][index[p]] += 1
    return ConfusionMatrix(labels=order, matrix=matrix)


def accuracy(human: Sequence[Value], predicted: Sequence[Value]) -> float | None:
    """Share of items where the prediction equals the human verdict exactly; None for no items."""
    _check_lengths(human, predicted)
    return sum(h == p for h, p in zip(human, predicted, strict=True)) / len(human) if human else None


def kappa_from_matrix(cm: ConfusionMatrix) -> float | None:
    """Cohen's kappa of a confusion matrix; None when empty, see the module docstring when pe == 1."""
    n = sum(map(sum, cm.matrix))
    if n == 0:
        return None
    agreed = sum(cm.matrix[i][i] for i in range(len(cm.labels)))
    rows = [sum(row) for row in cm.matrix]
    cols = [sum(col) for col in zip(*cm.matrix, strict=True)]
    chance = sum(r * c for r, c in zip(rows, cols, strict=True))
    # kappa = (po - pe) / (1 - pe), scaled by n^2 so integer arithmetic keeps it exact (no 1e-17 noise).
    denominator = n * n - chance
    if denominator == 0:
        return 1.0 if agreed == n else 0.0
    return (n * agreed - chance) / denominator


def cohen_kappa(
    human: Sequence[Label], predicted: Sequence[Label], labels: Sequence[Label] | None = None
) -> float | None:
    """Cohen's kappa: agreement beyond chance, 1 perfect, 0 chance level, negative worse than chance."""
    return kappa_from_matrix(confusion_matrix(human, predicted, labels))


def per_class(
    human: Sequence[Label], predicted: Sequence[Label], labels: Sequence[Label] | None = None
) -> list[ClassScores]:
    """Precision, recall, F1 and support of each label (0.0 where a denominator is 0)."""
    return scores_from_matrix(confusion_matrix(human, predicted, labels))


def scores_from_matrix(cm: ConfusionMatrix) -> list[ClassScores]:
    """Per-class precision, recall, F1 and support read off a confusion matrix."""
    scores: list[ClassScores] = []
    for i, label in enumerate(cm.labels):
        tp = cm.matrix[i][i]
        support = sum(cm.matrix[i])
        predicted = sum(row[i] for row in cm.matrix)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScores(label=label, precision=precision, recall=recall, f1=f1, support=support))
    return scores


def mean_absolute_error(human: Sequence[float], predicted: Sequence[float]) -> float | None:
    """Mean of |human - predicted|; None for no items."""
    _check_lengths(human, predicted)
    return sum(abs(h - p) for h, p in zip(human, predicted, strict=True)) / len(human) if human else None


def _average_ranks(values: Sequence[float]) -> list[float]:
    # A value's 1-based rank is the mean of the positions its copies take in sorted order, so ties share one.
    ordered = sorted(values)
    return [(bisect_left(ordered, v) + bisect_right(ordered, v) + 1) / 2 for v in values]


def _moments(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float, float]:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / n
    return mx, my, sum((a - mx) ** 2 for a in x) / n, sum((b - my) ** 2 for b in y) / n, cov


def spearman(human: Sequence[float], predicted: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson on average ranks); None when either side is constant or n < 2."""
    _check_lengths(human, predicted)
    if len(human) < 2 or len(set(human)) < 2 or len(set(predicted)) < 2:
        return None
    _, _, vx, vy, cov = _moments(_average_ranks(human), _average_ranks(predicted))
    return max(-1.0, min(1.0, cov / math.sqrt(vx * vy)))  # clamp rounding just past +-1


def lins_ccc(human: Sequence[float], predicted: Sequence[float]) -> float | None:
    """Lin's concordance correlation (population moments): 1 only when predictions equal the human values."""
    _check_lengths(human, predicted)
    if len(human) < 2:
        return None
    mx, my, vx, vy, cov = _moments(human, predicted)
    denominator = vx + vy + (mx - my) ** 2
    return 2 * cov / denominator if denominator else None


def _check_bootstrap(resamples: int, level: float) -> None:
    if resamples < 1:
        raise InvalidInputError("resamples", resamples, "a positive number of bootstrap resamples")
    if not 0 < level < 1:
        raise InvalidInputError("level", level, "a confidence level between 0 and 1, such as 0.95")


def _resampled_indices(n: int, resamples: int, seed: int) -> Iterator[list[int]]:
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, size=n).tolist()


def _percentile_interval(stats: list[float], level: float) -> tuple[float, float] | None:
    if not stats:
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(stats, dtype=float), [tail, 1 - tail])
    return (float(low), float(high))


def bootstrap_interval(
    human: Sequence[H],
    predicted: Sequence[P],
    statistic: Callable[[Sequence[H], Sequence[P]], float | None],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of statistic(human, predicted) over items resampled in pairs.

    Resamples where the statistic is undefined (None) are skipped; None when no items or no defined resample.
    """
    _check_lengths(human, predicted)
    _check_bootstrap(resamples, level)
    if not human:
        return None
    stats: list[float] = []
    for idx in _resampled_indices(len(human), resamples, seed):
        value = statistic([human[i] for i in idx], [predicted[i] for i in idx])
        if value is not None:
            stats.append(value)
    return _percentile_interval(stats, level)


def _bootstrap_mean(
    values: list[float], resamples: int, seed: int, level: float
) -> tuple[float, float] | None:
    # Accuracy and MAE are means of a per-item figure, so numpy can resample them fast; the draws are the
    # same as bootstrap_interval's, so both give the same interval for the same seed.
    array = np.asarray(values, dtype=float)
    stats = [float(array[idx].mean()) for idx in _resampled_indices(len(values), resamples, seed)]
    return _percentile_interval(stats, level)


_EXPECTED = {
    "bool": "a boolean",
    "categorical": "a category label (a string or an integer)",
    "text": "a string",
}


def _fits(value: Value, kind: Kind) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "text":
        return isinstance(value, str)
    if kind == "categorical":
        return not isinstance(value, float)
    return not isinstance(value, bool | str) and math.isfinite(value)


def agreement_report(
    human: Sequence[Value],
    predicted: Sequence[Value | None],
    kind: Kind,
    *,
    labels: Sequence[Label] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> AgreementReport:
    """Every agreement figure that fits `kind`; None predictions are abstentions, counted and left out."""
    _check_lengths(human, predicted)
    _check_bootstrap(resamples, level)
    scored = [(h, p) for h, p in zip(human, predicted, strict=True) if p is not None]
    for h, p in scored:
        for field, value in (("human", h), ("predicted", p)):
            if not _fits(value, kind):
                raise InvalidInputError(field, value, _EXPECTED.get(kind, "a finite number"))
    n_items, n_scored = len(human), len(scored)
    report = AgreementReport(
        kind=kind,
        n_items=n_items,
        n_scored=n_scored,
        n_abstained=n_items - n_scored,
        abstention_rate=(n_items - n_scored) / n_items if n_items else 0.0,
        headline=Headline(name="accuracy", value=None, ci=None, level=level),
        resamples=resamples,
        seed=seed,
    )
    if kind in ("int", "float"):
        report.headline.name = "mean absolute error"
        hn, pn = [float(h) for h, _ in scored], [float(p) for _, p in scored]
        if n_scored:
            report.mean_absolute_error = report.headline.value = mean_absolute_error(hn, pn)
            report.spearman, report.lins_ccc = spearman(hn, pn), lins_ccc(hn, pn)
            errors = [abs(h - p) for h, p in zip(hn, pn, strict=True)]
            report.headline.ci = _bootstrap_mean(errors, resamples, seed, level)
        return report
    if kind == "text":
        report.headline.name = "exact-match accuracy"
    elif n_scored:
        # _fits has ruled out floats, so every scored value is a Label.
        hl = [h for h, _ in scored if not isinstance(h, float)]
        pl = [p for _, p in scored if not isinstance(p, float)]
        cm = confusion_matrix(hl, pl, [False, True] if labels is None and kind == "bool" else labels)
        report.confusion_matrix, report.cohen_kappa = cm, kappa_from_matrix(cm)
        report.per_class = scores_from_matrix(cm)
    if n_scored:
        matches = [float(h == p) for h, p in scored]
        report.accuracy = report.headline.value = sum(matches) / n_scored
        report.headline.ci = _bootstrap_mean(matches, resamples, seed, level)
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(label: Label) -> str:
    return str(label).replace("|", "\\|").replace("\n", " ")


def format_markdown(report: AgreementReport, title: str) -> str:
    """A Markdown section for people: headline with CI, confusion matrix, per-class table, abstentions."""
    head = report.headline
    lines = [f"## {title}", ""]
    if head.value is None:
        lines.append(f"**{head.name}: n/a** (no scored items)")
    else:
        ci = "" if head.ci is None else f" ({head.level:.0%} CI {_fmt(head.ci[0])} to {_fmt(head.ci[1])})"
        lines.append(f"**{head.name}: {_fmt(head.value)}**{ci} over {report.n_scored} scored items")
    lines += [
        "",
        f"Abstentions: {report.n_abstained} of {report.n_items} items ({report.abstention_rate:.1%}), "
        "left out of every figure.",
        "",
    ]
    figures: dict[str, float | None] = {"accuracy": report.accuracy}
    if report.kind in ("int", "float"):
        figures = {
            "mean absolute error": report.mean_absolute_error,
            "Spearman's rho": report.spearman,
            "Lin's CCC": report.lins_ccc,
        }
    elif report.kind != "text":
        figures["Cohen's kappa"] = report.cohen_kappa
    lines += ["| figure | value |", "|---|---|", *(f"| {k} | {_fmt(v)} |" for k, v in figures.items())]
    cm = report.confusion_matrix
    if cm is not None:
        lines += ["", "### Confusion matrix (rows: human, columns: judge)", ""]
        lines.append("| human \\ judge | " + " | ".join(_cell(label) for label in cm.labels) + " |")
        lines.append("|---" * (len(cm.labels) + 1) + "|")
        for label, row in zip(cm.labels, cm.matrix, strict=True):
            lines.append(f"| **{_cell(label)}** | " + " | ".join(str(c) for c in row) + " |")
    if report.per_class is not None:
        lines += [
            "",
            "### Per class",
            "",
            "| label | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for c in report.per_class:
            cells = [_cell(c.label), _fmt(c.precision), _fmt(c.recall), _fmt(c.f1), str(c.support)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
