"""Evaluate stage: score a classifier on the held-out split and crown it if it beats the champion."""

import tempfile
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task

from mkt.catalog import load_store
from mkt.classifier import CATEGORIES_FILE, KnnClassifier
from mkt.evaluation import evaluate_predictions
from mkt.flows.context import open_database
from mkt.registry import (
    configure_mlflow,
    get_champion,
    get_model_version,
    record_test_metrics,
    registered_model_name,
    set_champion,
    version_metric,
)
from mkt.settings import Settings
from mkt.snapshot import load_snapshot


def load_classifier_version(store_id: str, version: str) -> KnnClassifier:
    """Download one registered version's artifacts and load its classifier."""
    uri = f"models:/{registered_model_name(store_id)}/{version}"
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch)
        )
        folder = next(local.rglob(CATEGORIES_FILE)).parent
        return KnnClassifier.load(folder)


@task(name="score-classifier")
def score_classifier(store_id: str, classifier_version: str | None = None) -> dict:
    """Compute test metrics of a classifier version and log them with its tables to MLflow."""
    logger = get_run_logger()
    settings = Settings()
    config = load_store(open_database(settings), store_id)
    configure_mlflow(settings)
    version = get_model_version(store_id, classifier_version)
    snapshot, embeddings, _ = load_snapshot(settings.store_dir(store_id), store_id)

    classifier = load_classifier_version(store_id, version.version)
    is_test = (snapshot["split"] == "test").to_numpy()
    test = snapshot[is_test]
    predictions = classifier.predict(embeddings[is_test], top_k=1)
    report = evaluate_predictions(
        test["category_id"].tolist(),
        test["category_path"].tolist(),
        predictions,
        precision_target=config.evaluation.precision_target,
        abstain_threshold=config.classifier.abstain_threshold,
    )

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


@task(name="crown-if-better")
def crown_if_better(store_id: str, classifier_version: str, metrics: dict) -> dict:
    """Give the version the `@champion` alias if there is none or it beats the current one."""
    logger = get_run_logger()
    settings = Settings()
    config = load_store(open_database(settings), store_id)
    configure_mlflow(settings)
    metric = config.evaluation.champion_metric

    champion = get_champion(store_id)
    champion_value = version_metric(champion, metric) if champion is not None else None
    challenger_value = metrics[metric]
    if champion is not None and str(champion.version) == str(classifier_version):
        return {"is_champion": True, "reason": "already the champion"}
    if champion_value is not None and challenger_value <= champion_value:
        reason = (
            f"{metric} {challenger_value:.4f} does not beat champion version "
            f"{champion.version} ({champion_value:.4f})"
        )
        logger.info(
            "Store %r: version %s kept as challenger: %s",
            store_id,
            classifier_version,
            reason,
        )
        return {"is_champion": False, "reason": reason}

    set_champion(store_id, classifier_version)
    reason = (
        "first evaluated classifier"
        if champion_value is None
        else f"{metric} {challenger_value:.4f} beats version {champion.version} ({champion_value:.4f})"
    )
    logger.info(
        "Store %r: version %s is now @champion: %s",
        store_id,
        classifier_version,
        reason,
    )
    return {"is_champion": True, "reason": reason}


@flow(name="evaluate", flow_run_name="evaluate-{store_id}")
def evaluate_store(store_id: str, classifier_version: str | None = None) -> dict:
    """Evaluate a classifier version (the latest by default) and promote it if it wins."""
    scored = score_classifier(store_id, classifier_version)
    decision = crown_if_better(
        store_id, scored["classifier_version"], scored["metrics"]
    )
    return {**scored, **decision}
