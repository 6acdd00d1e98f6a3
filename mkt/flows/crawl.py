"""Crawl stage: sync a store's category tree and ingest its products through its connector."""

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from prefect import flow, get_run_logger, task

from mkt.catalog import (
    ingest_products,
    load_category_progress,
    load_store,
    refresh_category_counts,
    sync_category_tree,
)
from mkt.crawl_cursors import (
    CrawlLimits,
    StopRequest,
    crawl_categories,
    stop_on_signals,
    summarise_rejections,
)
from mkt.errors import ConfigError
from mkt.flows.context import open_database, trigger_stage
from mkt.settings import Settings
from mkt.stores.config import StoreConfig
from mkt.stores.connectors import Connector, PagedConnector, create_connector

logger = logging.getLogger(__name__)


@task(name="sync-category-tree")
def sync_tree(store_id: str) -> dict:
    """Read the store's category tree and record what was added, removed, renamed or moved."""
    logger = get_run_logger()
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)

    connector = open_connector(store_id, config)
    read_redirects = getattr(connector, "read_category_redirects", dict)
    result = sync_category_tree(
        engine, store_id, connector.read_category_tree(), read_redirects()
    )
    logger.info(
        "Store %r: %d categories (%d added, %d removed, %d renamed, %d moved, "
        "%d redirected)",
        store_id,
        result.category_count,
        result.added,
        result.removed,
        result.renamed,
        result.moved,
        result.redirected,
    )
    return asdict(result)


@task(name="ingest-products")
def ingest(store_id: str) -> dict:
    """Upsert the store's products and quarantine the rows that cannot be used."""
    logger = get_run_logger()
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)

    connector = open_connector(store_id, config)
    if isinstance(connector, PagedConnector):
        return crawl_pages(store_id, config, connector)
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


def crawl_pages(store_id: str, config: StoreConfig, connector: PagedConnector) -> dict:
    """Crawl the due categories page by page until done, out of window or stopped.

    SIGINT, SIGTERM and a Prefect cancellation let the page in hand commit, then stop.
    """
    logger = get_run_logger()
    engine = open_database(Settings())
    limits = CrawlLimits(
        window_s=config.crawl.window_h * 3600,
        revisit_after_s=config.crawl.revisit_after_h * 3600,
        target=config.target_products_per_category,
    )
    stop = StopRequest()
    with stop_on_signals(stop), watch_cancellation(stop):
        result = crawl_categories(engine, store_id, connector, limits=limits, stop=stop)

    ingest = result.ingest
    logger.info(
        "Store %r: %d pages of %d categories (%d finished): %d products inserted, "
        "%d updated, %d unchanged; stopped: %s",
        store_id,
        result.page_count,
        result.category_count,
        result.completed_category_count,
        ingest.inserted,
        ingest.updated,
        ingest.unchanged,
        result.stop_reason,
    )
    if ingest.rejected_count:
        logger.warning(
            "Store %r: %d rows quarantined (%s); see the quarantinedrow table",
            store_id,
            ingest.rejected_count,
            summarise_rejections(ingest.rejected),
        )
    summary = asdict(ingest)
    summary["rejected"] = dict(ingest.rejected)
    summary["stop_reason"] = result.stop_reason
    summary["page_count"] = result.page_count
    return summary


@contextmanager
def watch_cancellation(stop: StopRequest, poll_s: float = 2.0) -> Iterator[None]:
    """Poll this flow run's state and request a stop once Prefect is cancelling it.

    A process worker also sends SIGTERM on cancellation, which `stop_on_signals`
    handles; polling covers runs whose infrastructure does not signal the process.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    flow_run_id = flow_run.id
    finished = threading.Event()
    if flow_run_id is None:
        yield
        return

    def poll() -> None:
        with get_client(sync_client=True) as client:
            while not finished.wait(poll_s):
                try:
                    state = client.read_flow_run(flow_run_id).state
                except Exception as exc:  # the API may be briefly unreachable
                    logger.debug("Reading flow run %s failed: %s", flow_run_id, exc)
                    continue
                if state is not None and (
                    state.is_cancelling() or state.is_cancelled()
                ):
                    stop.request("cancelled")
                    return

    watcher = threading.Thread(target=poll, name="crawl-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        watcher.join(timeout=poll_s + 5)


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


def resolve_credentials(store_id: str, config: StoreConfig) -> dict[str, str]:
    """Read the value of every credential the store references.

    Raises:
        ConfigError: naming the first credential that is missing or empty.
    """
    values = {}
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
        values[name] = value
    return values


@task(name="check-credentials")
def check_credentials(store_id: str) -> list[str]:
    """Check that every credential the store references can be read; return their names."""
    config = load_store(open_database(Settings()), store_id)
    return sorted(resolve_credentials(store_id, config))


def open_connector(store_id: str, config: StoreConfig) -> Connector:
    """Build the store's connector with its credential values."""
    secrets = resolve_credentials(store_id, config)
    return create_connector(config.connector.kind, config.connector.options, secrets)


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
    if products.get("stop_reason", "done") not in ("done", "window"):
        logger.warning(
            "Store %r: crawl stopped (%s) after its last committed page; the next "
            "crawl resumes there",
            store_id,
            products["stop_reason"],
        )
    changed_count = products["inserted"] + products["updated"]
    config = load_store(open_database(Settings()), store_id)
    if changed_count and config.deployments.embed.after_previous_stage:
        trigger_stage(store_id, "embed", f"{changed_count} products changed")
    return {"tree": tree, "products": products, "coverage": coverage}
