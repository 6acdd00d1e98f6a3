"""Versioned store configs in the MLflow registry: one registered model per store's config.

Each change becomes a model version whose source is the logged JSON document (registry
tags stop at 5,000 characters), tagged with its author, its hash and a summary of the diff.
"""

import difflib
import getpass
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mkt.registry import ensure_experiment
from mkt.settings import Settings
from mkt.stores.config import StoreConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "store_config.json"
HASH_TAG = "mkt.config_sha256"


def config_model_name(store_id: str) -> str:
    """Return the registered model name that versions a store's config."""
    return f"mkt-config-{store_id}"


def config_document(config: StoreConfig) -> str:
    """Return a store config as stable, indented JSON."""
    return json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True)


@dataclass(frozen=True)
class ConfigVersion:
    """One recorded version of a store's config."""

    version: str
    created_at: datetime
    author: str
    summary: str


def _latest_version(client: MlflowClient, store_id: str):
    try:
        versions = client.search_model_versions(
            f"name = '{config_model_name(store_id)}'"
        )
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version)) if versions else None


def read_version_document(version) -> str:
    """Download the JSON document of one config version."""
    with tempfile.TemporaryDirectory() as scratch:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=scratch
        )
        return (Path(local) / CONFIG_FILE).read_text()


def record_config_version(settings: Settings, config: StoreConfig) -> str | None:
    """Record a store's config as a new version if it changed; return the new version or None."""
    client = MlflowClient()
    document = config_document(config)
    digest = hashlib.sha256(document.encode()).hexdigest()
    latest = _latest_version(client, config.store_id)
    if latest is not None and latest.tags.get(HASH_TAG) == digest:
        return None

    previous = read_version_document(latest) if latest is not None else ""
    diff = "".join(
        difflib.unified_diff(
            previous.splitlines(keepends=True),
            document.splitlines(keepends=True),
            "previous",
            "new",
        )
    )
    summary = summarize_diff(diff) if latest is not None else "first version"
    version = _log_config_version(settings, config, document, diff, digest, summary)
    logger.info(
        "Store %r: config version %s recorded (%s)", config.store_id, version, summary
    )
    return version


def _log_config_version(settings, config, document, diff, digest, summary) -> str:
    client = MlflowClient()
    name = config_model_name(config.store_id)
    experiment_id = ensure_experiment(settings, f"{config.store_id}-configs")
    author = getpass.getuser()
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"config-{config.store_id}"
    ) as run:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "config"
            folder.mkdir()
            (folder / CONFIG_FILE).write_text(document)
            (folder / "config.diff").write_text(diff)
            mlflow.log_artifacts(str(folder), artifact_path="config")
        mlflow.set_tags({"mkt.store_id": config.store_id, "mkt.author": author})
    try:
        client.create_registered_model(name, tags={"mkt.store_id": config.store_id})
    except MlflowException:
        pass  # already registered
    version = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/config",
        run_id=run.info.run_id,
        tags={HASH_TAG: digest, "mkt.author": author, "mkt.summary": summary[:4000]},
        description=summary[:4000],
    )
    return str(version.version)


def summarize_diff(diff: str) -> str:
    """Return the changed keys of a unified JSON diff as one short line."""
    changed = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        key = line[1:].strip().split(":", 1)[0].strip('"')
        if key and key not in changed and not key.startswith(("{", "}", "]")):
            changed.append(key)
    return "changed: " + ", ".join(changed[:12]) if changed else "reformatted"


def load_config_history(store_id: str) -> list[ConfigVersion]:
    """Return every recorded config version of a store, newest first."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(
            f"name = '{config_model_name(store_id)}'"
        )
    except MlflowException:
        return []
    return [
        ConfigVersion(
            version=str(v.version),
            created_at=datetime.fromtimestamp(v.creation_timestamp / 1000, UTC),
            author=v.tags.get("mkt.author", "-"),
            summary=v.tags.get("mkt.summary", v.description or ""),
        )
        for v in sorted(versions, key=lambda v: -int(v.version))
    ]
