"""The ``gradsweep`` command line (``gradsweep --help`` lists its commands).

User errors (bad config, unknown names, unreachable addresses) end with one line on stderr and
exit code 2; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from spaces import ConfigError, load_config, presets

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


def _quiet() -> None:
    """Keep library chatter off the terminal unless --debug."""
    if not STATE["debug"]:
        warnings.filterwarnings("ignore")
        # MLflow sets its loggers' level when it is imported, after this runs.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
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


@app.command()
def run(
    config: Annotated[str, typer.Argument(help="A YAML study config, or a preset name.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set training.epochs=3 (repeatable)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: local)."),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    num_samples: Annotated[int | None, typer.Option(help="Number of trials.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: NAME-timestamp).")] = None,
) -> None:
    """Run a search and print its leaderboard."""
    overrides = list(set_ or [])
    if num_samples is not None:
        overrides.append(f"num_samples={num_samples}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    _quiet()
    from search.errors import UserError
    from search.study import run_study

    try:
        result = run_study(
            cfg, address=address, tracking_uri=tracking_uri, study_name=study, progress=True
        )
    except UserError as exc:
        raise fail(str(exc)) from None
    _summary(result)


def _summary(result: object) -> None:
    """The end of a run: leaderboard, notes, and where to look next."""
    from search.environment import redact
    from search.leaderboard import render

    board = result.leaderboard  # type: ignore[attr-defined]
    name, uri = result.study_name, redact(result.tracking_uri)  # type: ignore[attr-defined]
    if not board.empty:
        sys.stdout.write(render(board, "table", top=20, title=f"Leaderboard: {name}"))
    for note in result.notes:  # type: ignore[attr-defined]
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    out.print(
        f"study [bold]{name}[/] - {len(board)} trials in {result.seconds:.0f} s",
        highlight=False,
        soft_wrap=True,
    )  # type: ignore[attr-defined]
    out.print(f"MLflow parent run {result.parent_run_id} in {uri}", highlight=False, soft_wrap=True)  # type: ignore[attr-defined]
    out.print("Open the MLflow UI:  " + ui_command(uri), highlight=False, soft_wrap=True)
    out.print(
        f"Leaderboard again:   gradsweep leaderboard --study {name} --tracking-uri {uri}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def resume(
    study: Annotated[str, typer.Option(help="The study to finish, as printed by 'gradsweep run'.")],
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI of the study.")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster (default: local).")] = None,
) -> None:
    """Finish a study whose driver died: finished trials stay, interrupted ones resume."""
    _quiet()
    from search.errors import UserError
    from search.study import resume_study

    try:
        result = resume_study(
            study,
            tracking_uri=tracking_uri,
            address=address,
            progress=True,
        )
    except UserError as exc:
        raise fail(str(exc)) from None
    if not result.ran:
        out.print(result.notes[0], highlight=False, soft_wrap=True)
        return
    _summary(result)


@app.command()
def confirm(
    study: Annotated[str, typer.Option(help="The study whose winners to confirm.")],
    seeds: Annotated[int, typer.Option(help="Fresh seeds per configuration (replicates).")] = 5,
    factor: Annotated[
        str, typer.Option(help="Confirm the best configuration of each level of this factor.")
    ] = "activation",
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI of the study.")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster (default: local).")] = None,
) -> None:
    """Retrain each level's best configuration with fresh seeds, scored on the test split."""
    _quiet()
    from search.confirm import confirm_study
    from search.errors import UserError

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


