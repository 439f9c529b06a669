"""The searcher tells Optuna how each trial ended, and writes only what Optuna needs to rank it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.schema import OBJECTIVE
from search.searcher import HonestOptunaSearch

EPOCHS = 4


@pytest.fixture
def searcher(tmp_path: Path) -> HonestOptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return HonestOptunaSearch(
        space=lambda trial: trial.suggest_float("lr", 1e-3, 1e-1, log=True) and None,
        metric=OBJECTIVE,
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"),
        epochs=EPOCHS,
    )


def _run(searcher: HonestOptunaSearch, trial_id: str, epochs: int) -> dict:
    """Suggest, report ``epochs`` epochs (value 0.1 * epoch) and return the last result."""
    searcher.suggest(trial_id)
    result: dict = {}
    for epoch in range(1, epochs + 1):
        result = {OBJECTIVE: 0.1 * epoch, "epoch": epoch}
        searcher.on_trial_result(trial_id, result)
    return result


def _trials(searcher: HonestOptunaSearch) -> list[optuna.trial.FrozenTrial]:
    return searcher._ot_study.get_trials(deepcopy=False)


def test_a_completed_trial_is_told_its_value_and_no_epoch_values(
    searcher: HonestOptunaSearch,
) -> None:
    searcher.on_trial_complete("a", _run(searcher, "a", EPOCHS))
    (trial,) = _trials(searcher)
    assert trial.state is TrialState.COMPLETE
    assert trial.value == pytest.approx(0.1 * EPOCHS)
    assert trial.intermediate_values == {}


def test_an_early_stopped_trial_keeps_its_last_value_at_its_epoch(
    searcher: HonestOptunaSearch,
) -> None:
    searcher.on_trial_complete("a", _run(searcher, "a", 2))
    (trial,) = _trials(searcher)
    assert trial.state is TrialState.PRUNED
    assert trial.intermediate_values == {2: pytest.approx(0.2)}


def test_a_trial_stopped_by_the_budget_keeps_its_last_value(searcher: HonestOptunaSearch) -> None:
    _run(searcher, "a", 3)
    searcher.close_unfinished()
    (trial,) = _trials(searcher)
    assert trial.state is TrialState.PRUNED
    assert trial.intermediate_values == {3: pytest.approx(0.3)}
