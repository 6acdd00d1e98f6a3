"""Tests of evaluation metrics: coverage at a precision, per-level accuracy, tables."""

import numpy as np
import pytest

from mkt.classifier import Candidate, Prediction
from mkt.evaluation import coverage_at_precision, evaluate_predictions, level_accuracies


def test_coverage_stops_where_precision_drops_below_target():
    is_correct = np.array([True, True, True, False, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])

    coverage, threshold = coverage_at_precision(is_correct, scores, 0.8)

    assert coverage == pytest.approx(5 / 6)
    assert threshold == 0.5


def test_coverage_is_zero_when_no_threshold_reaches_target():
    coverage, threshold = coverage_at_precision(
        np.array([False, True]), np.array([0.9, 0.1]), 0.9
    )

    assert (coverage, threshold) == (0.0, 1.0)


def test_coverage_does_not_split_tied_scores():
    is_correct = np.array([True, False])
    scores = np.array([0.5, 0.5])

    coverage, _ = coverage_at_precision(is_correct, scores, 0.9)

    assert coverage == 0.0


def test_level_accuracies_compare_path_prefixes():
    true_paths = ["A > B > C", "A > B > D", "E > F"]
    predicted = ["A > B > D", "A > X > D", None]

    accuracies = level_accuracies(true_paths, predicted)

    assert accuracies[1] == pytest.approx(2 / 3)
    assert accuracies[2] == pytest.approx(1 / 3)
    assert accuracies[3] == 0.0


def prediction(category_id, score):
    path = {"a": "X > A", "b": "X > B", "c": "Y > C"}[category_id]
    return Prediction(category_id, path, score, [Candidate(category_id, path, score)])


def test_evaluation_reports_overall_and_per_category_metrics():
    true_ids = ["a", "a", "b", "c"]
    true_paths = ["X > A", "X > A", "X > B", "Y > C"]
    predictions = [
        prediction("a", 0.9),
        prediction("b", 0.4),
        prediction("b", 0.8),
        prediction("c", 0.7),
    ]

    report = evaluate_predictions(
        true_ids, true_paths, predictions, precision_target=0.9, abstain_threshold=0.5
    )

    assert report.metrics["accuracy"] == 0.75
    assert report.metrics["level_1_accuracy"] == 1.0
    assert report.metrics["level_2_accuracy"] == 0.75
    assert report.metrics["coverage_at_precision"] == 0.75
    assert report.metrics["abstain_rate"] == 0.25
    assert report.metrics["answered_accuracy"] == 1.0
    assert 0 < report.metrics["macro_f1"] < 1
    per_category = report.per_category.set_index("category_id")
    assert per_category.loc["a", "recall"] == 0.5
    assert per_category.loc["b", "precision"] == 0.5
    assert report.confusion_pairs.to_dict("records") == [
        {"category_id": "a", "predicted_id": "b", "count": 1}
    ]
