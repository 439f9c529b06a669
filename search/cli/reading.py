"""Commands that read a study back: leaderboard, report; and the registries: activations,
presets."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from search.cli.options import StudyTrackingUri
from search.cli.terminal import app, fail, out, quiet
from search.schema import FACTORS, FORMATS
from spaces import presets

PANEL = "Read results"


def _or(names: Iterable[str]) -> str:
    """``a, b or c``: a registry's names in a help text."""
    *most, last = names
    return f"{', '.join(most)} or {last}" if most else last


@app.command(rich_help_panel=PANEL)
def leaderboard(
    study: Annotated[str, typer.Option(help="Study name, as printed by 'gradsweep run'.")],
    tracking_uri: StudyTrackingUri = None,
    top: Annotated[int | None, typer.Option(min=1, help="Show the best N only.")] = None,
    format: Annotated[str, typer.Option("--format", help=f"{_or(FORMATS)}.")] = "table",
    by: Annotated[
        str | None,
        typer.Option(help=f"Factor table instead: {_or(FACTORS)}."),
    ] = None,
) -> None:
    """Print a study's leaderboard (or a factor table with CIs and tests), read from MLflow."""
    if format not in FORMATS:
        raise fail(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if by is not None and by not in FACTORS:
        raise fail(f"--by: {by!r} is not one of {', '.join(FACTORS)}")
    quiet()
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
            out.print("pairwise, other factors held equal (stratified Welch t test, Holm):")
            shown = tests.drop(columns=["strata_used"])
            if shown.empty:
                out.print("  (one level: nothing to compare)")
            else:
                text = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
                sys.stdout.write(text + "\n")
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


@app.command(rich_help_panel=PANEL)
def report(
    study: Annotated[str, typer.Option(help="Study name, as printed by 'gradsweep run'.")],
    tracking_uri: StudyTrackingUri = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Where to write (default: OUTPUT/reports/STUDY).")
    ] = None,
    importance: Annotated[str, typer.Option(help="fanova or ped-anova.")] = "fanova",
) -> None:
    """Write the study report (claims, factor tables, importance, pictures) and log it on MLflow."""
    from search.report import IMPORTANCE

    if importance not in IMPORTANCE:
        raise fail(f"--importance: {importance!r} is not one of {', '.join(IMPORTANCE)}")
    quiet()
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
        out.print(claims_table(result.claims))
    out.print(
        f"report written to {directory / 'report.md'} and logged on the parent run under report/",
        highlight=False,
        soft_wrap=True,
    )


def claims_table(claims: object) -> object:
    """The claims as a rich table: what was compared, the numbers, the verdict and why."""
    from rich.table import Table

    table = Table(title="Claims from the notes", title_justify="left")
    for name, justify in (
        ("claim", "left"),
        ("family", "left"),
        ("strata", "right"),
        ("A cells x seeds", "right"),
        ("B cells x seeds", "right"),
        ("effect", "right"),
        ("95% CI", "right"),
        ("p Holm", "right"),
        ("verdict", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in claims.to_dict("records"):  # type: ignore[attr-defined]
        decided = row["reason"] == ""
        table.add_row(
            row["claim"],
            row["family"],
            str(row["strata"]),
            f"{row['cells_a']} x {row['seeds_a'] // max(row['cells_a'], 1)}",
            f"{row['cells_b']} x {row['seeds_b'] // max(row['cells_b'], 1)}",
            f"{row['effect']:+.3g}" if decided else "-",
            f"[{row['ci_low']:+.3g}, {row['ci_high']:+.3g}]" if decided else "-",
            f"{row['p_holm']:.2g}" if row["p_holm"] == row["p_holm"] else "-",
            row["verdict"] + ("" if decided else f": {row['why']}"),
        )
    return table


@app.command("activations", rich_help_panel=PANEL)
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


@app.command("presets", rich_help_panel=PANEL)
def list_presets() -> None:
    """List the bundled presets with one-line descriptions."""
    for name, description in presets().items():
        out.print(f"[bold]{name}[/]: {description}", highlight=False)


# ---------------------------------------------------------------------------------------------
# A study as a Ray job, launched, watched and stopped from this machine (search/jobs.py)
