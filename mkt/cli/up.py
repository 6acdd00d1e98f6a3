"""The `mkt up` command: run the local stack in the foreground."""

from typing import Annotated

import typer

from mkt.cli.console import err, out, reports_errors


@reports_errors
def up(
    prefect_port: Annotated[
        int, typer.Option(help="Port of the Prefect server and UI.")
    ] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
) -> None:
    """Start a Prefect server, a process worker and the MLflow UI until Ctrl-C.

    The Prefect server keeps its SQLite database in MKT_HOME/prefect, or uses PostgreSQL
    when PREFECT_API_DATABASE_CONNECTION_URL is set. Every registered store's deployments
    are synced on start, so scheduled runs then happen by themselves. Logs go to
    MKT_HOME/logs.

    Examples:
        mkt up
        mkt up --prefect-port 4300 --mlflow-port 5300
    """
    from mkt.settings import Settings
    from mkt.workers.stack import StackPorts, run_until_signal, start_stack

    ports = StackPorts(prefect=prefect_port, mlflow=mlflow_port)
    err.print("Starting the Prefect server, a process worker and the MLflow UI...")
    stack = start_stack(Settings(), ports)
    for name, process in stack.processes.items():
        err.print(f"{name} started (PID {process.pid})", highlight=False)
    out.print(f"Prefect UI: http://127.0.0.1:{ports.prefect}", highlight=False)
    out.print(f"Prefect API: http://127.0.0.1:{ports.prefect}/api", highlight=False)
    out.print(f"MLflow UI: http://127.0.0.1:{ports.mlflow}", highlight=False)
    err.print("Press Ctrl-C to stop.")
    try:
        reason = run_until_signal(stack)
    finally:
        stack.stop()
    err.print(f"Stopped ({reason}).", highlight=False)
