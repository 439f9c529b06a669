"""The driver's memory: its start-up is frozen out of the garbage collector while the trials run
(and given back after them, also when they end with Ctrl+C), and Tune forgets what nothing reads
of a finished trial."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from ray import tune

from search import run_study
from search.schema import OBJECTIVE
from search.trials import start_up_frozen
from spaces import load_config


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
    """What Tune still holds of each trial when the study's trials have all ended."""

    def on_experiment_end(self, trials: list, **info: object) -> None:
        self.kept = [
            (dict(t.run_metadata.metric_analysis), t.last_result.get(OBJECTIVE)) for t in trials
        ]


def test_tune_keeps_no_metric_statistics_of_finished_trials(tmp_path: Path) -> None:
    """Tune's per-key running statistics of a finished trial are dropped (nothing reads them:
    they only grew a large study's driver); its last result, which Tune reports, stays."""
    seen = _AtTheEnd()
    config = load_config(
        {
            "name": "forget",
            "search": {"activations": ["relu", "tanh"], "initializers": ["he_normal"]},
            "model": {"depth": 2, "width": 8},
            "training": {"epochs": 2},
            "num_samples": 2,
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config, callbacks=[seen])
    assert len(result.leaderboard) == 2
    assert [stats for stats, _ in seen.kept] == [{}, {}]
    assert all(isinstance(value, float) for _, value in seen.kept)
