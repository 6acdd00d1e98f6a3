"""The `mkt status` command: every store's data, stages, champion and alerts in one table."""

import json
import logging
from datetime import UTC, datetime
from typing import Annotated

import typer

from mkt.cli.console import err, out, reports_errors

logger = logging.getLogger(__name__)

STAGES = ("crawl", "embed", "train", "evaluate", "monitor")


@reports_errors
def status(
    store_id: Annotated[
        str | None,
        typer.Argument(help="Store slug, e.g. allegro-pl; default: every store."),
    ] = None,
    categories: Annotated[
        bool,
        typer.Option(
            "--categories",
            help="Show the store's category coverage against its product target "
            "instead of the stage table.",
        ),
    ] = False,
    least: Annotated[
        int,
        typer.Option(
            "--least", min=1, help="Least covered categories listed with --categories."
        ),
    ] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per store instead.")
    ] = False,
    timeout_s: Annotated[
        float,
        typer.Option(
            "--timeout-s", min=0.1, help="Seconds to wait for the Prefect API."
        ),
    ] = 5.0,
) -> None:
    """Show every store's categories, products, stage times, champion, flow runs and alerts.

    Flow run states come from the Prefect API named by PREFECT_API_URL; without one, or
    when it does not respond within --timeout-s, they show as '-'.

    With --categories, show one store's coverage instead: a histogram of categories by
    share of the target products per category, and the least covered categories.

    Examples:
        mkt status
        mkt status --json
        mkt status allegro-pl --categories --least 20
    """
    from mkt.catalog import list_store_rows, load_store
    from mkt.flows.context import open_database
    from mkt.registry import configure_mlflow
    from mkt.settings import Settings
    from mkt.status import collect_store_status
    from mkt.stores.config import StoreConfig

    settings = Settings()
    engine = open_database(settings)
    if categories:
        show_category_coverage(engine, store_id, least, as_json)
        return
    rows = list_store_rows(engine)
    if store_id is not None:
        load_store(engine, store_id)
        rows = [row for row in rows if row.store_id == store_id]
    if not rows:
        err.print("No stores registered. Add one: mkt add-store NAME --config FILE")
        return

    configure_mlflow(settings)
    statuses = [
        collect_store_status(
            engine,
            settings,
            StoreConfig.model_validate_json(row.config_json),
            row.marketplace,
        )
        for row in rows
    ]
    states = load_flow_run_states([item.store_id for item in statuses], timeout_s)
    for item in statuses:
        item.flow_run_states = {
            stage: states.get((item.store_id, stage), "-") for stage in STAGES
        }

    if as_json:
        for item in statuses:
            typer.echo(json.dumps(item.to_dict()))
        return
    out.print(status_table(statuses, datetime.now(UTC)))


def show_category_coverage(
    engine, store_id: str | None, least: int, as_json: bool
) -> None:
    """Print a store's coverage histogram and its least covered categories."""
    from mkt.catalog import load_category_progress, load_store
    from mkt.coverage import coverage_histogram, least_covered
    from mkt.errors import ConfigError

    if store_id is None:
        raise ConfigError(
            "--categories needs a store. Name one: mkt status STORE --categories"
        )
    config = load_store(engine, store_id)
    target = config.target_products_per_category
    progress = load_category_progress(engine, store_id, target)
    histogram = coverage_histogram(progress)
    lowest = least_covered(progress, least)

    if as_json:
        document = {
            "store_id": store_id,
            "target": target,
            "category_count": len(progress),
            "complete_count": sum(item.is_complete for item in progress),
            "histogram": {item.label: item.category_count for item in histogram},
            "least_covered": [
                {
                    "category_id": item.external_id,
                    "category_path": item.path,
                    "product_count": item.product_count,
                    "products_updated_at": item.products_updated_at,
                }
                for item in lowest
            ],
        }
        typer.echo(json.dumps(document, default=str))
        return
    out.print(coverage_tables(store_id, target, histogram, lowest))


def coverage_tables(store_id, target, histogram, lowest):
    """Return the coverage histogram and the least covered categories as rich tables."""
    from rich.console import Group
    from rich.table import Table

    total = max(1, sum(item.category_count for item in histogram))
    bars = Table(
        "share of target", "categories", "", title=f"{store_id}: target {target}"
    )
    for item in histogram:
        bar = "#" * round(30 * item.category_count / total)
        bars.add_row(item.label, str(item.category_count), bar)
    least_table = Table("category", "products", "last update", title="least covered")
    for item in lowest:
        updated = item.products_updated_at
        least_table.add_row(
            item.path,
            f"{item.product_count}/{target}",
            "-" if updated is None else updated.strftime("%Y-%m-%d %H:%M"),
        )
    return Group(bars, least_table)


