"""The `mkt promote` and `mkt rollback` commands: move a store's `@champion` by hand."""

import getpass
from typing import Annotated

import typer

from mkt.cli.console import err, out, reports_errors


def cli_actor() -> str:
    """Return the actor recorded for a command run by the current user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        # No login name in some containers: the uid has no passwd entry and USER is unset.
        return "cli"


@reports_errors
def promote(
    store_id: Annotated[str, typer.Argument(help="Store slug, e.g. pricerunner-uk.")],
    version: Annotated[
        str | None,
        typer.Option(
            "--version", "-V", help="Classifier version. Default: the latest."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote even if the gate rejects the version; the history records it.",
        ),
    ] = False,
) -> None:
    """Make an evaluated classifier version the store's @champion if it passes the gate.

    The gate compares the version's test metrics with the champion's: the metric must
    improve by more than promotion.min_gain, no category path level may lose more than
    promotion.max_level_drop accuracy, and coverage at the precision target must reach
    promotion.min_coverage. A rejected version stays registered and is recorded with the
    reason.

    Examples:
        mkt promote pricerunner-uk
        mkt promote pricerunner-uk --version 3 --force
    """
    from mkt.flows.context import open_database
    from mkt.promotion import REJECTED, promote_classifier
    from mkt.registry import configure_mlflow
    from mkt.settings import Settings

    settings = Settings()
    configure_mlflow(settings)
    result = promote_classifier(
        open_database(settings), store_id, version, force=force, actor=cli_actor()
    )

    if result.decision is not None:
        out.print(gate_table(result))
    if result.action is None:
        err.print(
            f"Store {store_id!r}: version {result.version} is already @champion.",
            highlight=False,
        )
    elif result.action == REJECTED:
        err.print(
            f"Store {store_id!r}: version {result.version} rejected, @champion stays "
            f"version {result.previous_version}: {result.reason}. "
            f"Promote it anyway: mkt promote {store_id} --version {result.version} --force",
            highlight=False,
        )
        raise typer.Exit(1)
    else:
        err.print(
            f"Store {store_id!r}: version {result.version} is now @champion "
            f"(was {result.previous_version or 'none'}). "
            f"Undo: mkt rollback {store_id}",
            highlight=False,
        )


@reports_errors
def rollback(
    store_id: Annotated[str, typer.Argument(help="Store slug, e.g. pricerunner-uk.")],
) -> None:
    """Give @champion back to the version that held it before the current one.

    Each rollback steps one champion further back in the promotion history.

    Examples:
        mkt rollback pricerunner-uk
    """
    from mkt.flows.context import open_database
    from mkt.promotion import rollback_champion
    from mkt.registry import configure_mlflow
    from mkt.settings import Settings

    settings = Settings()
    configure_mlflow(settings)
    result = rollback_champion(open_database(settings), store_id, actor=cli_actor())
    err.print(
        f"Store {store_id!r}: @champion is version {result.version} again "
        f"(was {result.previous_version}).",
        highlight=False,
    )


def gate_table(result):
    """Return the gate's rules and outcomes as a rich table."""
    from rich.table import Table

    table = Table(
        "rule",
        "outcome",
        "detail",
        title=f"Promotion gate for version {result.version}",
    )
    for check in result.decision.checks:
        outcome = "[green]pass[/]" if check.is_passed else "[red]fail[/]"
        table.add_row(check.name, outcome, check.message)
    return table
