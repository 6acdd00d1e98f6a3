"""The FastAPI app that serves every registered store's `@champion` classifier."""

import importlib.metadata
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from mkt.database import get_engine
from mkt.errors import ClassifierNotFound, MktError, StoreNotFound
from mkt.label_map import LabelMapCache
from mkt.serving.background import PeriodicWorker
from mkt.serving.encoding import NameEncoder
from mkt.serving.loading import (
    ClassifierLoadFailed,
    RegistryReader,
    RegistryUnavailable,
)
from mkt.serving.metrics import ServingMetrics
from mkt.serving.pool import MB, ClassifierPool, PoolLimits
from mkt.serving.routes import open_router, protected_router
from mkt.serving.settings import ServingSettings
from mkt.serving_stats import ServingStatsRecorder

logger = logging.getLogger(__name__)

# HTTP status and Prometheus reason of each error a request can end with.
ERROR_RESPONSES: list[tuple[type[MktError], int, str]] = [
    (StoreNotFound, 404, "store_not_found"),
    (ClassifierNotFound, 409, "no_champion"),
    (ClassifierLoadFailed, 503, "load_failed"),
    (RegistryUnavailable, 503, "registry_unavailable"),
]


@dataclass
class ServingState:
    """Everything the routes share: settings, database, registry, classifiers and metrics."""

    settings: ServingSettings
    token: str | None
    engine: Engine
    reader: RegistryReader
    pool: ClassifierPool
    encoder: NameEncoder
    recorder: ServingStatsRecorder
    metrics: ServingMetrics
    label_maps: LabelMapCache

    def flush_stats(self) -> int:
        """Write the serving statistics collected since the last flush to the database."""
        return self.recorder.flush(self.engine)


def create_app(settings: ServingSettings | None = None, *, token: str | None = None):
    """Build the HTTP API over the stores of the settings' database and MLflow registry.

    Args:
        settings: data directory, database, registry, limits and budget; default: read
            from the `MKT_*` environment variables.
        token: bearer token clients must send; overrides `settings.api_token`.
    """
    settings = settings or ServingSettings()
    app = FastAPI(
        title="mkt",
        version=importlib.metadata.version("mkt"),
        description="Classify product names with each store's @champion classifier.",
        lifespan=run_background_work,
    )
    app.state.serving = build_state(settings, token)
    app.include_router(open_router)
    app.include_router(protected_router)
    app.add_exception_handler(MktError, respond_to_error)
    return app


def build_state(settings: ServingSettings, token: str | None) -> ServingState:
    """Open the database and registry and set up the pool, encoder and recorders."""
    if settings.database_url is None or settings.mlflow_tracking_uri is None:
        settings.ensure_home()
    engine = get_engine(
        settings.resolved_database_url, busy_timeout_s=settings.sqlite_busy_timeout_s
    )
    metrics = ServingMetrics()
    reader = RegistryReader(settings.resolved_mlflow_tracking_uri)
    limits = PoolLimits(
        memory_budget_bytes=int(settings.serve_memory_budget_mb * MB),
        load_retry_interval_s=settings.serve_load_retry_interval_s,
    )
    if token is None and settings.api_token is not None:
        token = settings.api_token.get_secret_value()
    return ServingState(
        settings=settings,
        token=token or None,
        engine=engine,
        reader=reader,
        pool=ClassifierPool(
            reader=reader, engine=engine, limits=limits, metrics=metrics
        ),
        encoder=NameEncoder(
            cache_size=settings.serve_embedding_cache_size,
            batch_size=settings.serve_embedding_batch_size,
            metrics=metrics,
        ),
        recorder=ServingStatsRecorder(),
        metrics=metrics,
        label_maps=LabelMapCache(engine),
    )


@asynccontextmanager
async def run_background_work(app: FastAPI):
    """Follow champion aliases and flush statistics while the app runs; flush at the end."""
    state: ServingState = app.state.serving
    settings = state.settings
    workers = [
        PeriodicWorker(
            "store refresh",
            settings.serve_alias_check_interval_s,
            state.pool.refresh_stores,
        ),
        PeriodicWorker(
            "serving statistics flush",
            settings.serve_stats_flush_interval_s,
            state.flush_stats,
        ),
    ]
    for worker in workers:
        worker.start()
    logger.info(
        "Server started: registry %r, memory budget %.0f MB, API token %s",
        state.reader.uri,
        settings.serve_memory_budget_mb,
        "required" if state.token else "not set",
    )
    try:
        yield
    finally:
        for worker in workers:
            worker.stop()
        flush_on_shutdown(state)


def flush_on_shutdown(state: ServingState) -> None:
    """Write the last serving statistics, logging instead of raising if that fails."""
    try:
        state.flush_stats()
    except Exception:
        logger.exception("Serving statistics of the last window could not be written")


async def respond_to_error(request: Request, exc: Exception) -> JSONResponse:
    """Return an `MktError` as a JSON response with its status code; count the rejection."""
    status_code, reason = 500, "error"
    for error_type, error_status, error_reason in ERROR_RESPONSES:
        if isinstance(exc, error_type):
            status_code, reason = error_status, error_reason
            break
    request.app.state.serving.metrics.rejected.labels(reason).inc()
    return JSONResponse(status_code=status_code, content={"detail": str(exc)})
