"""The leaderboard's Pareto front against Optuna's own ``study.best_trials``."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from search.leaderboard import pareto_front


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
