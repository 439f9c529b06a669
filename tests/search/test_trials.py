"""The driver's memory: its start-up is frozen out of the garbage collector while the trials run
(and given back after them, also when they end with Ctrl+C), Tune forgets what nothing reads
of a finished trial, and a study runs in rounds (one Tune run each) so that Tune holds one round's
trials at most."""

from __future__ import annotations

import gc
from pathlib import Path

import optuna
import pytest
from ray import tune

from search import run_study
from search.schema import OBJECTIVE
from search.trials import start_up_frozen
from spaces import StudyConfig, load_config


def test_the_start_up_is_frozen_while_the_trials_run_and_given_back_after() -> None:
    held: list[int] = []
    with start_up_frozen():
        assert gc.get_freeze_count() > 0
        assert not any(o is held for o in gc.get_objects())  # frozen: no collection scans it
    assert gc.get_freeze_count() == 0
    with pytest.raises(KeyboardInterrupt), start_up_frozen():
        raise KeyboardInterrupt
    assert gc.get_freeze_count() == 0


class _AtTheEnd(tune.Callback):
    """What Tune still holds of each trial when a round's trials have all ended."""

    def __init__(self) -> None:
        self.rounds: list[list[tuple[dict, object, str]]] = []

    def on_experiment_end(self, trials: list, **info: object) -> None:
        self.rounds.append(
            [
                (dict(t.run_metadata.metric_analysis), t.last_result.get(OBJECTIVE), t.trial_id)
                for t in trials
            ]
        )


def _config(tmp_path: Path, **more: object) -> StudyConfig:
    return load_config(
        {
            "name": "rounds",
            "search": {"activations": ["relu", "tanh"], "initializers": ["he_normal"]},
            "model": {"depth": 2, "width": 8},
            "training": {"epochs": 2},
            "output_dir": str(tmp_path),
            **more,
        }
    )


def test_trials_run_in_rounds_and_tune_forgets_finished_trials(tmp_path: Path) -> None:
    """Three trials in rounds of two: two Tune runs (each holding its own trials only), one
    searcher and one Optuna study across them, every trial in MLflow. Tune's per-key running
    statistics of a finished trial are dropped (nothing reads them: they only grew a large
    study's driver); its last result, which Tune reports, stays."""
    seen = _AtTheEnd()
    result = run_study(_config(tmp_path, num_samples=3, trials_per_round=2), callbacks=[seen])
    assert [len(kept) for kept in seen.rounds] == [2, 1]
    kept = [trial for one in seen.rounds for trial in one]
    assert len({trial_id for _, _, trial_id in kept}) == 3
    assert [stats for stats, _, _ in kept] == [{}, {}, {}]
    assert all(isinstance(value, float) for _, value, _ in kept)
    assert len(result.leaderboard) == 3
    study = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    assert [(t.number, t.state) for t in study.trials] == [
        (n, optuna.trial.TrialState.COMPLETE) for n in range(3)
    ]


def test_no_round_starts_after_the_time_budget(tmp_path: Path) -> None:
    """Rounds of one trial against a budget of 3 s: a round starts only while the budget lasts,
    so the study ends with the trials it had time for, every one of them recorded."""
    seen = _AtTheEnd()
    config = _config(tmp_path, num_samples=50, trials_per_round=1, budget_minutes=0.05)
    result = run_study(config, callbacks=[seen])
    assert 1 <= len(seen.rounds) < 50
    assert len(result.leaderboard) == sum(len(kept) for kept in seen.rounds)
