"""``gradsweep ray start|stop|status``: a local Ray kept running between studies
(:mod:`search.warm_ray`)."""

from __future__ import annotations

from typing import Annotated

import typer

from search.cli.terminal import app, fail, out

ray_app = typer.Typer(
    no_args_is_help=True,
    help="A local Ray kept running between studies: later runs attach to it (saves Ray's start).",
)
app.add_typer(ray_app, name="ray", rich_help_panel="Run studies")


@ray_app.command("start")
def start(
    cpus: Annotated[
        int | None, typer.Option(help="Logical CPUs it offers to trials (default: the machine's).")
    ] = None,
) -> None:
    """Start a warm local Ray (127.0.0.1, token auth) for later `gradsweep run`s."""
    from search import warm_ray
    from search.errors import UserError

    try:
        warm = warm_ray.start(cpus)
    except UserError as exc:
        raise fail(str(exc)) from None
    out.print(
        f"warm Ray running at {warm.address} ({warm.cpus} CPUs, pid {warm.pid}); "
        "'gradsweep run' without --address now uses it, 'gradsweep ray stop' ends it",
        highlight=False,
        soft_wrap=True,
    )


@ray_app.command("stop")
def stop(
    force: Annotated[
        bool, typer.Option("--force", help="Also while a study runs on it (the study fails).")
    ] = False,
) -> None:
    """Stop the warm local Ray; refused while a study runs on it, unless --force."""
    from search import warm_ray
    from search.errors import UserError

    try:
        warm = warm_ray.stop(force)
    except UserError as exc:
        raise fail(str(exc)) from None
    out.print(
        f"stopped the warm Ray at {warm.address} (pid {warm.pid})" if warm else "no warm Ray runs",
        highlight=False,
    )


@ray_app.command("status")
def status() -> None:
    """Whether a warm local Ray runs, where, and since when (exit 1 if none)."""
    from search import warm_ray

    warm = warm_ray.running()
    if warm is None:
        out.print("no warm Ray runs; 'gradsweep ray start' starts one")
        raise typer.Exit(code=1)
    out.print(
        f"warm Ray at {warm.address}: {warm.cpus} CPUs, pid {warm.pid}, since {warm.started}, "
        f"log {warm.log}",
        highlight=False,
        soft_wrap=True,
    )
