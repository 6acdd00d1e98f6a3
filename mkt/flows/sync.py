"""Sync flow: keep the Prefect server's deployments matching the registered store configs."""

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client

from mkt.catalog import list_store_rows
from mkt.flows.context import open_database
from mkt.settings import Settings
from mkt.stores.config import StoreConfig
from mkt.workers.deployments import sync_deployments


def registered_configs(settings: Settings) -> list[StoreConfig]:
    """Return the config of every registered store."""
    rows = list_store_rows(open_database(settings))
    return [StoreConfig.model_validate_json(row.config_json) for row in rows]


@flow(name="sync", flow_run_name="sync-stores")
async def sync_stores() -> list[str]:
    """Create, update and delete deployments so the server matches the store configs."""
    logger = get_run_logger()
    settings = Settings()
    configs = registered_configs(settings)
    async with get_client() as client:
        plan = await sync_deployments(
            client, configs, concurrency=settings.sync_concurrency
        )
    for line in plan.describe():
        logger.info("Deployment %s", line)
    return plan.describe()
