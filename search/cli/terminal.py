"""The CLI's terminal: the typer app, its consoles, one-line errors, quiet libraries."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Hyperparameter search for deep MLPs: activation, alpha, initializer, batch norm.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
STATE = {"debug": False}


def fail(message: str) -> typer.Exit:
    """Print one line naming what was wrong and return the exit to raise (code 2)."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


def quiet() -> None:
    """Keep library chatter off the terminal unless --debug."""
    if not STATE["debug"]:
        warnings.filterwarnings("ignore")
        # MLflow sets its loggers' level from this when it is imported.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        import mlflow  # noqa: F401  (MLflow sets its loggers' levels when imported: first)

        for name in ("mlflow", "alembic", "optuna", "ray", "ray.tune", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and library logs.")
    ] = False,
) -> None:
    STATE["debug"] = debug
