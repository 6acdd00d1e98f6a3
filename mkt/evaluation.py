"""Classifier quality on held-out names: overall, per level, per category and at a precision."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from mkt.classifier import Prediction

PATH_SEPARATOR = " > "


@dataclass
class EvaluationReport:
    """Metrics of one classifier on one test split, with the tables logged beside them."""

    metrics: dict[str, float]
    per_category: pd.DataFrame
    confusion_pairs: pd.DataFrame


def coverage_at_precision(
    is_correct: np.ndarray, scores: np.ndarray, precision_target: float
) -> tuple[float, float]:
    """Return the largest share of names answered with precision at least the target.

    Names are answered in order of falling score; the result is that share and the lowest
    score still answered (the abstain threshold that reaches the target), or (0.0, 1.0)
    when no threshold does.
    """
    if len(scores) == 0:
        return 0.0, 1.0
    order = np.argsort(-scores, kind="stable")
    correct_sorted = is_correct[order].astype(np.float64)
    precision = np.cumsum(correct_sorted) / np.arange(1, len(order) + 1)
    # Only cut where the score changes, since one threshold cannot split tied scores.
    sorted_scores = scores[order]
    is_cut = np.append(sorted_scores[1:] < sorted_scores[:-1], True)
    reaching = np.flatnonzero((precision >= precision_target) & is_cut)
    if len(reaching) == 0:
        return 0.0, 1.0
    last = reaching[-1]
    return (last + 1) / len(order), float(sorted_scores[last])


def level_accuracies(
    true_paths: list[str], predicted_paths: list[str | None]
) -> dict[int, float]:
    """Return, per path level (1 = root), the share of names whose path matches to that level."""
    true_levels = [path.split(PATH_SEPARATOR) for path in true_paths]
    predicted_levels = [(path or "").split(PATH_SEPARATOR) for path in predicted_paths]
    depth = max((len(levels) for levels in true_levels), default=0)
    accuracies = {}
    for level in range(1, depth + 1):
        pairs = [
            (t, p) for t, p in zip(true_levels, predicted_levels) if len(t) >= level
        ]
        matches = sum(t[:level] == p[:level] for t, p in pairs)
        accuracies[level] = matches / len(pairs)
    return accuracies


def evaluate_predictions(
    true_ids: list[str],
    true_paths: list[str],
    predictions: list[Prediction],
    *,
    precision_target: float,
    abstain_threshold: float = 0.0,
) -> EvaluationReport:
    """Score predictions against the true categories.

    Accuracy and F1 use each name's top candidate even where the classifier would
    abstain, so they measure ranking; the abstain rate and answered accuracy describe
    the configured threshold.
    """
    top_ids = [p.candidates[0].category_id if p.candidates else "" for p in predictions]
    top_paths = [
        p.candidates[0].category_path if p.candidates else None for p in predictions
    ]
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    is_correct = np.array([t == p for t, p in zip(true_ids, top_ids)])
    is_answered = scores >= abstain_threshold

    coverage, threshold = coverage_at_precision(is_correct, scores, precision_target)
    metrics = {
        "accuracy": float(accuracy_score(true_ids, top_ids)),
        "weighted_f1": float(
            f1_score(true_ids, top_ids, average="weighted", zero_division=0)
        ),
        "macro_f1": float(
            f1_score(true_ids, top_ids, average="macro", zero_division=0)
        ),
        "coverage_at_precision": coverage,
        "threshold_at_precision": threshold,
        "abstain_rate": float(1 - is_answered.mean()) if len(scores) else 0.0,
        "answered_accuracy": float(is_correct[is_answered].mean())
        if is_answered.any()
        else 0.0,
        "test_count": float(len(true_ids)),
    }
    for level, accuracy in level_accuracies(true_paths, top_paths).items():
        metrics[f"level_{level}_accuracy"] = accuracy

    frame = pd.DataFrame(
        {"category_id": true_ids, "category_path": true_paths, "predicted_id": top_ids}
    )
    return EvaluationReport(
        metrics, per_category_table(frame), confusion_pair_table(frame)
    )


def per_category_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Return support, precision, recall and F1 per true category, worst F1 first."""
    rows = []
    predicted_counts = frame["predicted_id"].value_counts()
    for (category_id, category_path), group in frame.groupby(
        ["category_id", "category_path"]
    ):
        true_positive = int((group["predicted_id"] == category_id).sum())
        predicted = int(predicted_counts.get(category_id, 0))
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / len(group)
        f1 = (
            2 * precision * recall / (precision + recall) if precision + recall else 0.0
        )
        rows.append((category_id, category_path, len(group), precision, recall, f1))
    columns = ["category_id", "category_path", "support", "precision", "recall", "f1"]
    return (
        pd.DataFrame(rows, columns=columns)
        .sort_values(["f1", "support"])
        .reset_index(drop=True)
    )


def confusion_pair_table(frame: pd.DataFrame, limit: int = 50) -> pd.DataFrame:
    """Return the most frequent (true, predicted) category pairs among the errors."""
    errors = frame[frame["category_id"] != frame["predicted_id"]]
    pairs = (
        errors.groupby(["category_id", "predicted_id"])
        .size()
        .rename("count")
        .reset_index()
    )
    return (
        pairs.sort_values("count", ascending=False).head(limit).reset_index(drop=True)
    )
