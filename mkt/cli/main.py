"""Build the `mkt` Typer app and handle what every command shares: logging and errors.

Heavy libraries (Prefect, MLflow, sentence-transformers) are imported inside the commands,
so `mkt --help` stays fast.
"""

import logging
import os
from typing import Annotated

import typer

from mkt.cli import (
    archive,
    classify,
    promotion,
    report,
    run,
    serve,
    status,
    stores,
    up,
)

app = typer.Typer(
    name="mkt",
    help="Keep one product-category classifier per marketplace store: crawl, embed, train, "
    "evaluate, classify.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("add-store")(stores.add_store)
app.command("list-stores")(stores.list_stores)
app.command("show-store")(stores.show_store)
app.command("remove-store")(stores.remove_store)
app.command("sync")(stores.sync)
app.command("up")(up.up)
app.command("run")(run.run)
app.command("classify")(classify.classify)
app.command("serve")(serve.serve)
app.command("promote")(promotion.promote)
app.command("rollback")(promotion.rollback)
app.command("status")(status.status)
app.command("report")(report.report)
app.command("archive")(archive.archive)


@app.callback()
def configure(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug messages.")
    ] = False,
) -> None:
    """Set up logging and point Prefect at the mkt data directory unless already configured."""
    from rich.logging import RichHandler

    from mkt.settings import Settings

    level = logging.DEBUG if verbose else logging.INFO
    from mkt.cli.console import err

    # Logs go to stderr like every other message, so stdout carries only results.
    handler = RichHandler(
        console=err, show_path=False, rich_tracebacks=False, markup=False
    )
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("mkt").setLevel(level)

    settings = Settings()
    os.environ.setdefault("PREFECT_HOME", str(settings.home_dir / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main() -> None:
    """Run the `mkt` command line."""
    app()


if __name__ == "__main__":
    main()
