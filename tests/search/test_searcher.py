"""The searcher's telling with several objectives, on a real (in-memory) Optuna study: both
values on COMPLETE, FAIL when one is missing or not finite, PRUNED with none when stopped early,
and no intermediate values (Optuna refuses them for several objectives)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from search.searcher import HonestOptunaSearch
from spaces import define_space, load_config

EPOCHS = 3


@pytest.fixture
def searcher() -> HonestOptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config("quick", ["objectives=[val_accuracy: max, epoch_seconds: min]"])
    return HonestOptunaSearch(
        space=define_space(config),
        metric=["best_val_accuracy", "mean_epoch_seconds"],
        mode=["max", "min"],
        epochs=EPOCHS,
    )


def _result(epoch: int = EPOCHS, **values: float) -> dict[str, float]:
    return {"epoch": epoch, "best_val_accuracy": 0.8, "mean_epoch_seconds": 0.5, **values}


def test_completed_trial_tells_both_values(searcher: HonestOptunaSearch) -> None:
    searcher.suggest("a")
    searcher.on_trial_result("a", _result(epoch=1))  # no intermediate value, no error
    searcher.on_trial_complete("a", _result())
    (trial,) = searcher._ot_study.trials
    assert trial.state == TrialState.COMPLETE and trial.values == [0.8, 0.5]
    assert trial.intermediate_values == {}
    assert searcher._ot_study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]


@pytest.mark.parametrize(
    ("result", "state"),
    [
        (_result(mean_epoch_seconds=math.nan), TrialState.FAIL),
        ({"epoch": EPOCHS, "best_val_accuracy": 0.8}, TrialState.FAIL),
        (_result(epoch=1), TrialState.PRUNED),  # stopped early by the scheduler
    ],
    ids=["nan-objective", "missing-objective", "early-stopped"],
)
def test_no_values_unless_every_objective_is_there(
    searcher: HonestOptunaSearch, result: dict[str, float], state: TrialState
) -> None:
    searcher.suggest("a")
    searcher.on_trial_complete("a", result)
    (trial,) = searcher._ot_study.trials
    assert trial.state == state and trial.values is None
