"""Train stage: fit the FAISS nearest-neighbour classifier and register it in MLflow."""

import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from prefect import flow, get_run_logger, task

from mkt.catalog import load_store
from mkt.classifier import KnnClassifier
from mkt.embeddings import encode_titles, load_encoder
from mkt.fine_tuning import (
    ENCODER_FOLDER,
    fine_tune_encoder,
    fine_tuned_model,
    folder_digest,
    install_encoder,
)
from mkt.flows.context import open_database, trigger_stage
from mkt.registry import configure_mlflow, ensure_experiment, log_classifier
from mkt.settings import Settings
from mkt.snapshot import load_snapshot
from mkt.stores.config import StoreConfig
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
    # NOTE: titles and category ids stay in memory as Python strings, so this cost grows
    # with the store. Embeddings are read from the snapshot file as needed.
    names = LabelledNames(
        embeddings,
        train["title"].tolist(),
        train["category_id"].tolist(),
        rows=np.flatnonzero(is_train),
    )
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="mkt-train-"))
    fine_tuned, fine_tune_metrics = None, {}
    try:
        if config.classifier.fine_tune.steps > 0:
            fine_tuned, names, fine_tune_metrics = fine_tune_names(
                config, names, scratch, logger
            )
        classifier, tuning = fit_classifier(
            names,
            paths,
            config.classifier,
            precision_target=config.evaluation.precision_target,
            seed=config.evaluation.seed,
        )
        train_s = time.perf_counter() - started
        mlflow_run_id, version = log_training_run(
            settings,
            config,
            classifier,
            params=chosen_settings(classifier),
            metrics={
                "train_count": float(len(train)),
                "category_count": float(len(classifier.categories)),
                "train_seconds": train_s,
                **fine_tune_metrics,
                **validation_metrics(tuning),
                **{f"snapshot_{k}": float(v) for k, v in metadata["stats"].items()},
            },
            fine_tuned_encoder=fine_tuned,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    logger.info(
        "Store %r: classifier version %s trained on %d names in %d categories (MLflow run %s)",
        store_id,
        version,
        len(train),
        len(classifier.categories),
        mlflow_run_id,
    )
    return {"mlflow_run_id": mlflow_run_id, "classifier_version": version}


def fine_tune_names(
    config: StoreConfig, names: LabelledNames, scratch: Path, logger
) -> tuple[tuple[Path, str], LabelledNames, dict]:
    """Fine-tune the store's encoder on its training names and encode them again with it.

    Returns the encoder folder with its digest, the names with new embeddings, and
    MLflow metrics of the run.
    """
    settings = config.classifier.fine_tune
    folder = scratch / ENCODER_FOLDER
    started = time.perf_counter()
    result = fine_tune_encoder(
        config.embedding_model,
        names.titles,
        names.category_ids,
        folder,
        steps=settings.steps,
        pairs_per_step=settings.pairs_per_step,
        learning_rate=settings.learning_rate,
        seed=config.evaluation.seed,
        on_progress=lambda done, total, loss: report_fine_tune_step(
            logger, done, total, loss
        ),
    )
    digest = folder_digest(folder)
    installed = install_encoder(folder, Settings().fine_tuned_encoder_dir, digest)
    embedding_model = fine_tuned_model(config.embedding_model, installed)
    # NOTE: the training names are encoded again in memory with the new encoder, so
    # fine-tuning keeps float32 embeddings of the whole training split in RAM.
    embeddings = encode_titles(load_encoder(embedding_model), names.titles)
    logger.info(
        "Encoder fine-tuned for %d steps of %d pairs on %s (%.2f s per step); "
        "%d training names encoded again",
        result.steps,
        result.pairs_per_step,
        result.device,
        result.seconds_per_step,
        len(names.titles),
    )
    metrics = {
        "fine_tune_steps": float(result.steps),
        "fine_tune_seconds_per_step": result.seconds_per_step,
        "fine_tune_seconds": time.perf_counter() - started,
    }
    return (
        (folder, digest),
        LabelledNames(embeddings, names.titles, names.category_ids),
        metrics,
    )


def report_fine_tune_step(logger, done: int, total: int, loss: float) -> None:
    """Log every tenth fine-tuning step and the last one."""
    if done % 10 == 0 or done == total:
        logger.info("Fine-tuning step %d of %d, loss %.3f", done, total, loss)


def log_training_run(
    settings: Settings,
    config: StoreConfig,
    classifier: KnnClassifier,
    *,
    params: dict,
    metrics: dict,
    fine_tuned_encoder: tuple[Path, str] | None,
) -> tuple[str, str]:
    """Log the train run's params and metrics with the classifier; return (run id, version)."""
    configure_mlflow(settings)
    experiment_id = ensure_experiment(settings, config.store_id)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"train-{config.store_id}"
    ):
        mlflow.set_tags({"mkt.store_id": config.store_id, "mkt.stage": "train"})
        params = {
            "embedding_model": config.embedding_model,
            **config.classifier.model_dump(),
            **params,
            "index_type": type(classifier.index).__name__,
        }
        return log_classifier(
            classifier,
            config,
            params=params,
            metrics=metrics,
            fine_tuned_encoder=fine_tuned_encoder,
        )


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
