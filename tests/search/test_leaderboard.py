"""The leaderboard's ranking, its table's title, its Pareto front (against Optuna's own
``study.best_trials``), and the MLflow UI command printed beside it."""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from search.cli.study import ui_command
from search.leaderboard import COLUMNS, pareto_front, rank, render
from search.stores import sqlite_file

#: A made-up board of mixed outcomes, in the order MLflow happens to return the runs.
TRIALS = [  # run_name, activation, best val acc, test acc, epochs, outcome
    ("t000 logistic", "logistic", 0.186, 0.18, 4, "completed"),
    ("t001 selu", "selu", 0.892, 0.88, 1, "early_stopped"),
    ("t002 relu", "relu", math.nan, math.nan, 2, "diverged"),
    ("t003 elu", "elu", 0.874, 0.87, 4, "completed"),
    ("t004 tanh", "tanh", 0.5, 0.49, 2, "stopped"),
    ("t005 gelu", "gelu", math.nan, math.nan, 0, "error"),
    ("t006 relu", "relu", 0.874, 0.86, 2, "early_stopped"),
]


def _board() -> pd.DataFrame:
    rows = [
        {
            "run_name": name,
            "activation": act,
            "best_val_accuracy": val,
            "test_accuracy": test,
            "epochs_run": epochs,
            "status": "FAILED" if math.isnan(val) else "FINISHED",
            "outcome": outcome,
            "reason": "",
        }
        for name, act, val, test, epochs, outcome in TRIALS
    ]
    return rank(pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"]))


def test_ranked_by_score_whatever_the_outcome() -> None:
    """The issue's case: a 0.892 early-stopped SELU above a 0.186 finished logistic run; equal
    scores by test accuracy; no score last."""
    board = _board()
    assert board["run_name"].tolist() == [
        "t001 selu",
        "t003 elu",  # 0.874 with test 0.87 ...
        "t006 relu",  # ... before 0.874 with test 0.86
        "t004 tanh",
        "t000 logistic",
        "t002 relu",  # no score: by name
        "t005 gelu",
    ]
    assert board["rank"].tolist() == list(range(1, len(TRIALS) + 1))
    assert board.loc[0, "outcome"] == "early_stopped"  # the column says which is which


def test_table_says_top_n_of_m() -> None:
    board = _board()
    text = render(board, "table", top=3, title="Leaderboard: s")
    assert "Leaderboard: s (top 3 of 7)" in text
    assert "t001 selu" in text and "t004 tanh" not in text  # only the top 3 rows
    assert "outcome" in text and "early_stopped" in text
    assert "top 3 of 7" in render(board, "table", top=3)
    for whole in (render(board, "table"), render(board, "table", top=7, title="L")):
        assert " of 7" not in whole and "t005 gelu" in whole  # all shown: nothing to say


def _mlflow_ui_argv(command: str) -> list[str]:
    return shlex.split(command.splitlines()[0])


def test_ui_command_works_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    """The printed ``mlflow ui`` names this installation's mlflow and the store by absolute
    paths, so it runs from any folder (a relative ``--tracking-uri`` is resolved here)."""
    absolute = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    for uri in (absolute, "sqlite:///mlflow.db"):
        command = ui_command(uri, "3")
        argv = _mlflow_ui_argv(command)
        mlflow = Path(argv[0])
        assert mlflow.is_absolute() and mlflow.is_file() and os.access(mlflow, os.X_OK), argv
        assert mlflow.parent == Path(sys.executable).parent  # the mlflow gradsweep runs with
        assert argv[1:3] == ["ui", "--backend-store-uri"]
        store = sqlite_file(argv[3])
        assert store is not None and store == tmp_path / "mlflow.db", argv
        assert "#/experiments/3/runs?workflowType=machine_learning" in command


def test_ui_command_for_a_server_is_its_link() -> None:
    command = ui_command("http://mlflow.example:5000", "7")
    assert command.startswith("open http://mlflow.example:5000/#/experiments/7/runs?")


@pytest.mark.parametrize(
    "modes",
    [["max", "min"], ["min", "min"], ["max", "min", "min"], ["max", "max"]],
    ids=["acc-time", "min-min", "three", "max-max"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_is_optunas_best_trials(modes: list[str], seed: int) -> None:
    """Rounded values make ties and duplicates, which both sides must keep."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(40, len(modes))).astype(float)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    study = optuna.create_study(directions=directions)
    for row in values:
        study.add_trial(optuna.trial.create_trial(values=list(row), params={}, distributions={}))
    expected = sorted(t.number for t in study.best_trials)
    assert np.flatnonzero(pareto_front(values, modes)).tolist() == expected


def test_rows_without_every_value_are_never_on_the_front() -> None:
    values = np.array([[0.9, 1.0], [math.nan, 0.1], [0.5, 2.0], [0.95, math.nan]])
    assert pareto_front(values, ["max", "min"]).tolist() == [True, False, False, False]


def test_no_rows_no_front() -> None:
    assert pareto_front(np.empty((0, 2)), ["max", "min"]).tolist() == []
