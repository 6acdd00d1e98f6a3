"""Evaluate stage: score a classifier on the held-out split and promote it if it passes the gate."""

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from prefect import flow, get_run_logger, task

from mkt.baseline import build_test_score_table, log_baseline
from mkt.catalog import load_store
from mkt.classifier import CATEGORIES_FILE, KnnClassifier
from mkt.embeddings import encode_titles, load_encoder
from mkt.evaluation import evaluate_predictions
from mkt.fine_tuning import resolve_embedding_model
from mkt.flows.context import open_database
from mkt.promotion import promote_classifier
from mkt.registry import (
    configure_mlflow,
    get_model_version,
    record_test_metrics,
    registered_model_name,
)
from mkt.settings import Settings
from mkt.snapshot import load_snapshot

PIPELINE_ACTOR = "pipeline"
# A larger store is scored on a random sample of this many test names, and its drift
# baseline is the centroid of this many training names, so memory stays bounded.
MAX_EVALUATION_NAMES = 500_000
MAX_BASELINE_NAMES = 100_000


def load_classifier_version(store_id: str, version: str) -> tuple[KnnClassifier, str]:
    """Download one registered version's artifacts; return its classifier and encoder.

    The encoder is the `embedding_model` value the version encodes names with, which
    names an installed copy of its fine-tuned encoder when it has one.
    """
    uri = f"models:/{registered_model_name(store_id)}/{version}"
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch)
        )
        folder = next(local.rglob(CATEGORIES_FILE)).parent
        metadata = json.loads((folder / "metadata.json").read_text())
        embedding_model = resolve_embedding_model(folder, metadata)
        return KnnClassifier.load(folder), embedding_model


@task(name="score-classifier")
def score_classifier(store_id: str, classifier_version: str | None = None) -> dict:
    """Compute test metrics of a classifier version and log them with its tables to MLflow."""
    logger = get_run_logger()
    settings = Settings()
    config = load_store(open_database(settings), store_id)
    configure_mlflow(settings)
    version = get_model_version(store_id, classifier_version)
    snapshot, embeddings, snapshot_metadata = load_snapshot(
        settings.store_dir(store_id), store_id
    )

    classifier, embedding_model = load_classifier_version(store_id, version.version)
    seed = config.evaluation.seed
    test_rows = sample_rows(snapshot["split"] == "test", MAX_EVALUATION_NAMES, seed)
    if len(test_rows) < (snapshot["split"] == "test").sum():
        logger.info("Scoring a random %d of the test names", len(test_rows))
    test = snapshot.iloc[test_rows]
    test_embeddings = np.asarray(embeddings[test_rows])
    baseline_rows = sample_rows(snapshot["split"] != "test", MAX_BASELINE_NAMES, seed)
    baseline_embeddings = np.asarray(embeddings[baseline_rows])
    if embedding_model != snapshot_metadata["embedding_model"]:
        # The version was trained on a fine-tuned encoder, so its test names are
        # encoded again with it instead of read from the snapshot.
        logger.info("Encoding %d test names with %s", len(test), embedding_model)
        test_embeddings = encode_titles(
            load_encoder(embedding_model), test["title"].tolist()
        )
        # NOTE: the drift baseline then comes from the test names, because the
        # training names were never encoded with the fine-tuned encoder outside training.
        baseline_embeddings = test_embeddings
    predictions = classifier.predict(
        test_embeddings, top_k=1, titles=test["title"].tolist()
    )
    report = evaluate_predictions(
        test["category_id"].tolist(),
        test["category_path"].tolist(),
        predictions,
        precision_target=config.evaluation.precision_target,
        abstain_threshold=classifier.abstain_threshold,
    )
    report.metrics["abstain_threshold"] = float(classifier.abstain_threshold)
    test_scores = build_test_score_table(test["category_id"].tolist(), predictions)
    report.metrics["mean_top_score"] = float(test_scores["score"].mean())

    with mlflow.start_run(run_id=version.run_id):
        mlflow.log_metrics(
            {f"test_{key}": value for key, value in report.metrics.items()}
        )
        mlflow.log_table(
            report.per_category, artifact_file="evaluation/per_category.json"
        )
        mlflow.log_table(
            report.confusion_pairs, artifact_file="evaluation/confusion_pairs.json"
        )
        log_baseline(test_scores, baseline_embeddings)
    record_test_metrics(store_id, version.version, report.metrics)
    logger.info(
        "Store %r: classifier version %s has accuracy %.3f, weighted F1 %.3f, macro F1 %.3f",
        store_id,
        version.version,
        report.metrics["accuracy"],
        report.metrics["weighted_f1"],
        report.metrics["macro_f1"],
    )
    return {"classifier_version": str(version.version), "metrics": report.metrics}


def sample_rows(mask, limit: int, seed: int) -> np.ndarray:
    """Return the positions where mask is true, or a sorted random `limit` of them."""
    rows = np.flatnonzero(np.asarray(mask))
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


@task(name="promotion-gate")
def promote_if_passed(store_id: str, classifier_version: str) -> dict:
    """Make the version `@champion` if it passes the store's promotion gate; else keep it."""
    logger = get_run_logger()
    settings = Settings()
    configure_mlflow(settings)
    result = promote_classifier(
        open_database(settings),
        store_id,
        classifier_version,
        actor=PIPELINE_ACTOR,
    )
    if result.is_champion:
        logger.info(
            "Store %r: version %s is @champion: %s",
            store_id,
            classifier_version,
            result.reason,
        )
    else:
        logger.warning(
            "Store %r: version %s kept as a rejected challenger, @champion stays "
            "version %s: %s",
            store_id,
            classifier_version,
            result.previous_version,
            result.reason,
        )
    return {
        "is_champion": result.is_champion,
        "reason": result.reason,
        "promotion_action": result.action,
    }


@flow(name="evaluate", flow_run_name="evaluate-{store_id}")
def evaluate_store(store_id: str, classifier_version: str | None = None) -> dict:
    """Evaluate a classifier version (the latest by default) and promote it if it passes the gate."""
    scored = score_classifier(store_id, classifier_version)
    decision = promote_if_passed(store_id, scored["classifier_version"])
    return {**scored, **decision}