def load_flow_run_states(
    store_ids: list[str], timeout_s: float
) -> dict[tuple[str, str], str]:
    """Return the state of each store's latest flow run per stage, or {} without a Prefect API."""
    import asyncio

    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if not api_url:
        logger.debug("No PREFECT_API_URL set, so flow run states are not shown")
        return {}
    try:
        return asyncio.run(
            asyncio.wait_for(read_flow_run_states(store_ids, timeout_s), timeout_s)
        )
    except Exception as exc:  # any network or API error only hides the states
        logger.warning(
            "Prefect API at %s did not respond (%s: %s); flow run states show as '-'",
            api_url,
            type(exc).__name__,
            exc,
        )
        return {}


async def read_flow_run_states(
    store_ids: list[str], timeout_s: float
) -> dict[tuple[str, str], str]:
    """Query the latest flow run named '<stage>-<store_id>' of each stage's flow."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    # Bounded, so hundreds of stores do not open hundreds of connections at once.
    limit = asyncio.Semaphore(8)

    async with get_client(httpx_settings={"timeout": timeout_s}) as client:

        async def latest_state(store_id: str, stage: str) -> str | None:
            async with limit:
                flow_runs = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[stage])),
                    flow_run_filter=FlowRunFilter(
                        name=FlowRunFilterName(any_=[f"{stage}-{store_id}"])
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                    limit=1,
                )
            if not flow_runs or flow_runs[0].state is None:
                return None
            return flow_runs[0].state.name

        keys = [(store_id, stage) for store_id in store_ids for stage in STAGES]
        states = await asyncio.gather(*(latest_state(*key) for key in keys))
    return {key: state for key, state in zip(keys, states) if state is not None}


# Short forms keep one store on one line in a terminal about 160 columns wide.
STATE_LABELS = {
    "Completed": "[green]ok[/]",
    "Failed": "[red]failed[/]",
    "Crashed": "[red]crashed[/]",
    "TimedOut": "[red]timed out[/]",
    "Running": "[yellow]running[/]",
    "Late": "[yellow]late[/]",
}


def status_table(statuses, now: datetime):
    """Return the stores' statuses as a rich table, one row per store."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="Stores",
        caption="Stage cells: time since the stage last ran, then its latest flow run "
        "state (ok = Completed).",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("store", no_wrap=True)
    table.add_column("categories", justify="right")
    table.add_column("at target", justify="right")
    table.add_column("products", justify="right")
    for stage in STAGES:
        table.add_column(stage)
    table.add_column("champion")
    table.add_column("test metrics")
    table.add_column("challenger")
    table.add_column("alerts")
    for item in statuses:
        table.add_row(
            item.store_id,
            str(item.category_count),
            f"{item.complete_count}/{item.category_count}",
            f"{item.product_count:,}",
            *(stage_cell(item, stage, now) for stage in STAGES),
            f"v{item.champion_version}" if item.champion_version else "-",
            metrics_cell(item),
            challenger_cell(item),
            alerts_cell(item),
        )
    return table


def stage_cell(item, stage: str, now: datetime) -> str:
    """Return a stage's age and the state of its latest flow run, e.g. '3h ok'."""
    from rich.markup import escape

    from mkt.status import format_age

    times = {
        "crawl": item.last_crawl_at,
        "embed": item.last_embed_at,
        "train": item.last_train_at,
        "evaluate": item.last_evaluate_at,
    }
    age = format_age(times.get(stage), now)
    state = item.flow_run_states.get(stage, "-")
    if state == "-":
        return age
    return f"{age} {STATE_LABELS.get(state, escape(state))}"


def metrics_cell(item) -> str:
    """Return the champion's main test metrics."""
    metrics = item.champion_metrics
    labels = (
        ("weighted_f1", "F1"),
        ("accuracy", "acc"),
        ("coverage_at_precision", "cov"),
    )
    return (
        " ".join(
            f"{label} {metrics[key]:.3f}" for key, label in labels if key in metrics
        )
        or "-"
    )


def challenger_cell(item) -> str:
    """Return the newest version newer than the champion and its promotion status."""
    if item.challenger_version is None:
        return "-"
    style = "red" if item.challenger_status == "rejected" else "yellow"
    return f"v{item.challenger_version} [{style}]{item.challenger_status}[/]"


def alerts_cell(item) -> str:
    """Return the open alerts as 'severity: kind', critical ones in red."""
    if not item.alerts:
        return "[green]none[/]"
    return ", ".join(
        f"[red]{alert}[/]" if alert.startswith("critical") else f"[yellow]{alert}[/]"
        for alert in item.alerts
    )
