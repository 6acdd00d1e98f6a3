"""Small real stores for the server tests: trained on PriceRunner names, in MLflow."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mkt.catalog import register_store
from mkt.database import _ENGINES, get_engine
from mkt.embeddings import encode_titles
from mkt.registry import (
    configure_mlflow,
    ensure_experiment,
    log_classifier,
    registered_model_name,
    set_champion,
)
from mkt.settings import Settings
from mkt.stores.config import StoreConfig, load_store_config
from mkt.titles import clean_title
from mkt.tuning import LabelledNames, fit_classifier
from tests.conftest import write_sample_products, write_store_config

PHONE_STORE = "shop-phones"
KITCHEN_STORE = "shop-kitchen"
PHONE_CATEGORIES = ("CPUs", "Mobile Phones", "TVs")
KITCHEN_CATEGORIES = ("Microwaves", "Fridge Freezers", "Washing Machines")
NAMES_PER_CATEGORY = 30
MLFLOW_SERVE_TIMEOUT_S = 180.0


def point_settings_at(patch, home: Path) -> None:
    """Point every mkt setting at `home`, with MLflow's default SQLite file in it."""
    patch.setenv("MKT_HOME", str(home))
    for name in ("MKT_DATABASE_URL", "MKT_MLFLOW_TRACKING_URI", "MKT_API_TOKEN"):
        patch.delenv(name, raising=False)
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def serving_engine():
    """Return the product database engine of the current settings."""
    settings = Settings()
    settings.ensure_home()
    return get_engine(settings.resolved_database_url)


def add_store(folder: Path, store_id: str, categories=PHONE_CATEGORIES) -> StoreConfig:
    """Write a products file and a config for a store, and register it."""
    folder.mkdir(parents=True, exist_ok=True)
    products = write_sample_products(folder, NAMES_PER_CATEGORY, categories)
    config = load_store_config(write_store_config(folder, products, store_id))
    register_store(serving_engine(), config)
    return config


def add_trained_store(
    folder: Path, store_id: str, encoder, categories=PHONE_CATEGORIES
) -> StoreConfig:
    """Register a store with a trained version 1 as its champion."""
    config = add_store(folder / store_id, store_id, categories)
    version = register_version(config, encoder)
    set_champion(store_id, version)
    return config


def register_version(config: StoreConfig, encoder, **classifier_settings) -> str:
    """Train a classifier on the store's products file, register it, return its version."""
    frame = pd.read_csv(config.connector.options["products"], dtype=str)
    titles = [clean_title(title) for title in frame["title"]]
    names = LabelledNames(
        encode_titles(encoder, titles), titles, frame["category_id"].tolist()
    )
    paths = dict(zip(frame["category_id"], frame["category_path"]))
    classifier, _ = fit_classifier(
        names,
        paths,
        config.classifier.model_copy(update=classifier_settings),
        precision_target=config.evaluation.precision_target,
        seed=config.evaluation.seed,
    )

    settings = Settings()
    configure_mlflow(settings)
    with mlflow.start_run(experiment_id=ensure_experiment(settings, config.store_id)):
        _, version = log_classifier(classifier, config, params={}, metrics={})
    return version


def corrupt_version(store_id: str, version: str) -> None:
    """Overwrite the FAISS index of a registered version with bytes FAISS cannot read."""
    configure_mlflow(Settings())
    uri = MlflowClient().get_model_version_download_uri(
        registered_model_name(store_id), version
    )
    folder = Path(urlparse(uri).path if uri.startswith("file:") else uri)
    (folder / "artifacts" / "classifier" / "index.faiss").write_bytes(b"not an index")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll `url` until it answers 200, failing early if the process ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}: {process.stderr.read()}"
            )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def run_process(command: list[str], ready_url: str, env: dict[str, str]):
    """Start a server process in its own process group and stop the group at the end."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until_up(ready_url, process, MLFLOW_SERVE_TIMEOUT_S)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@contextlib.contextmanager
def run_mlflow_models_serve(store_id: str):
    """Serve the store's champion with `mlflow models serve`; yield its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve"),
        *("-m", f"models:/{registered_model_name(store_id)}@champion"),
        *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
    ]
    # MLflow starts `uvicorn` from PATH, as it would in an activated environment.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {
        **os.environ,
        "PATH": path,
        "MLFLOW_TRACKING_URI": Settings().resolved_mlflow_tracking_uri,
    }
    with run_process(command, f"{url}/ping", env):
        yield url


@pytest.fixture(scope="module")
def trained_stores(tmp_path_factory, encoder):
    """Two stores with a trained champion and one without, in a fresh data directory."""
    folder = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        point_settings_at(patch, folder / "mkt-home")
        add_trained_store(folder, PHONE_STORE, encoder)
        add_trained_store(folder, KITCHEN_STORE, encoder, KITCHEN_CATEGORIES)
        add_store(folder / "untrained", "shop-untrained")
        yield {"encoder": encoder, "untrained": "shop-untrained"}
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
