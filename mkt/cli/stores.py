"""Store lifecycle commands: add-store and list-stores."""

from pathlib import Path
from typing import Annotated

import typer

from mkt.cli.console import err, out, reports_errors


@reports_errors
def add_store(
    store_id: Annotated[str, typer.Argument(help="Store slug, e.g. pricerunner-uk.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Store config YAML file.")
    ] = None,
) -> None:
    """Register a store from its config file, or update it if already registered.

    Examples:
        mkt add-store pricerunner-uk --config examples/pricerunner/store.yaml
    """
    from mkt.catalog import register_store
    from mkt.errors import ConfigError
    from mkt.flows.context import open_database
    from mkt.settings import Settings
    from mkt.stores.config import load_store_config

    if config is None:
        # TODO: built-in marketplace presets; until then every store needs --config.
        raise ConfigError(
            f"No config given for store {store_id!r}. Pass one: "
            f"mkt add-store {store_id} --config FILE"
        )
    store_config = load_store_config(config, store_id=store_id)
    is_new = register_store(open_database(Settings()), store_config)
    verb = "registered" if is_new else "updated"
    err.print(f"Store {store_id!r} {verb}. Next: mkt run {store_id}", highlight=False)


@reports_errors
def list_stores() -> None:
    """List the registered stores with their data and champion classifier.

    Examples:
        mkt list-stores
    """
    from rich.table import Table

    from mkt.catalog import list_store_rows, load_category_progress
    from mkt.flows.context import open_database
    from mkt.registry import configure_mlflow, get_champion, version_metric
    from mkt.settings import Settings
    from mkt.stores.config import StoreConfig

    settings = Settings()
    engine = open_database(settings)
    rows = list_store_rows(engine)
    if not rows:
        err.print("No stores registered. Add one: mkt add-store NAME --config FILE")
        return

    configure_mlflow(settings)
    table = Table(
        "store", "marketplace", "categories", "products", "champion", "weighted F1"
    )
    for row in rows:
        config = StoreConfig.model_validate_json(row.config_json)
        progress = load_category_progress(
            engine, row.store_id, config.target_products_per_category
        )
        champion = get_champion(row.store_id)
        metric = version_metric(champion, "weighted_f1") if champion else None
        table.add_row(
            row.store_id,
            row.marketplace,
            str(len(progress)),
            str(sum(item.product_count for item in progress)),
            f"v{champion.version}" if champion else "-",
            f"{metric:.3f}" if metric is not None else "-",
        )
    out.print(table)
