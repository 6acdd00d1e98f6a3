"""A classifier's evaluation baseline: its test scores and the centroid of its training names.

The evaluate stage logs both to the classifier's MLflow run; the report plots the scores and
the monitor compares served traffic with them.
"""

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mkt.classifier import Prediction

logger = logging.getLogger(__name__)

TEST_SCORES_ARTIFACT = "evaluation/test_scores.json"
CENTROID_ARTIFACT = "evaluation/train_centroid.json"


def build_test_score_table(
    true_ids: list[str], predictions: list[Prediction]
) -> pd.DataFrame:
    """Return one row per test name: true and top category, top score, abstained or not."""
    top_ids = [p.candidates[0].category_id if p.candidates else "" for p in predictions]
    return pd.DataFrame(
        {
            "category_id": true_ids,
            "predicted_id": top_ids,
            "score": [float(p.score) for p in predictions],
            "is_abstained": [p.is_abstained for p in predictions],
        }
    )


def embedding_centroid(embeddings: np.ndarray) -> np.ndarray:
    """Return the mean of the L2-normalised rows."""
    rows = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms == 0, 1, norms)).mean(axis=0)


def centroid_shift(first: np.ndarray, second: np.ndarray) -> float:
    """Return the cosine distance between two centroids (0 same direction, 2 opposite)."""
    first, second = np.asarray(first, float), np.asarray(second, float)
    norm = np.linalg.norm(first) * np.linalg.norm(second)
    if norm == 0:
        return 0.0
    return float(1 - np.dot(first, second) / norm)


def log_baseline(test_scores: pd.DataFrame, train_embeddings: np.ndarray) -> None:
    """Log the test scores and training centroid to the active MLflow run."""
    mlflow.log_table(test_scores, artifact_file=TEST_SCORES_ARTIFACT)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / Path(CENTROID_ARTIFACT).name
        centroid = embedding_centroid(train_embeddings).tolist()
        path.write_text(json.dumps({"centroid": centroid}))
        mlflow.log_artifact(
            str(path), artifact_path=str(Path(CENTROID_ARTIFACT).parent)
        )


def load_run_table(mlflow_run_id: str, artifact_file: str) -> pd.DataFrame | None:
    """Return a table logged on a run with `mlflow.log_table`, or None if it has none."""
    client = MlflowClient()
    try:
        # `mlflow.load_table` looks only in the active experiment, so name the run's own.
        experiment_id = client.get_run(mlflow_run_id).info.experiment_id
        return client.load_table(experiment_id, artifact_file, [mlflow_run_id])
    except MlflowException:
        logger.debug("MLflow run %s has no %s", mlflow_run_id, artifact_file)
        return None


def load_test_scores(mlflow_run_id: str) -> pd.DataFrame | None:
    """Return the test scores logged on a run, or None if it has none."""
    return load_run_table(mlflow_run_id, TEST_SCORES_ARTIFACT)


def load_train_centroid(mlflow_run_id: str) -> np.ndarray | None:
    """Return the training centroid logged on a run, or None if it has none."""
    try:
        with tempfile.TemporaryDirectory() as scratch:
            path = mlflow.artifacts.download_artifacts(
                run_id=mlflow_run_id, artifact_path=CENTROID_ARTIFACT, dst_path=scratch
            )
            data = json.loads(Path(path).read_text())
    except (MlflowException, OSError):
        logger.debug("MLflow run %s has no %s", mlflow_run_id, CENTROID_ARTIFACT)
        return None
    return np.asarray(data["centroid"], dtype=np.float64)
