"""Commands that run trials: run, resume, confirm, sync."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from search.cli.interrupts import sigterm_as_ctrl_c
from search.cli.options import ConfigArg, NewStudy, Overrides, RayAddress, StudyTrackingUri
from search.cli.terminal import app, err, fail, out, quiet
from spaces import ConfigError, load_config

if TYPE_CHECKING:  # imported where used: a bad flag's error must not wait for Ray and Optuna
    from search.result import StudyResult

PANEL = "Run studies"


@app.command(rich_help_panel=PANEL)
def run(
    config: ConfigArg,
    set_: Overrides = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster: auto, HOST:PORT or ray://HOST:10001; local: a Ray of the "
            "study's own (default: the warm Ray of 'gradsweep ray start' if one runs, else local)."
        ),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    num_samples: Annotated[int | None, typer.Option(help="Number of trials.")] = None,
    study: NewStudy = None,
) -> None:
    """Run a search and print its leaderboard."""
    overrides = list(set_ or [])
    if num_samples is not None:
        overrides.append(f"num_samples={num_samples}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    quiet()
    from search.errors import UserError
    from search.study import run_study

    _say_warm_ray(address)
    try:
        with sigterm_as_ctrl_c(), _resume_hint(address):
            result = run_study(
                cfg, address=address, tracking_uri=tracking_uri, study_name=study, progress=True
            )
    except UserError as exc:
        raise fail(str(exc)) from None
    _summary(result)


def _say_warm_ray(address: str | None) -> None:
    """Name the warm Ray (``gradsweep ray start``) a study without an address will run on."""
    from search import environment, warm_ray

    warm = warm_ray.usable() if environment.ray_address(address) is None else None
    if warm is not None:
        out.print(
            f"Ray: the warm Ray at {warm.address} ({warm.cpus} CPUs; --address local for a Ray "
            "of this study's own)",
            highlight=False,
            soft_wrap=True,
        )


@contextlib.contextmanager
def _resume_hint(address: str | None) -> Iterator[None]:
    """Ctrl+C during a study: what it stopped and the resume command (naming the Ray cluster
    it ran on, if one was given), then exit 130 as for any Ctrl+C."""
    from search.errors import StudyInterrupted

    try:
        yield
    except StudyInterrupted as exc:
        if address:
            exc.resume_flags += ["--address", address]
        err.print(str(exc), soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(code=130) from None


def _summary(result: StudyResult) -> None:
    """The end of a run: leaderboard, notes, and where to look next."""
    from search.environment import redact
    from search.leaderboard import render

    board = result.leaderboard
    name, uri = result.study_name, redact(result.tracking_uri)
    experiment = result.experiment_id
    if not board.empty:
        sys.stdout.write(render(board, "table", top=20, title=f"Leaderboard: {name}"))
    for note in result.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    trials = f"{len(board)} trials"
    spooled = result.spooled
    if spooled or board.empty:  # MLflow was away: Optuna knows how many finished
        trials = f"{result.finished} trials finished"
    line = f"study [bold]{name}[/] - {trials} in {result.seconds:.0f} s"
    if spooled:
        output = result.output_dir
        line += f"; {spooled} MLflow writes queued for 'gradsweep sync --output-dir {output}'"
    out.print(line, highlight=False, soft_wrap=True)
    out.print(f"MLflow parent run {result.parent_run_id} in {uri}", highlight=False, soft_wrap=True)
    out.print(
        "Open the MLflow UI:  " + ui_command(uri, experiment), highlight=False, soft_wrap=True
    )
    out.print(
        f"Leaderboard again:   gradsweep leaderboard --study {name} --tracking-uri {uri}",
        highlight=False,
        soft_wrap=True,
    )


@app.command(rich_help_panel=PANEL)
def resume(
    study: Annotated[str, typer.Option(help="The study to finish, as printed by 'gradsweep run'.")],
    tracking_uri: StudyTrackingUri = None,
    address: RayAddress = None,
) -> None:
    """Finish a study whose driver died: finished trials stay, interrupted ones resume."""
    quiet()
    from search.errors import UserError
    from search.study import resume_study

    _say_warm_ray(address)
    try:
        with sigterm_as_ctrl_c(), _resume_hint(address):
            result = resume_study(study, tracking_uri=tracking_uri, address=address, progress=True)
    except UserError as exc:
        raise fail(str(exc)) from None
    if not result.ran:
        out.print(result.notes[0], highlight=False, soft_wrap=True)
        return
    _summary(result)


@app.command(rich_help_panel=PANEL)
def confirm(
    study: Annotated[str, typer.Option(help="The study whose winners to confirm.")],
    seeds: Annotated[int, typer.Option(help="Fresh seeds per configuration (replicates).")] = 5,
    factor: Annotated[
        str, typer.Option(help="Confirm the best configuration of each level of this factor.")
    ] = "activation",
    tracking_uri: StudyTrackingUri = None,
    address: RayAddress = None,
) -> None:
    """Retrain each level's best configuration with fresh seeds, scored on the test split."""
    quiet()
    from search.confirm import confirm_study
    from search.errors import UserError

    _say_warm_ray(address)
    try:
        result = confirm_study(
            study,
            seeds=seeds,
            factor=factor,
            tracking_uri=tracking_uri,
            address=address,
            progress=True,
        )
    except UserError as exc:
        raise fail(str(exc)) from None
    _summary(result)


