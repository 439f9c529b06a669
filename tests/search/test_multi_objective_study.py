"""Acceptance: a real multi-objective study (accuracy against time per epoch) through local Ray
Tune, Optuna's NSGA-II on a two-direction study, and MLflow; its leaderboard's Pareto front is
Optuna's ``study.best_trials`` and the report's front picture loads."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from matplotlib import image

from search import run_study
from search.cli import main
from search.leaderboard import leaderboard
from search.schema import MEAN_EPOCH_SECONDS, N_PARAMS, OBJECTIVE, TRIAL_NUMBER_TAG
from search.tradeoffs import FRONT_FIGURE
from spaces import load_config

pytestmark = pytest.mark.slow
N_TRIALS = 6


@pytest.fixture(scope="module")
def study(local_ray: None, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("multi")
    config = load_config(
        {
            "name": "mo",
            "search": {"activations": ["relu", "elu", "tanh"]},
            "model": {"depth": [2, 3], "width": 16},
            "training": {"epochs": 2, "batch_size": 128},
            "diagnostics": {"enabled": False},
            "objectives": [{"val_accuracy": "max"}, {"epoch_seconds": "min"}],
            "searcher": {"name": "nsga2"},
            "num_samples": N_TRIALS,
            "max_concurrent": 2,
            "output_dir": str(out),
        }
    )
    result = run_study(config)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    ot = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    return result, client, ot


def test_optuna_study_has_two_directions_and_every_trial_both_values(study) -> None:
    _, _, ot = study
    assert ot.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert len(ot.trials) == N_TRIALS
    for trial in ot.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert len(trial.values) == 2
        assert 0 <= trial.values[0] <= 1 and trial.values[1] > 0


def test_mlflow_holds_the_values_optuna_was_told(study) -> None:
    result, client, ot = study
    told = {t.number: t.values for t in ot.trials}
    board = leaderboard(client, result.study_name)
    for row in board.itertuples():
        number = int(client.get_run(row.run_id).data.tags[TRIAL_NUMBER_TAG])
        assert [getattr(row, OBJECTIVE), getattr(row, MEAN_EPOCH_SECONDS)] == told[number]
        assert getattr(row, N_PARAMS) > 0


def test_leaderboard_front_is_optunas_best_trials(study) -> None:
    result, client, ot = study
    board = leaderboard(client, result.study_name)
    front = board[board["pareto"]]
    numbers = {int(client.get_run(r).data.tags[TRIAL_NUMBER_TAG]) for r in front["run_id"]}
    assert numbers == {t.number for t in ot.best_trials}
    assert numbers  # a study of completed trials always has a front


def test_leaderboard_command_shows_the_front(study, capsys: pytest.CaptureFixture[str]) -> None:
    result, _, ot = study
    argv = ["leaderboard", "--study", result.study_name, "--tracking-uri", result.tracking_uri]
    assert main([*argv, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split(",")
    assert header[-3:] == [MEAN_EPOCH_SECONDS, N_PARAMS, "pareto"]
    assert sum(line.endswith(",True") for line in lines[1:]) == len(ot.best_trials)


def test_front_picture_is_logged_on_the_parent_and_loads(study, tmp_path) -> None:
    result, client, _ = study
    path = client.download_artifacts(result.parent_run_id, f"report/{FRONT_FIGURE}", str(tmp_path))
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    report = (result.output_dir / "reports" / result.study_name / "report.md").read_text()
    assert "## Pareto front" in report and f"]({FRONT_FIGURE})" in report
