"""Crawl stage: sync a store's category tree and ingest its products through its connector."""

from dataclasses import asdict

from prefect import flow, get_run_logger, task

from mkt.catalog import (
    ingest_products,
    load_category_progress,
    load_store,
    refresh_category_counts,
    sync_category_tree,
)
from mkt.errors import ConfigError
from mkt.flows.context import open_database, trigger_stage
from mkt.settings import Settings
from mkt.stores.connectors import create_connector


@task(name="sync-category-tree")
def sync_tree(store_id: str) -> dict:
    """Read the store's category tree and record what was added, removed, renamed or moved."""
    logger = get_run_logger()
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)

    connector = create_connector(config.connector.kind, config.connector.options)
    result = sync_category_tree(engine, store_id, connector.read_category_tree())
    logger.info(
        "Store %r: %d categories (%d added, %d removed, %d renamed, %d moved)",
        store_id,
        result.category_count,
        result.added,
        result.removed,
        result.renamed,
        result.moved,
    )
    return asdict(result)


@task(name="ingest-products")
def ingest(store_id: str) -> dict:
    """Upsert the store's products and quarantine the rows that cannot be used."""
    logger = get_run_logger()
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)

    connector = create_connector(config.connector.kind, config.connector.options)
    source = str(config.connector.options.get("products", config.connector.kind))
    result = ingest_products(engine, store_id, connector.iter_products(), source)
    refresh_category_counts(engine, store_id)

    logger.info(
        "Store %r: %d products inserted, %d updated, %d unchanged, %d duplicate rows",
        store_id,
        result.inserted,
        result.updated,
        result.unchanged,
        result.duplicates,
    )
    if result.rejected_count:
        reasons = ", ".join(
            f"{count} {reason}" for reason, count in result.rejected.items()
        )
        logger.warning(
            "Store %r: %d rows quarantined (%s); see the quarantinedrow table",
            store_id,
            result.rejected_count,
            reasons,
        )
    summary = asdict(result)
    summary["rejected"] = dict(result.rejected)
    return summary


@task(name="measure-coverage")
def measure_coverage(store_id: str) -> dict:
    """Count the categories that reached the store's target of products."""
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)
    progress = load_category_progress(
        engine, store_id, config.target_products_per_category
    )
    return {
        "category_count": len(progress),
        "complete_count": sum(item.is_complete for item in progress),
        "product_count": sum(item.product_count for item in progress),
        "target": config.target_products_per_category,
    }


@task(name="check-credentials")
def check_credentials(store_id: str) -> list[str]:
    """Check that every credential the store references can be read; return their names."""
    import os

    config = load_store(open_database(Settings()), store_id)
    for name, reference in config.credentials.items():
        if reference.env is not None:
            value = os.environ.get(reference.env)
        else:
            from prefect.blocks.system import Secret

            try:
                value = Secret.load(reference.prefect_secret).get()
            except ValueError:
                value = None
        if not value:
            raise ConfigError(
                f"Store {store_id!r} needs credential {name!r} from {reference.describe()}, "
                "which is missing or empty. Set it where the crawl runs, or change "
                f"credentials.{name} in the store config."
            )
    return sorted(config.credentials)


@flow(name="crawl", flow_run_name="crawl-{store_id}")
def crawl_store(store_id: str) -> dict:
    """Sync the store's category tree, then ingest its products."""
    logger = get_run_logger()
    check_credentials(store_id)
    tree = sync_tree(store_id)
    products = ingest(store_id)
    coverage = measure_coverage(store_id)
    logger.info(
        "Store %r: %d of %d categories have the target of %d products",
        store_id,
        coverage["complete_count"],
        coverage["category_count"],
        coverage["target"],
    )
    changed_count = products["inserted"] + products["updated"]
    config = load_store(open_database(Settings()), store_id)
    if changed_count and config.deployments.embed.after_previous_stage:
        trigger_stage(store_id, "embed", f"{changed_count} products changed")
    return {"tree": tree, "products": products, "coverage": coverage}
