"""The `mkt report` command: write a store's self-contained HTML report."""

from pathlib import Path
from typing import Annotated

import typer

from mkt.cli.console import err, reports_errors


@reports_errors
def report(
    store_id: Annotated[str, typer.Argument(help="Store slug, e.g. pricerunner-uk.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="HTML file to write. Default: STORE-report.html here.",
        ),
    ] = None,
) -> None:
    """Write a store's HTML report and log its plots to the champion's MLflow run.

    The report is one file with the plots embedded: products per category against the
    target, the champion's accuracy per category path level, its top-score distribution
    on the test split, and its most frequent confusions. The same PNGs go to the
    champion's MLflow run under report/.

    Examples:
        mkt report pricerunner-uk
        mkt report pricerunner-uk --output /tmp/pricerunner.html
    """
    from datetime import UTC, datetime

    from mkt.catalog import load_store
    from mkt.flows.context import open_database
    from mkt.registry import configure_mlflow
    from mkt.report import build_store_report, load_report_data, log_report_figures
    from mkt.settings import Settings

    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)
    configure_mlflow(settings)

    data = load_report_data(engine, config, datetime.now(UTC))
    store_report = build_store_report(data)
    path = output or Path(f"{store_id}-report.html")
    path.write_text(store_report.html, encoding="utf-8")
    logged = log_report_figures(store_report)

    err.print(
        f"Store {store_id!r}: report with {len(store_report.figures)} plots written to "
        f"{path}.",
        highlight=False,
    )
    if logged:
        err.print(
            f"Plots logged to MLflow run {store_report.champion_run_id} under report/.",
            highlight=False,
        )
    else:
        err.print(
            f"No champion, so nothing was logged to MLflow. Train one: mkt run {store_id}",
            highlight=False,
        )
