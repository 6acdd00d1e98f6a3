"""Store lifecycle commands: add-store, show-store, list-stores, remove-store and sync."""

from pathlib import Path
from typing import Annotated

import typer

from mkt.cli.console import err, out, reports_errors
from mkt.errors import MktError

StoreArgument = Annotated[
    str, typer.Argument(help="Store slug, e.g. amazon-de or allegro-pl.")
]


@reports_errors
def add_store(
    store_id: StoreArgument,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Store config YAML; default: the built-in preset."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a config field, e.g. --set classifier.k=5."
        ),
    ] = None,
    is_deploy: Annotated[
        bool,
        typer.Option(
            "--deploy/--no-deploy", help="Create the store's Prefect deployments."
        ),
    ] = True,
) -> None:
    """Register a store, record its config version in MLflow and create its deployments.

    Without --config, amazon, ebay and allegro ids (and regional ids such as amazon-de)
    use a built-in preset. Running it again with a changed config updates the store.

    Examples:
        mkt add-store amazon-de
        mkt add-store allegro-pl --set deployments.crawl.interval_h=12
        mkt add-store pricerunner-sample --config examples/pricerunner/store.yaml
    """
    from mkt.catalog import register_store
    from mkt.config_registry import record_config_version
    from mkt.flows.context import open_database
    from mkt.registry import configure_mlflow, mlflow_write_lock
    from mkt.settings import Settings
    from mkt.stores.config import parse_store_config, read_store_document
    from mkt.stores.presets import apply_overrides, build_preset_config

    settings = Settings()
    if config is not None:
        document, source = read_store_document(config, store_id), repr(str(config))
    else:
        document, source = build_preset_config(store_id, settings.home_dir), "(preset)"
    store_config = parse_store_config(
        apply_overrides(document, overrides or []), source
    )
    if store_config.store_id != store_id:
        from mkt.errors import ConfigError

        raise ConfigError(
            f"--set store_id={store_config.store_id} cannot rename {store_id!r}."
        )

    is_new = register_store(open_database(settings), store_config)
    configure_mlflow(settings)
    with mlflow_write_lock(settings):
        version = record_config_version(settings, store_config)
    err.print(
        f"Store {store_id!r} {'registered' if is_new else 'updated'}; config version "
        f"{version or 'unchanged'}.",
        highlight=False,
    )
    if is_deploy:
        try:
            print_plan(sync_stores_now({store_id}))
        except Exception as exc:  # the store stays registered, so say how to finish
            raise MktError(
                f"Store {store_id!r} is registered, but its deployments could not be "
                f"created: {type(exc).__name__}: {exc}. Fix that, then run: mkt sync"
            ) from exc
    err.print(f"Next: mkt run {store_id}", highlight=False)


def sync_stores_now(store_ids: set[str] | None, *, is_dry_run: bool = False):
    """Sync the deployments of some stores (or all, with None) and return the plan."""
    from mkt.catalog import list_store_rows
    from mkt.flows.context import open_database
    from mkt.settings import Settings
    from mkt.stores.config import StoreConfig
    from mkt.workers.deployments import run_sync

    rows = list_store_rows(open_database(Settings()))
    configs = [StoreConfig.model_validate_json(row.config_json) for row in rows]
    if store_ids is not None:
        configs = [config for config in configs if config.store_id in store_ids]
    return run_sync(configs, store_ids=store_ids, is_dry_run=is_dry_run)


def print_plan(plan, *, is_dry_run: bool = False) -> None:
    """Print a sync plan's changes to stdout and its totals to stderr."""
    for line in plan.describe():
        out.print(line, highlight=False)
    err.print(
        f"Deployments{' (dry run, nothing changed)' if is_dry_run else ''}: "
        f"{len(plan.to_create)} created, {len(plan.to_update)} updated, "
        f"{len(plan.to_delete)} deleted, {plan.unchanged} unchanged.",
        highlight=False,
    )


@reports_errors
def sync(
    is_dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the changes without making them.")
    ] = False,
) -> None:
    """Make the Prefect server's deployments match the registered store configs.

    Creates what is missing, updates what differs and deletes deployments of removed
    stores; deployments that mkt did not create (no mkt-managed tag) are left alone.

    Examples:
        mkt sync --dry-run
        mkt sync
    """
    print_plan(sync_stores_now(None, is_dry_run=is_dry_run), is_dry_run=is_dry_run)


@reports_errors
def show_store(store_id: StoreArgument) -> None:
    """Print a store's config and the history of its config versions.

    Examples:
        mkt show-store amazon-de
    """
    import yaml
    from rich.table import Table

    from mkt.catalog import load_store
    from mkt.config_registry import load_config_history
    from mkt.flows.context import open_database
    from mkt.registry import configure_mlflow
    from mkt.settings import Settings

    settings = Settings()
    config = load_store(open_database(settings), store_id)
    out.print(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), highlight=False
    )

    configure_mlflow(settings)
    history = Table(
        "version", "recorded (UTC)", "author", "change", title="Config history"
    )
    for version in load_config_history(store_id):
        created = version.created_at.strftime("%Y-%m-%d %H:%M")
        history.add_row(version.version, created, version.author, version.summary)
    err.print(history)


@reports_errors
def remove_store(
    store_id: StoreArgument,
    is_purge: Annotated[
        bool,
        typer.Option(
            "--purge", help="Also delete the store's categories and products."
        ),
    ] = False,
    is_confirmed: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask.")
    ] = False,
) -> None:
    """Unregister a store and delete its deployments; data stays unless --purge.

    Examples:
        mkt remove-store amazon-de
        mkt remove-store amazon-de --purge --yes
    """
    import shutil

    from mkt.catalog import load_store
    from mkt.catalog import remove_store as unregister_store
    from mkt.flows.context import open_database
    from mkt.settings import Settings

    settings = Settings()
    engine = open_database(settings)
    load_store(engine, store_id)
    what = "its deployments, categories and products" if is_purge else "its deployments"
    if not is_confirmed:
        typer.confirm(f"Remove store {store_id!r} and {what}?", abort=True, err=True)

    unregister_store(engine, store_id, is_purge=is_purge)
    print_plan(sync_stores_now({store_id}))
    if is_purge:
        shutil.rmtree(settings.store_dir(store_id), ignore_errors=True)
    err.print(f"Store {store_id!r} removed ({what}).", highlight=False)


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
