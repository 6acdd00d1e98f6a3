"""The `mkt serve` command: an HTTP API over every store's @champion classifier."""

import logging
from typing import Annotated

import typer

from mkt.cli.console import err, reports_errors

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@reports_errors
def serve(
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; 0.0.0.0 listens on every interface."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token clients must send; default: MKT_API_TOKEN, else none.",
            show_default=False,
        ),
    ] = None,
    memory_budget_mb: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="Estimated MB of classifiers and embedding models to keep loaded; "
            "default: MKT_SERVE_MEMORY_BUDGET_MB or 2048.",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Maximum names per classify request; default: MKT_SERVE_MAX_NAMES or 256.",
            show_default=False,
        ),
    ] = None,
    max_name_chars: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Maximum characters per name; default: MKT_SERVE_MAX_NAME_CHARS or 500.",
            show_default=False,
        ),
    ] = None,
    alias_check_interval_s: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Seconds between checks of the loaded stores' @champion aliases; "
            "default: MKT_SERVE_ALIAS_CHECK_INTERVAL_S or 30.",
            show_default=False,
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option(help="Log one line per HTTP request.")
    ] = True,
) -> None:
    """Serve every registered store's @champion classifier over HTTP until stopped.

    A store's classifier loads on its first request; past the memory budget the
    least recently used ones are unloaded. When a @champion alias moves, the
    server switches to the new version without a restart. If the new version
    fails to load, the old one keeps serving and GET /stores shows the error.
    API docs are at /docs. A token given with --token shows in the process list;
    MKT_API_TOKEN does not.

    Examples:
        mkt serve
        MKT_API_TOKEN=secret mkt serve --host 0.0.0.0 --port 8080
        mkt serve --memory-budget-mb 512 --max-batch 64
    """
    import uvicorn

    from mkt.serving import create_app
    from mkt.serving.settings import ServingSettings

    overrides = {
        "serve_memory_budget_mb": memory_budget_mb,
        "serve_max_names": max_batch,
        "serve_max_name_chars": max_name_chars,
        "serve_alias_check_interval_s": alias_check_interval_s,
    }
    settings = ServingSettings(
        **{name: value for name, value in overrides.items() if value is not None}
    )
    app = create_app(settings, token=token)
    has_token = app.state.serving.token is not None
    if host not in LOOPBACK_HOSTS and not has_token:
        logger.warning(
            "Serving on %r without an API token: anyone who can reach port %d can "
            "use it. Set one with --token or MKT_API_TOKEN",
            host,
            port,
        )

    err.print(
        f"Serving on http://{host}:{port} (API docs: /docs). Stop with Ctrl+C.",
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")
