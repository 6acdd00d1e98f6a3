"""What every stage opens first: the settings and the product database."""

from sqlalchemy import Engine

from mkt.database import get_engine
from mkt.locks import file_lock
from mkt.settings import Settings
from mkt.tiers import TierSettings, enable_tiers


def open_database(settings: Settings) -> Engine:
    """Return the product database engine of the settings, creating the data dir if needed.

    With a cold tier configured, the engine reads and archives into it too.
    """
    url = settings.resolved_database_url
    if settings.database_url is not None:
        engine = get_engine(url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    else:
        # Creating the tables of a new SQLite file races when several commands start.
        with file_lock(settings.ensure_home() / "mkt.db.lock"):
            engine = get_engine(url, busy_timeout_s=settings.sqlite_busy_timeout_s)
    if settings.has_tiers:
        enable_tiers(engine, tier_settings(settings))
    return engine


def tier_settings(settings: Settings) -> TierSettings:
    """Return the storage tier settings of the settings."""
    return TierSettings(
        cold_path=settings.cold_database_path,
        hot_tablespace=settings.hot_tablespace,
        cold_tablespace=settings.cold_tablespace,
    )


def trigger_stage(store_id: str, stage: str, reason: str) -> str | None:
    """Start a stage's deployment when this flow itself runs from a deployment.

    Runs started by `mkt run` return None here, because the CLI runs the next stage
    itself. Returns the id of the started flow run, or None if none was started.
    """
    from prefect import get_run_logger
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.runtime import deployment

    if deployment.id is None:
        return None
    logger = get_run_logger()
    name = f"{stage}/{store_id}"
    try:
        flow_run = run_deployment(name, timeout=0)
    except ObjectNotFound:
        logger.warning(
            "Store %r: no deployment %r, so %s was not started", store_id, name, stage
        )
        return None
    logger.info(
        "Store %r: started %s (flow run %s) because %s",
        store_id,
        name,
        flow_run.id,
        reason,
    )
    return str(flow_run.id)
