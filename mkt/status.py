"""The state of each store: data, stage times, champion, challenger and open alerts.

Everything comes from what the stages already record: the category rows, the snapshot
file, and the MLflow model versions with their tags and metric timestamps.
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from sqlalchemy import Engine, func
from sqlmodel import col, select

from mkt.catalog import load_category_progress
from mkt.database import Category, open_session
from mkt.monitoring import load_open_alerts
from mkt.promotion import REASON_TAG, STATUS_TAG, version_test_metrics
from mkt.registry import get_champion, registered_model_name
from mkt.settings import Settings
from mkt.snapshot import METADATA_FILE
from mkt.stores.config import StoreConfig

logger = logging.getLogger(__name__)

# The metric whose MLflow timestamp marks when the evaluate stage last scored a version.
EVALUATION_METRIC = "test_accuracy"


@dataclass
class StoreStatus:
    """One store's data, stage times, champion and alerts, as `mkt status` shows them."""

    store_id: str
    marketplace: str
    category_count: int = 0
    complete_count: int = 0
    target: int = 0
    product_count: int = 0
    last_crawl_at: datetime | None = None
    last_embed_at: datetime | None = None
    last_train_at: datetime | None = None
    last_evaluate_at: datetime | None = None
    champion_version: str | None = None
    champion_metrics: dict[str, float] = field(default_factory=dict)
    challenger_version: str | None = None
    challenger_status: str | None = None
    challenger_reason: str | None = None
    alerts: list[str] = field(default_factory=list)
    flow_run_states: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return the status as JSON-ready values, times in ISO 8601."""
        data = dict(self.__dict__)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


def collect_store_status(
    engine: Engine, settings: Settings, config: StoreConfig, marketplace: str
) -> StoreStatus:
    """Gather one store's status; MLflow must already point at the registry."""
    status = StoreStatus(config.store_id, marketplace)
    progress = load_category_progress(
        engine, config.store_id, config.target_products_per_category
    )
    status.category_count = len(progress)
    status.complete_count = sum(item.is_complete for item in progress)
    status.target = config.target_products_per_category
    status.product_count = sum(item.product_count for item in progress)

    status.last_crawl_at = load_last_crawl_time(engine, config.store_id)
    metadata_path = settings.store_dir(config.store_id) / METADATA_FILE
    if metadata_path.is_file():
        status.last_embed_at = datetime.fromtimestamp(
            metadata_path.stat().st_mtime, UTC
        )
    fill_classifier_status(status)
    status.alerts = [
        f"{alert.severity}: {alert.kind}"
        for alert in load_open_alerts(engine, config.store_id)
    ]
    return status


def load_last_crawl_time(engine: Engine, store_id: str) -> datetime | None:
    """Return when a crawl last synced the store's category tree.

    Each sync stamps every category it reads, so the latest stamp is the last crawl even
    when no product changed (unlike `products_updated_at`).
    """
    with open_session(engine) as session:
        latest = session.exec(
            select(func.max(Category.last_seen_at)).where(
                Category.store_id == store_id, col(Category.removed_at).is_(None)
            )
        ).one()
    return as_utc(latest) if latest is not None else None


def fill_classifier_status(status: StoreStatus) -> None:
    """Fill in the train and evaluate times, the champion and the newest challenger."""
    versions = load_model_versions(status.store_id)
    if not versions:
        return
    latest = max(versions, key=lambda version: int(version.version))
    status.last_train_at = from_ms(latest.creation_timestamp)
    status.last_evaluate_at = load_last_evaluation_time(versions)

    champion = get_champion(status.store_id)
    if champion is not None:
        status.champion_version = str(champion.version)
        status.champion_metrics = version_test_metrics(champion)
    if champion is None or int(latest.version) > int(champion.version):
        tags = latest.tags or {}
        status.challenger_version = str(latest.version)
        evaluated = bool(version_test_metrics(latest))
        status.challenger_status = tags.get(
            STATUS_TAG, "evaluated" if evaluated else "not evaluated"
        )
        status.challenger_reason = tags.get(REASON_TAG)


def load_model_versions(store_id: str) -> list[ModelVersion]:
    """Return every registered version of the store's classifier (none if unregistered)."""
    name = registered_model_name(store_id)
    try:
        return list(MlflowClient().search_model_versions(f"name = '{name}'"))
    except MlflowException:
        logger.debug("Store %r: no registered classifier %r", store_id, name)
        return []


def load_last_evaluation_time(versions: list[ModelVersion]) -> datetime | None:
    """Return when the newest evaluated version was scored, from its metric's timestamp."""
    evaluated = [version for version in versions if version_test_metrics(version)]
    if not evaluated:
        return None
    newest = max(evaluated, key=lambda version: int(version.version))
    try:
        history = MlflowClient().get_metric_history(newest.run_id, EVALUATION_METRIC)
    except MlflowException:
        return None
    if not history:
        return None
    return from_ms(max(point.timestamp for point in history))


def from_ms(timestamp_ms: int | None) -> datetime | None:
    """Return an MLflow millisecond timestamp as a UTC datetime."""
    if timestamp_ms is None:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


def as_utc(moment: datetime) -> datetime:
    """Return a datetime as timezone-aware UTC; SQLite returns them without a zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_age(moment: datetime | None, now: datetime) -> str:
    """Return how long ago a moment was, e.g. '40s', '12m', '3h', '5d', or '-'."""
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
