"""The `mkt run` command: run a store's pipeline stages in this process."""

import logging
from enum import StrEnum
from typing import Annotated

import typer

from mkt.cli.console import err, out, reports_errors


class Stage(StrEnum):
    """Pipeline stages in the order they run."""

    crawl = "crawl"
    embed = "embed"
    train = "train"
    evaluate = "evaluate"


@reports_errors
def run(
    store_id: Annotated[str, typer.Argument(help="Store slug, e.g. pricerunner-uk.")],
    stage: Annotated[
        list[Stage] | None,
        typer.Option(
            "--stage", "-s", help="Stage to run; repeat for several. Default: all."
        ),
    ] = None,
) -> None:
    """Run a store's pipeline stages here, in order: crawl, embed, train, evaluate.

    Each stage is a Prefect flow; without a Prefect server configured, Prefect records the
    runs in its local database under the mkt data directory.

    Examples:
        mkt run pricerunner-uk
        mkt run pricerunner-uk --stage train --stage evaluate
    """
    from mkt.catalog import load_store
    from mkt.flows.context import open_database
    from mkt.settings import Settings

    load_store(open_database(Settings()), store_id)
    quiet_prefect_console()
    selected = set(stage or list(Stage))
    for item in Stage:
        if item in selected:
            err.rule(f"{item.value} {store_id}")
            result = run_stage(item, store_id)
            print_stage_result(item, result)


class _MktErrorTracebackFilter(logging.Filter):
    """Drop the traceback from Prefect's log of a failed run when the error is an `MktError`.

    Their message already names the bad value and the fix, and the CLI prints it once.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from mkt.errors import MktError

        if record.exc_info and isinstance(record.exc_info[1], MktError):
            record.exc_info = None
            record.exc_text = None
        return True


def _is_not_completion_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Finished in state Completed")


def quiet_prefect_console() -> None:
    """Keep Prefect's console output to what an operator needs while stages run here.

    Tracebacks of `MktError`s are dropped everywhere, and each task's "Finished in state
    Completed()" line is dropped from the console only, so the Prefect UI still has it.
    """
    from prefect.logging.configuration import setup_logging

    setup_logging()
    point_console_handlers_at_stderr()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        run_logger = logging.getLogger(name)
        if not any(isinstance(f, _MktErrorTracebackFilter) for f in run_logger.filters):
            run_logger.addFilter(_MktErrorTracebackFilter())
    for handler in logging.getLogger().handlers:
        if _is_not_completion_line not in handler.filters:
            handler.addFilter(_is_not_completion_line)


def point_console_handlers_at_stderr() -> None:
    """Make Prefect's console handlers write to the current `sys.stderr`.

    Prefect binds them to the stream that was `sys.stderr` when its logging was first set
    up. A host that swapped the stream since (a test runner, a notebook) may have closed it.
    """
    import sys

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        item
        for item in logging.Logger.manager.loggerDict.values()
        if isinstance(item, logging.Logger)
    ]
    for handler in {h for item in loggers for h in item.handlers}:
        if (
            isinstance(handler, PrefectConsoleHandler)
            and handler.stream is not sys.stderr
        ):
            # Not setStream: it flushes the old stream, which fails when that is closed.
            handler.stream = sys.stderr
            handler.console.file = sys.stderr


def run_stage(stage: Stage, store_id: str) -> dict:
    """Call one stage's flow and return its summary."""
    if stage is Stage.crawl:
        from mkt.flows.crawl import crawl_store

        return crawl_store(store_id)
    if stage is Stage.embed:
        from mkt.flows.embed import embed_store

        return embed_store(store_id, show_progress=err.is_terminal)
    if stage is Stage.train:
        from mkt.flows.train import train_store

        return train_store(store_id)
    from mkt.flows.evaluate import evaluate_store

    return evaluate_store(store_id)


def print_stage_result(stage: Stage, result: dict) -> None:
    """Print a short summary of a finished stage; the evaluation table goes to stdout."""
    if stage is Stage.crawl:
        products, coverage = result["products"], result["coverage"]
        err.print(
            f"Crawl: {result['tree']['category_count']} categories, "
            f"{products['inserted']} products inserted, {products['updated']} updated, "
            f"{products['unchanged']} unchanged, {sum(products['rejected'].values())} quarantined; "
            f"{coverage['complete_count']}/{coverage['category_count']} categories at the target "
            f"of {coverage['target']}.",
            highlight=False,
        )
    elif stage is Stage.embed:
        err.print(
            f"Embed: {result['name_count']} names in the snapshot, "
            f"{result['new_embeddings']} newly embedded.",
            highlight=False,
        )
    elif stage is Stage.train:
        err.print(
            f"Train: classifier version {result['classifier_version']} "
            f"(MLflow run {result['mlflow_run_id']}).",
            highlight=False,
        )
    else:
        out.print(evaluation_table(result))
        err.print(
            f"Champion: {'yes' if result['is_champion'] else 'no'} ({result['reason']})."
        )


def evaluation_table(result: dict):
    """Return the metrics of an evaluation as a rich table."""
    from rich.table import Table

    table = Table(
        "metric", "value", title=f"Classifier version {result['classifier_version']}"
    )
    for key, value in result["metrics"].items():
        shown = f"{int(value)}" if key == "test_count" else f"{value:.4f}"
        table.add_row(key, shown)
    return table
