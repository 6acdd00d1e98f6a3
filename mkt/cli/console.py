"""Consoles for results (stdout) and messages (stderr), and the CLI's error edge."""

import functools
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.text import Text

from mkt.errors import MktError

out = Console()
err = Console(stderr=True, soft_wrap=True)
Command = TypeVar("Command", bound=Callable)


def reports_errors(command: Command) -> Command:
    """Show `MktError`s raised by a command as a red message on stderr and exit with 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MktError as exc:
            err.print(Text.assemble(("Error: ", "bold red"), str(exc)))
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]
