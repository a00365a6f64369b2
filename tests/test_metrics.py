"""Agreement figures checked against values worked out by hand (the arithmetic is in each comment)."""

from __future__ import annotations

import math

import pytest

from memalign_mcp.errors import InvalidInputError
from memalign_mcp.metrics import (
    AgreementReport,
    ConfusionMatrix,
    Kind,
    accuracy,
    agreement_report,
    bootstrap_interval,
    cohen_kappa,
    confusion_matrix,
    format_markdown,
    kappa_from_matrix,
    lins_ccc,
    mean_absolute_error,
    per_class,
    spearman,
)

T, F = True, False


def test_confusion_matrix_rows_are_human_columns_are_predicted() -> None:
    # pairs (h, p): (T,T) (F,T) (T,F) (T,T); labels sorted False, True
    # row False: (F,F)=0 (F,T)=1; row True: (T,F)=1 (T,T)=2
    cm = confusion_matrix([T, F, T, T], [T, T, F, T])
    assert cm.labels == [False, True]
    assert cm.matrix == [[0, 1], [1, 2]]
    given = confusion_matrix([T, F, T, T], [T, T, F, T], labels=[True, False])
    assert given.matrix == [[2, 1], [1, 0]]


def test_confusion_matrix_sorts_numbers_by_value_and_keeps_unseen_given_labels() -> None:
    assert confusion_matrix([10, 2], [1, 2]).labels == [1, 2, 10]
    cm = confusion_matrix(["b"], ["b"], labels=["a", "b", "c"])
    assert cm.matrix == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_confusion_matrix_rejects_unknown_labels_and_unequal_lengths() -> None:
    with pytest.raises(InvalidInputError, match="predicted"):
        confusion_matrix(["a"], ["z"], labels=["a", "b"])
    with pytest.raises(InvalidInputError, match="as many values as human"):
        confusion_matrix(["a", "b"], ["a"])


def test_accuracy_counts_exact_matches() -> None:
    # matches at positions 0 and 3 of 4 -> 2/4
    assert accuracy([T, F, T, T], [T, T, F, T]) == 0.5
    assert accuracy([], []) is None


def _textbook_pairs() -> tuple[list[bool], list[bool]]:
    # 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no
    human = [T] * 20 + [T] * 5 + [F] * 10 + [F] * 15
    predicted = [T] * 20 + [F] * 5 + [T] * 10 + [F] * 15
    return human, predicted


def test_kappa_textbook_two_by_two() -> None:
    # po = (20 + 15) / 50 = 0.7
    # human yes 25/50 = 0.5, predicted yes 30/50 = 0.6
    # pe = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    human, predicted = _textbook_pairs()
    assert cohen_kappa(human, predicted) == pytest.approx(0.4)


def test_kappa_all_one_class_on_both_sides_is_one() -> None:
    # pe = 1*1 = 1 and po = 1: the convention gives 1.0, not 0/0
    assert cohen_kappa([T, T, T], [T, T, T]) == 1.0
    assert cohen_kappa([T, T, T], [T, T, T], labels=[False, True]) == 1.0


def test_kappa_human_one_class_predicted_mixed_is_zero_not_nan() -> None:
    # human all T; predicted T,F,T,F: po = 2/4 = 0.5; pe = 1*0.5 + 0*0.5 = 0.5; kappa = 0/0.5 = 0
    value = cohen_kappa([T, T, T, T], [T, F, T, F])
    assert value == 0.0
    assert value is not None
    assert not math.isnan(value)


def test_kappa_perfect_disagreement_is_negative() -> None:
    # po = 0; pe = 0.5*0.5 + 0.5*0.5 = 0.5; kappa = (0 - 0.5) / 0.5 = -1
    assert cohen_kappa([T, F, T, F], [F, T, F, T]) == -1.0


def test_kappa_of_an_empty_matrix_is_none() -> None:
    assert kappa_from_matrix(ConfusionMatrix(labels=[False, True], matrix=[[0, 0], [0, 0]])) is None


def test_per_class_scores_with_a_class_never_predicted() -> None:
    # human a,a,b,c; predicted a,b,b,b
    # a: tp=1, predicted 1 -> P=1, support 2 -> R=0.5, F1 = 2*1*0.5/1.5 = 2/3
    # b: tp=1, predicted 3 -> P=1/3, support 1 -> R=1, F1 = 2*(1/3)*1/(4/3) = 0.5
    # c: never predicted -> P=0 (0/0 by convention), R=0/1=0, F1=0
    # d: in labels, never seen -> all 0, support 0
    scores = {s.label: s for s in per_class(["a", "a", "b", "c"], ["a", "b", "b", "b"], ["a", "b", "c", "d"])}
    assert (scores["a"].precision, scores["a"].recall, scores["a"].support) == (1.0, 0.5, 2)
    assert scores["a"].f1 == pytest.approx(2 / 3)
    assert scores["b"].precision == pytest.approx(1 / 3)
    assert (scores["b"].recall, scores["b"].f1) == (1.0, pytest.approx(0.5))
    assert (scores["c"].precision, scores["c"].recall, scores["c"].f1, scores["c"].support) == (
        0.0,
        0.0,
        0.0,
        1,
    )
    assert (scores["d"].precision, scores["d"].recall, scores["d"].f1, scores["d"].support) == (
        0.0,
        0.0,
        0.0,
        0,
    )


