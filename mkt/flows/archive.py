"""Archive stage: move a store's products not seen for a while to the cold tier."""

from datetime import timedelta

from prefect import flow, get_run_logger, task

from mkt.catalog import load_store
from mkt.errors import ConfigError
from mkt.flows.context import open_database, tier_settings
from mkt.settings import Settings
from mkt.tiers import archive_products


@task(name="archive-products")
def archive(store_id: str, older_than_days: float) -> dict:
    """Move the store's products last seen more than the given days ago to the cold tier."""
    settings = Settings()
    if not settings.has_tiers:
        raise ConfigError(
            f"Store {store_id!r} cannot be archived: no cold tier is configured. Set "
            "MKT_COLD_DIR for SQLite, or MKT_HOT_TABLESPACE and MKT_COLD_TABLESPACE "
            "for PostgreSQL."
        )
    engine = open_database(settings)
    load_store(engine, store_id)
    result = archive_products(
        engine,
        store_id,
        older_than=timedelta(days=older_than_days),
        settings=tier_settings(settings),
    )
    return {
        "product_count": result.product_count,
        "partition_count": result.partition_count,
    }


@flow(name="archive", flow_run_name="archive-{store_id}")
def archive_store(store_id: str, older_than_days: float | None = None) -> dict:
    """Move the store's products not seen for a while from the hot to the cold tier.

    Training snapshots read both tiers, so archiving changes no classifier.
    """
    logger = get_run_logger()
    days = older_than_days or Settings().archive_after_days
    summary = archive(store_id, days)
    logger.info(
        "Store %r: %d products not seen for %.1f days moved to the cold tier "
        "(%d new partitions)",
        store_id,
        summary["product_count"],
        days,
        summary["partition_count"],
    )
    return summary
