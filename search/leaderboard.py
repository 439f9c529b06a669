"""Leaderboards read back from MLflow, never from Ray's in-memory results.

What MLflow holds is what a user sees in the UI, so the table printed at the end of a run, the
``gradsweep leaderboard`` command and the ``leaderboard.csv`` artifact all agree with it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from rich.console import Console
from rich.table import Table

from search.errors import UserError
from search.schema import (
    CELL_FACTORS,
    INTERRUPTED,
    MEAN_EPOCH_SECONDS,
    N_PARAMS,
    OBJECTIVES_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    REASON_TAG,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
    STUDY_TAG,
    Format,
    parse_objectives_tag,
)

COLUMNS = [
    "rank",
    "run_name",
    "activation",
    "alpha",
    "init",
    "bn",
    "lr",
    "best_val_accuracy",
    "test_accuracy",
    "epochs_run",
    "status",
    "outcome",
    "reason",
]
#: Shown too when the study has several objectives: their values and the Pareto front.
MULTI_COLUMNS = [MEAN_EPOCH_SECONDS, N_PARAMS, "pareto"]


def find_parent_run(client: MlflowClient, study: str) -> Run:
    """The parent run of study ``study`` (the newest, if a name was reused)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{ROLE_TAG}` = '{ROLE_STUDY}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise UserError(f"--study: no study named {study!r} in this tracking store")
    return runs[0]


def child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """Every child run of ``parent``, paging through MLflow's results."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _alpha(value: str | None) -> float | str | None:
    if value is None:
        return None
    parsed = json.loads(value)
    return parsed if isinstance(parsed, float | int) else json.dumps(parsed)


def _param(value: str | None) -> float | str | None:
    """A param as a number when it is one (depth, lr, ...), else the string."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def per_seed(metrics: dict[str, float]) -> dict[int, dict[str, float]]:
    """``seed/<seed>/<name>`` (and ``init/seed/<seed>/<name>``, as ``init/<name>``) by seed."""
    out: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        initial = key.startswith("init/seed/")
        parts = key.removeprefix("init/").split("/", 2)
        if parts[0] != "seed" or len(parts) != 3 or not parts[1].lstrip("-").isdigit():
            continue
        name = ("init/" if initial else "") + parts[2]
        out.setdefault(int(parts[1]), {})[name] = value
    return out


def pareto_front(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Which rows of ``values`` (one column per objective) no other row dominates: at least as
    good in every objective and better in one. Rows with a NaN are never on the front; equal
    rows are both on it (as in Optuna's ``study.best_trials``)."""
    signs = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    loss = np.asarray(values, dtype=float) * signs  # lower is better in every column
    finite = np.isfinite(loss).all(axis=1)
    front = np.zeros(len(loss), dtype=bool)
    candidates = loss[finite]
    for i in np.flatnonzero(finite):
        no_worse = (candidates <= loss[i]).all(axis=1)
        better = (candidates < loss[i]).any(axis=1)
        front[i] = not (no_worse & better).any()
    return front


def leaderboard(client: MlflowClient, study: str) -> pd.DataFrame:
    """Ranked table of study ``study``'s trials: best validation accuracy first, whatever the
    outcome; trials without a score last. A multi-objective study's table also marks its
    Pareto front (``pareto``): the completed search trials no other one dominates, as Optuna's
    ``study.best_trials`` (trials stopped early were never told a value)."""
    parent = find_parent_run(client, study)
    objectives = parse_objectives_tag(parent.data.tags.get(OBJECTIVES_TAG))
    rows = []
    for run in child_runs(client, parent):
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        if tags.get(OUTCOME_TAG) == INTERRUPTED:
            continue  # an attempt cut short by a lost driver; its resumed run is listed instead
        rows.append(
            {
                **{f: _param(params.get(f)) for f in CELL_FACTORS if f != "alpha"},
                "run_name": run.info.run_name,
                "activation": params.get("activation"),
                "alpha": _alpha(params.get("alpha")),
                "init": params.get("init"),
                "bn": params.get("bn"),
                "lr": float(params["lr"]) if "lr" in params else math.nan,
                "best_val_accuracy": metrics.get("best_val_accuracy", math.nan),
                "test_accuracy": metrics.get("test_accuracy", math.nan),
                "epochs_run": int(metrics.get("epochs_run", 0)),
                "status": run.info.status,
                "outcome": tags.get(OUTCOME_TAG, run.info.status.lower()),
                "reason": tags.get(REASON_TAG, ""),
                "grad_ratio": metrics.get("diag/grad_ratio_first_last", math.nan),
                "seeds": int(metrics.get("seeds", 1)),
                "best_val_accuracy_std": metrics.get("best_val_accuracy_std", math.nan),
                "epoch_seconds": metrics.get("epoch_seconds", math.nan),
                MEAN_EPOCH_SECONDS: metrics.get(MEAN_EPOCH_SECONDS, math.nan),
                N_PARAMS: metrics.get(N_PARAMS, math.nan),
                "chance_accuracy": metrics.get("chance_accuracy", math.nan),
                "role": tags.get(ROLE_TAG, ROLE_TRIAL),
                "init_is_matched": params.get("init_is_matched"),
                "per_seed": per_seed(metrics),
                "run_id": run.info.run_id,
            }
        )
    extra = [
        "grad_ratio",
        "seeds",
        "best_val_accuracy_std",
        "epoch_seconds",
        MEAN_EPOCH_SECONDS,
        N_PARAMS,
        "chance_accuracy",
        "role",
        "init_is_matched",
        "per_seed",
        *(f for f in CELL_FACTORS if f not in COLUMNS),
        "run_id",
    ]
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"] + extra)
    if frame.empty:
        frame.insert(0, "rank", pd.Series(dtype=int))
        return frame
    frame = rank(frame)
    if objectives:
        told = (frame["outcome"] == "completed") & (frame["role"] == ROLE_TRIAL)
        values = frame[[m for m, _ in objectives]].to_numpy(dtype=float)
        values[~told.to_numpy()] = np.nan
        frame["pareto"] = pareto_front(values, [mode for _, mode in objectives])
    return frame


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` sorted and numbered (``rank`` 1..n): best validation accuracy first whatever
    the outcome (an early-stopped trial can beat a finished one; the outcome column says which
    is which), trials without a score (diverged, failed) last; ties by test accuracy, then name."""
    scored = frame.assign(_score=frame["best_val_accuracy"].fillna(-1.0))
    ranked = scored.sort_values(
        ["_score", "test_accuracy", "run_name"], ascending=[False, False, True]
    ).drop(columns=["_score"])
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    return ranked.reset_index(drop=True)


def render(
    frame: pd.DataFrame, fmt: Format = "table", top: int | None = None, title: str = ""
) -> str:
    """Render the leaderboard as text (``table`` uses rich; its title says "top N of M" when
    ``top`` leaves trials out)."""
    shown = frame.head(top) if top else frame
    order = COLUMNS + MULTI_COLUMNS if "pareto" in shown.columns else COLUMNS
    visible = shown[[c for c in order if c in shown.columns]]
    if fmt == "csv":
        return visible.to_csv(index=False)
    if fmt == "json":
        return visible.to_json(orient="records", indent=2)
    if fmt == "markdown":
        return markdown(visible)
    columns = [c for c in visible.columns if c != "status"]
    if not visible["reason"].astype(bool).any():
        columns.remove("reason")
    if top and len(frame) > top:
        title = f"{title} (top {top} of {len(frame)})" if title else f"top {top} of {len(frame)}"
    table = Table(title=title or None, title_justify="left")
    for column in columns:
        table.add_column(
            _HEADERS.get(column, column), justify="right" if column in _NUMERIC else "left"
        )
    for _, row in visible.iterrows():
        table.add_row(*[_cell(row[c]) for c in columns])
    console = Console(width=200)
    with console.capture() as capture:
        console.print(table)
    return "\n".join(line.rstrip() for line in capture.get().splitlines()) + "\n"


_HEADERS = {
    "run_name": "run",
    "best_val_accuracy": "best val acc",
    "test_accuracy": "test acc",
    "epochs_run": "epochs",
    MEAN_EPOCH_SECONDS: "s/epoch",
    N_PARAMS: "params",
    "pareto": "front",
}
_NUMERIC = {
    "rank",
    "alpha",
    "lr",
    "best_val_accuracy",
    "test_accuracy",
    "epochs_run",
    MEAN_EPOCH_SECONDS,
    N_PARAMS,
}


def _cell(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "*" if value else ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub table, numbers to 4 significant digits, NaN as '-' (leaderboards, report)."""
    if frame.empty:
        return "_no data_\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"