@app.command(rich_help_panel=PANEL)
def sync(
    output_dir: Annotated[Path, typer.Option(help="The studies' output directory.")] = Path(
        "gradsweep-runs"
    ),
    tracking_uri: Annotated[
        str | None, typer.Option(help="Send to this tracking URI instead.")
    ] = None,
) -> None:
    """Replay MLflow writes that were saved to disk while the tracking server was unreachable."""
    quiet()
    from search.ending import finish_spooled
    from search.spool import replay

    spools = sorted((output_dir / "mlflow-spool").glob("*.jsonl"))
    if not spools:
        out.print(f"nothing to sync in {output_dir / 'mlflow-spool'}")
        return
    left_total = 0
    for path in spools:
        done, left = replay(path, tracking_uri)
        left_total += left
        out.print(
            f"{path.stem}: {done} writes delivered" + (f", {left} still pending" if left else "")
        )
        if not left and path.exists():  # the study's end, which needed those writes first
            try:
                for line in finish_spooled(path, tracking_uri):
                    out.print(line, highlight=False, soft_wrap=True)
            except Exception as exc:
                left_total += 1
                out.print(f"{path.stem}: end not logged ({exc.__class__.__name__}: {exc})")
    if left_total:
        raise fail(f"--tracking-uri: {left_total} writes still undeliverable; is MLflow up?")


def ui_command(tracking_uri: str, experiment_id: str) -> str:
    """How to open the MLflow UI on ``tracking_uri`` from any folder, on the study's runs:
    absolute paths for the ``mlflow`` of this installation and for a SQLite store."""
    from search.stores import sqlite_file, ui_url

    if tracking_uri.startswith(("http://", "https://")):
        return f"open {ui_url(tracking_uri, experiment_id)}"
    database = sqlite_file(tracking_uri)
    if database is not None and not database.is_absolute():  # --tracking-uri sqlite:///x.db
        tracking_uri = f"sqlite:///{database.resolve()}"
    mlflow = Path(sys.executable).parent / "mlflow"  # this installation's, wherever you are
    launcher = str(mlflow) if mlflow.is_file() else f"{sys.executable} -m mlflow"
    return (
        f"{launcher} ui --backend-store-uri {tracking_uri} --port 5000\n"
        f"                     then open {ui_url('http://127.0.0.1:5000', experiment_id)}"
    )