def test_mean_absolute_error() -> None:
    # |1.0-2.0| + |2.5-2.0| = 1 + 0.5 = 1.5; / 2 = 0.75
    assert mean_absolute_error([1.0, 2.5], [2.0, 2.0]) == 0.75
    assert mean_absolute_error([], []) is None


def test_spearman_with_ties_uses_average_ranks() -> None:
    # x = 1,2,2,3 -> ranks 1, 2.5, 2.5, 4; y = 1,3,2,4 -> ranks 1, 3, 2, 4; both mean 2.5
    # dx = -1.5, 0, 0, 1.5; dy = -1.5, 0.5, -0.5, 1.5
    # sxy = 2.25 + 0 + 0 + 2.25 = 4.5; sxx = 4.5; syy = 2.25+0.25+0.25+2.25 = 5
    # rho = 4.5 / sqrt(4.5*5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))


def test_spearman_reads_only_order() -> None:
    # y = x^2 is monotone, so ranks are equal: rho = 1; reversed ranks give -1
    assert spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)


def test_spearman_undefined_cases_are_none() -> None:
    assert spearman([3, 3, 3], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [5, 5, 5]) is None
    assert spearman([1], [1]) is None


def test_lins_ccc_hand_example() -> None:
    # x = 1,2,3 (mean 2), y = 2,3,4 (mean 3); var x = var y = (1+0+1)/3 = 2/3; cov = 2/3
    # ccc = 2*(2/3) / (2/3 + 2/3 + (2-3)^2) = (4/3) / (7/3) = 4/7
    assert lins_ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 7)
    # same means, cov = -2/3: ccc = (-4/3) / (4/3) = -1
    assert lins_ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert lins_ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_lins_ccc_undefined_cases_are_none() -> None:
    # both sides the same constant: 0 / (0 + 0 + 0)
    assert lins_ccc([2, 2], [2, 2]) is None
    assert lins_ccc([1], [2]) is None


def test_bootstrap_is_repeatable_for_a_seed_and_contains_the_estimate() -> None:
    human, predicted = _textbook_pairs()
    first = bootstrap_interval(human, predicted, accuracy, resamples=300, seed=7)
    again = bootstrap_interval(human, predicted, accuracy, resamples=300, seed=7)
    other = bootstrap_interval(human, predicted, accuracy, resamples=300, seed=8)
    assert first is not None
    assert first == again
    assert other != first
    assert first[0] <= 0.7 <= first[1]
    assert first[0] < first[1]


def test_bootstrap_of_perfect_agreement_is_one_to_one() -> None:
    assert bootstrap_interval([T, F, T, F], [T, F, T, F], accuracy, resamples=200) == (1.0, 1.0)


