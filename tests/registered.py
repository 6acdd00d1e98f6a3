"""Register real classifier versions with chosen test metrics, without training on names."""

import mlflow
import numpy as np

from mkt.catalog import register_store
from mkt.classifier import KnnClassifier
from mkt.flows.context import open_database
from mkt.registry import (
    configure_mlflow,
    ensure_experiment,
    log_classifier,
    record_test_metrics,
)
from mkt.settings import Settings
from mkt.stores.config import StoreConfig, load_store_config
from tests.conftest import write_store_config


def add_store(folder, store_id: str = "shop-test", **extra) -> StoreConfig:
    """Register a store whose products file is never read, and return its config."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_store_config(folder, folder / "products.csv", store_id, **extra)
    config = load_store_config(path)
    register_store(open_database(Settings()), config)
    return config


def register_version(config: StoreConfig, metrics: dict[str, float] | None) -> str:
    """Log a tiny classifier for the store, tag it with test metrics, return its version."""
    settings = Settings()
    configure_mlflow(settings)
    rng = np.random.default_rng(0)
    classifier = KnnClassifier.build(
        rng.normal(size=(6, 8)).astype(np.float32),
        ["a", "a", "a", "b", "b", "b"],
        {"a": "Root > A", "b": "Root > B"},
    )
    experiment_id = ensure_experiment(settings, config.store_id)
    with mlflow.start_run(experiment_id=experiment_id):
        _, version = log_classifier(classifier, config, params={}, metrics={})
    if metrics is not None:
        record_test_metrics(config.store_id, version, metrics)
    return version


def metrics_of(weighted_f1: float, **levels: float) -> dict[str, float]:
    """Return test metrics with the given weighted F1 and per-level accuracies."""
    return {
        "accuracy": weighted_f1,
        "weighted_f1": weighted_f1,
        "macro_f1": weighted_f1,
        "coverage_at_precision": 0.8,
        **levels,
    }