@app.command()
def sync(
    output_dir: Annotated[Path, typer.Option(help="The studies' output directory.")] = Path(
        "gradsweep-runs"
    ),
    tracking_uri: Annotated[
        str | None, typer.Option(help="Send to this tracking URI instead.")
    ] = None,
) -> None:
    """Replay MLflow writes that were saved to disk while the tracking server was unreachable."""
    _quiet()
    from search.journal import replay

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
    if left_total:
        raise fail(f"--tracking-uri: {left_total} writes still undeliverable; is MLflow up?")


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on ``tracking_uri``."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f".venv/bin/mlflow ui --backend-store-uri {tracking_uri} --port 5000   (then http://127.0.0.1:5000)"


@app.command()
def leaderboard(
    study: Annotated[str, typer.Option(help="Study name, as printed by 'gradsweep run'.")],
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: the default run's).")
    ] = None,
    top: Annotated[int | None, typer.Option(min=1, help="Show the best N only.")] = None,
    format: Annotated[
        str, typer.Option("--format", help="table, csv, markdown or json.")
    ] = "table",
    by: Annotated[
        str | None,
        typer.Option(help="Factor table instead: activation, init, bn or activation_bn."),
    ] = None,
) -> None:
    """Print a study's leaderboard (or a factor table with CIs and tests), read from MLflow."""
    from search.analysis import FACTORS
    from search.leaderboard import FORMATS

    if format not in FORMATS:
        raise fail(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if by is not None and by not in FACTORS:
        raise fail(f"--by: {by!r} is not one of {', '.join(FACTORS)}")
    _quiet()
    from search.errors import UserError
    from search.leaderboard import leaderboard as board
    from search.leaderboard import render

    try:
        client = _tracking_client(tracking_uri)
        frame = board(client, study)
    except UserError as exc:
        raise fail(str(exc)) from None
    if by is not None:
        import pandas as pd

        from search.analysis import factor_table, observations, pairwise_tests

        obs, _ = observations(frame)
        table, tests = factor_table(obs, by), pairwise_tests(obs, by)
        if format == "table":
            out.print(
                f"[bold]{study} by {by}[/] (every level; n = seed observations of trials that "
                "ran every epoch or diverged; 95% bootstrap CI of the mean)"
            )
            sys.stdout.write(
                table.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n\n"
            )
            out.print("pairwise, other factors held equal (stratified permutation test, Holm):")
            shown = tests.drop(columns=["strata_used"])
            sys.stdout.write(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\n")
        elif format == "csv":  # one file: the levels, then the pairwise tests (column 'kind')
            both = pd.concat([table.assign(kind="level"), tests.assign(kind="pairwise")])
            sys.stdout.write(both.to_csv(index=False))
        elif format == "json":
            records = {  # through pandas' JSON: NaN becomes null
                name: json.loads(part.to_json(orient="records"))
                for name, part in (("levels", table), ("pairwise", tests))
            }
            sys.stdout.write(json.dumps(records, indent=2) + "\n")
        else:
            from search.leaderboard import markdown

            sys.stdout.write(markdown(table) + "\n" + markdown(tests))
        return
    text = render(frame, format, top=top, title=f"Leaderboard: {study}")  # type: ignore[arg-type]
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _tracking_client(tracking_uri: str | None):
    from search.stores import existing_store

    return existing_store(tracking_uri)


@app.command()
def report(
    study: Annotated[str, typer.Option(help="Study name, as printed by 'gradsweep run'.")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where to write (default: OUTPUT/reports/STUDY).")
    ] = None,
    importance: Annotated[str, typer.Option(help="fanova or ped-anova.")] = "fanova",
) -> None:
    """Write the study report (claims, factor tables, importance, pictures) and log it on MLflow."""
    from search.report import IMPORTANCE

    if importance not in IMPORTANCE:
        raise fail(f"--importance: {importance!r} is not one of {', '.join(IMPORTANCE)}")
    _quiet()
    from search import environment
    from search.errors import UserError
    from search.leaderboard import find_parent_run
    from search.preflight import check_writable
    from search.report import build_report
    from search.schema import OPTUNA_STORAGE_TAG, OUTPUT_DIR_TAG

    try:
        if out_dir is not None:
            check_writable(out_dir, "--out-dir")
        client = _tracking_client(tracking_uri)
        parent = find_parent_run(client, study)
        output = Path(parent.data.tags.get(OUTPUT_DIR_TAG, "gradsweep-runs"))
        directory = out_dir or output / "reports" / study
        check_writable(directory, "--out-dir")
    except UserError as exc:
        raise fail(str(exc)) from None
    storage = environment.optuna_storage(parent.data.tags.get(OPTUNA_STORAGE_TAG), output)
    result = build_report(client, study, directory, storage, importance=importance)
    for note in result.notes:
        out.print(f"note: {note}", highlight=False)
    if not result.claims.empty:
        sys.stdout.write(
            result.claims[
                ["claim", "n_a", "n_b", "effect", "ci_low", "ci_high", "p_holm", "verdict"]
            ].to_string(index=False, float_format=lambda v: f"{v:.4g}")
            + "\n"
        )
    out.print(
        f"report written to {directory / 'report.md'} and logged on the parent run under report/",
        highlight=False,
        soft_wrap=True,
    )


@app.command("activations")
def list_activations() -> None:
    """List the activations a study may search, with what alpha means and its search range."""
    from rich.markup import escape
    from rich.table import Table

    from trainers import ACTIVATIONS

    table = Table("activation", "family", "alpha", "default", "alpha: search", title_justify="left")
    for name, spec in ACTIVATIONS.items():
        searched = "-"
        if spec.search_range is not None:
            low, high, log = spec.search_range
            searched = f"{low:g}..{high:g}" + (" (log)" if log else "")
        default = spec.alpha_default
        if isinstance(default, tuple):
            default = f"[{default[0]:.3g}, {default[1]:.3g}]"
        table.add_row(name, spec.family, escape(spec.alpha_doc), str(default or "-"), searched)
    out.print(table)


@app.command("presets")
def list_presets() -> None:
    """List the bundled presets with one-line descriptions."""
    for name, description in presets().items():
        out.print(f"[bold]{name}[/]: {description}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one line and exit 2 for user errors, tracebacks only with
    --debug. Returns the exit code (and exits with it when run as a script)."""
    from typer._click import exceptions as click  # typer vendors click

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="gradsweep", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        out.print(exc.ctx.get_help() if exc.ctx else "gradsweep --help")
        return 0
    except click.UsageError as exc:  # unknown option, missing argument, bad flag value
        err.print(f"[bold red]error:[/] {exc.format_message()}", soft_wrap=True, highlight=False)
        return 2
    except click.ClickException as exc:
        err.print(f"[bold red]error:[/] {exc.format_message()}", soft_wrap=True, highlight=False)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # an unexpected failure: one line unless --debug
        if "--debug" in args:
            raise
        err.print(
            f"[bold red]error:[/] {exc.__class__.__name__}: {exc} (rerun with --debug for details)",
            soft_wrap=True,
            highlight=False,
        )
        return 1
    return code if isinstance(code, int) else 0


def entry() -> None:
    """The ``gradsweep`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