def test_bootstrap_skips_undefined_resamples() -> None:
    # with two items, half the resamples repeat one item and make spearman undefined; the rest give +1
    assert bootstrap_interval([1, 2], [1, 2], spearman, resamples=200) == (
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    assert bootstrap_interval([1, 1], [1, 2], spearman, resamples=50) is None
    assert bootstrap_interval([], [], accuracy) is None


def test_bootstrap_rejects_a_bad_level() -> None:
    with pytest.raises(InvalidInputError, match="level"):
        bootstrap_interval([T], [T], accuracy, level=95)


def _abstaining_report() -> AgreementReport:
    # scored pairs (T,T) (F,F) (T,F); items 2 and 4 abstained
    return agreement_report([T, T, F, F, T], [T, None, F, None, F], "bool", resamples=200)


def test_abstentions_are_counted_and_left_out_of_the_figures() -> None:
    report = _abstaining_report()
    assert (report.n_items, report.n_scored, report.n_abstained) == (5, 3, 2)
    assert report.abstention_rate == pytest.approx(0.4)
    # accuracy over scored only: 2/3 (counting abstentions as wrong would give 2/5)
    assert report.accuracy == pytest.approx(2 / 3)
    assert report.confusion_matrix is not None
    assert report.confusion_matrix.matrix == [[1, 0], [1, 1]]
    # n=3, agreed=2, rows (1,2), cols (2,1), chance = 1*2 + 2*1 = 4; kappa = (3*2 - 4)/(9 - 4) = 0.4
    assert report.cohen_kappa == pytest.approx(0.4)
    assert report.headline.name == "accuracy"
    assert report.headline.value == report.accuracy
    assert report.mean_absolute_error is None


def test_report_ci_matches_bootstrap_interval_for_the_same_seed() -> None:
    human, predicted = _textbook_pairs()
    report = agreement_report(human, predicted, "bool", resamples=300, seed=3)
    assert report.headline.ci == bootstrap_interval(human, predicted, accuracy, resamples=300, seed=3)


def test_bool_report_shows_both_classes_even_when_one_is_absent() -> None:
    report = agreement_report([T, T], [T, T], "bool", resamples=50)
    assert report.confusion_matrix is not None
    assert report.confusion_matrix.labels == [False, True]
    assert report.cohen_kappa == 1.0
    assert report.headline.ci == (1.0, 1.0)


def test_report_with_nothing_scored_has_no_figures() -> None:
    report = agreement_report(["a", "b"], [None, None], "categorical")
    assert (report.n_scored, report.abstention_rate) == (0, 1.0)
    assert (report.accuracy, report.cohen_kappa, report.confusion_matrix, report.per_class) == (None,) * 4
    assert (report.headline.value, report.headline.ci) == (None, None)
    assert "n/a" in format_markdown(report, "Empty")
    empty = agreement_report([], [], "float")
    assert (empty.n_items, empty.abstention_rate, empty.mean_absolute_error) == (0, 0.0, None)


def test_numeric_report_holds_mae_spearman_and_ccc() -> None:
    # the 4th item abstains; scored x = 1,2,3 and y = 2,3,4
    # errors all 1 -> MAE 1 and every resample's MAE is 1; ranks equal -> rho 1; ccc 4/7 as above
    report = agreement_report([1, 2, 3, 5], [2, 3, 4, None], "int", resamples=100)
    assert report.n_abstained == 1
    assert report.mean_absolute_error == 1.0
    assert report.spearman == pytest.approx(1.0)
    assert report.lins_ccc == pytest.approx(4 / 7)
    assert report.headline.name == "mean absolute error"
    assert report.headline.ci == (1.0, 1.0)
    assert (report.accuracy, report.cohen_kappa, report.confusion_matrix) == (None, None, None)


def test_text_report_holds_exact_match_only() -> None:
    report = agreement_report(["yes", "no"], ["yes", "No"], "text", resamples=50)
    assert report.accuracy == 0.5
    assert report.headline.name == "exact-match accuracy"
    assert (report.cohen_kappa, report.confusion_matrix, report.spearman) == (None, None, None)


def test_categorical_report_keeps_given_labels_in_order() -> None:
    report = agreement_report(["low", "high"], ["low", "low"], "categorical", labels=["low", "mid", "high"])
    assert report.confusion_matrix is not None
    assert report.confusion_matrix.labels == ["low", "mid", "high"]
    assert report.confusion_matrix.matrix == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    ("human", "predicted", "kind"),
    [
        ([T], ["yes"], "bool"),
        ([1.0], ["x"], "float"),
        ([1.0], [math.nan], "float"),
        (["a"], [1.5], "categorical"),
    ],
)
def test_report_rejects_values_of_the_wrong_type(
    human: list[bool | float | str], predicted: list[bool | float | str | None], kind: Kind
) -> None:
    with pytest.raises(InvalidInputError, match="predicted"):
        agreement_report(human, predicted, kind)


def test_report_survives_a_json_round_trip_with_bool_labels_intact() -> None:
    report = _abstaining_report()
    back = AgreementReport.model_validate_json(report.model_dump_json())
    assert back == report
    assert back.confusion_matrix is not None
    assert back.confusion_matrix.labels[1] is True


def test_markdown_shows_headline_matrix_classes_and_abstentions() -> None:
    text = format_markdown(_abstaining_report(), "Helpfulness judge")
    assert text.startswith("## Helpfulness judge\n")
    assert "**accuracy: 0.667** (95% CI " in text
    assert "| human \\ judge | False | True |" in text
    assert "| **False** | 1 | 0 |" in text
    assert "| **True** | 1 | 1 |" in text
    assert "| label | precision | recall | F1 | support |" in text
    assert "2 of 5 items (40.0%)" in text
    assert "| Cohen's kappa | 0.400 |" in text


def test_markdown_escapes_pipes_in_labels() -> None:
    report = agreement_report(["a|b"], ["a|b"], "categorical", resamples=10)
    assert "| **a\\|b** | 1 |" in format_markdown(report, "Pipes")
