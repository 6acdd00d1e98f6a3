"""Train stage: fit the FAISS nearest-neighbour classifier and register it in MLflow."""

import time

import mlflow
from prefect import flow, get_run_logger, task

from mkt.catalog import load_store
from mkt.classifier import KnnClassifier
from mkt.flows.context import open_database, trigger_stage
from mkt.registry import configure_mlflow, ensure_experiment, log_classifier
from mkt.settings import Settings
from mkt.snapshot import load_snapshot
from mkt.tuning import LabelledNames, TuningResult, fit_classifier


@task(name="fit-and-log-classifier")
def fit_and_log_classifier(store_id: str) -> dict:
    """Build the classifier on the snapshot's training split and register it as a new version."""
    logger = get_run_logger()
    settings = Settings()
    config = load_store(open_database(settings), store_id)
    snapshot, embeddings, metadata = load_snapshot(
        settings.store_dir(store_id), store_id
    )
    if metadata["embedding_model"] != config.embedding_model:
        raise_stale_snapshot(
            store_id, metadata["embedding_model"], config.embedding_model
        )

    is_train = (snapshot["split"] == "train").to_numpy()
    train = snapshot[is_train]
    paths = dict(zip(snapshot["category_id"], snapshot["category_path"]))
    # NOTE: tuning on a validation split needs the training rows in memory (float16 from
    # the snapshot file), so this copy grows with the store. Only the index is built in
    # batches.
    names = LabelledNames(
        embeddings[is_train], train["title"].tolist(), train["category_id"].tolist()
    )
    started = time.perf_counter()
    classifier, tuning = fit_classifier(
        names,
        paths,
        config.classifier,
        precision_target=config.evaluation.precision_target,
        seed=config.evaluation.seed,
    )
    train_s = time.perf_counter() - started

    configure_mlflow(settings)
    experiment_id = ensure_experiment(settings, store_id)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{store_id}"):
        mlflow.set_tags({"mkt.store_id": store_id, "mkt.stage": "train"})
        params = {
            "embedding_model": config.embedding_model,
            **config.classifier.model_dump(),
            **chosen_settings(classifier),
            "index_type": type(classifier.index).__name__,
        }
        metrics = {
            "train_count": float(len(train)),
            "category_count": float(len(classifier.categories)),
            "train_seconds": train_s,
            **validation_metrics(tuning),
            **{f"snapshot_{k}": float(v) for k, v in metadata["stats"].items()},
        }
        mlflow_run_id, version = log_classifier(
            classifier, config, params=params, metrics=metrics
        )

    logger.info(
        "Store %r: classifier version %s trained on %d names in %d categories (MLflow run %s)",
        store_id,
        version,
        len(train),
        len(classifier.categories),
        mlflow_run_id,
    )
    return {"mlflow_run_id": mlflow_run_id, "classifier_version": version}


def chosen_settings(classifier: KnnClassifier) -> dict:
    """Return the vote settings the classifier uses, as MLflow params."""
    return {
        "chosen_k": classifier.k,
        "chosen_vote_temperature": classifier.vote_temperature,
        "chosen_class_prior_exponent": classifier.class_prior_exponent,
        "chosen_lexical_weight": classifier.lexical_weight,
        "chosen_linear_weight": classifier.linear_weight,
        "chosen_linear_scale": classifier.linear_scale,
        "has_linear_head": classifier.linear_head is not None,
        "chosen_abstain_threshold": classifier.abstain_threshold,
        "chosen_backoff_share": classifier.backoff_share,
        "is_calibrated": classifier.calibration is not None,
    }


def validation_metrics(tuning: TuningResult | None) -> dict:
    """Return the validation figures of the chosen settings, or none without tuning."""
    if tuning is None:
        return {}
    return {
        "validation_count": float(tuning.validation_count),
        "validation_accuracy": tuning.validation_accuracy,
        "validation_coverage_at_precision": tuning.validation_coverage,
    }


def raise_stale_snapshot(store_id: str, snapshot_model: str, config_model: str) -> None:
    """Raise because the snapshot was embedded with another model than the config names."""
    from mkt.errors import NotEnoughData

    raise NotEnoughData(
        f"Store {store_id!r}: the snapshot was embedded with {snapshot_model!r} but the config "
        f"names {config_model!r}. Embed it again: mkt run {store_id} --stage embed"
    )


@flow(name="train", flow_run_name="train-{store_id}")
def train_store(store_id: str) -> dict:
    """Train a new classifier version for the store from its latest snapshot."""
    result = fit_and_log_classifier(store_id)
    config = load_store(open_database(Settings()), store_id)
    if config.deployments.evaluate.after_previous_stage:
        version = result["classifier_version"]
        trigger_stage(store_id, "evaluate", f"version {version} was trained")
    return result
