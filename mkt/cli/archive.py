"""The `mkt archive` command: move a store's old products to the cold tier."""

import json
from typing import Annotated

import typer

from mkt.cli.console import err, reports_errors


@reports_errors
def archive(
    store_id: Annotated[str, typer.Argument(help="Store slug, e.g. allegro-pl.")],
    older_than_days: Annotated[
        float | None,
        typer.Option(
            "--older-than-days",
            min=0.0,
            help="Archive products last seen more than this many days ago. "
            "Default: MKT_ARCHIVE_AFTER_DAYS (90).",
        ),
    ] = None,
) -> None:
    """Move a store's products not seen for a while from the hot to the cold tier.

    Needs a cold tier: MKT_COLD_DIR for SQLite, or MKT_HOT_TABLESPACE and
    MKT_COLD_TABLESPACE for PostgreSQL. Training snapshots read both tiers.

    Examples:
        MKT_COLD_DIR=/mnt/cheap/mkt mkt archive allegro-pl
        mkt archive allegro-pl --older-than-days 30
    """
    from mkt.cli.run import quiet_prefect_console
    from mkt.flows.archive import archive_store

    quiet_prefect_console()
    summary = archive_store(store_id, older_than_days)
    typer.echo(json.dumps(summary))
    err.print(
        f"Store {store_id!r}: {summary['product_count']} products moved to the cold "
        f"tier. Check coverage: mkt status {store_id} --categories"
    )
