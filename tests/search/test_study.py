"""End to end: a real study through local Ray Tune, Optuna (SQLite) and MLflow (SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from search import run_study
from search.schema import (
    MEAN_EPOCH_SECONDS,
    OUTCOME_TAG,
    OUTCOMES,
    PARENT_TAG,
    STUDY_METRICS_PREFIX,
)
from spaces import load_config

pytestmark = pytest.mark.slow
N_TRIALS, EPOCHS = 4, 2


@pytest.fixture(scope="module")
def study(local_ray: None, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("study")
    config = load_config(
        {
            "name": "e2e",
            "search": {
                "activations": {
                    "relu": {},
                    "tanh": {},
                    "leaky_relu": {"alpha": {"low": 0.01, "high": 0.3, "log": True}},
                    "elu": {"alpha": {"low": 0.5, "high": 1.5}},
                    "prelu": {"alpha": 0.25},
                },
                "enqueue": [{"activation": "prelu", "init": "he_normal", "bn": "none"}],
                "initializers": ["he_normal", "glorot_uniform"],
                "batch_norm": ["none", "before"],
            },
            "model": {"depth": 3, "width": 32},
            "training": {"epochs": EPOCHS, "batch_size": 64},
            "num_samples": N_TRIALS,
            "max_concurrent": 2,
            "output_dir": str(out),
        }
    )
    result = run_study(config)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    children = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'"
    )
    return result, client, children


def test_one_parent_and_n_nested_children(study) -> None:
    result, client, children = study
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["gradsweep.study"] == result.study_name
    assert parent.data.params["model.depth"] == "3"
    assert len(children) == N_TRIALS
    for run in children:
        assert run.data.tags[PARENT_TAG] == result.parent_run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags[OUTCOME_TAG] == "completed"
        assert {"activation", "init", "bn"} <= set(run.data.tags)
        assert run.info.run_name.startswith("t0")
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0


def _ms(run) -> int:
    return run.info.end_time - run.info.start_time


def test_runs_last_as_long_as_the_trials_did(study) -> None:
    """Start and end are the trial's own (not when its writes reached MLflow): a child's run
    lasts at least its epochs (``epochs_run`` x ``mean_epoch_seconds``, measured in the trial),
    and the study's run spans all of its trials."""
    result, client, children = study
    parent = client.get_run(result.parent_run_id)
    for run in children:
        metrics = run.data.metrics
        trained_ms = metrics["epochs_run"] * metrics[MEAN_EPOCH_SECONDS] * 1000
        assert metrics["epochs_run"] == EPOCHS and trained_ms > 0
        assert _ms(run) >= trained_ms, (run.info.run_name, _ms(run), trained_ms)
        assert parent.info.start_time <= run.info.start_time
        assert run.info.end_time <= parent.info.end_time
    assert _ms(parent) >= max(_ms(run) for run in children)


def test_the_study_run_logs_its_headline(study) -> None:
    """What the parent's page shows first: best val accuracy and that trial's test accuracy,
    trials by outcome, wall time."""
    result, client, children = study
    parent = client.get_run(result.parent_run_id)
    headline = {
        k.removeprefix(STUDY_METRICS_PREFIX): v
        for k, v in parent.data.metrics.items()
        if k.startswith(STUDY_METRICS_PREFIX)
    }
    best = max(r.data.metrics["best_val_accuracy"] for r in children)
    assert headline["best_val_accuracy"] == pytest.approx(best)
    of_best = [
        r.data.metrics["test_accuracy"]
        for r in children
        if r.data.metrics["best_val_accuracy"] == pytest.approx(best)
    ]
    assert any(headline["test_accuracy_of_best"] == pytest.approx(t) for t in of_best)
    assert headline["trials"] == N_TRIALS
    assert {o: headline[f"trials_{o}"] for o in OUTCOMES} == {
        o: (N_TRIALS if o == "completed" else 0) for o in OUTCOMES
    }
    wall_ms = round(headline["wall_seconds"] * 1000)
    assert max(_ms(run) for run in children) <= wall_ms <= _ms(parent)


def test_optuna_study_matches_child_runs(study) -> None:
    result, _, children = study
    ot = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    trials = {t.number: t for t in ot.trials}
    assert len(trials) == N_TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())
    for run in children:
        trial = trials[int(run.data.tags["optuna.trial_number"])]
        params = run.data.params
        assert trial.params["activation"] == params["activation"]
        assert trial.params["init"] == params["init"]
        assert trial.params["bn"] == params["bn"]
        assert trial.params["lr"] == pytest.approx(float(params["lr"]))
        alpha_key = f"{params['activation']}_alpha"
        if alpha_key in trial.params:
            assert trial.params[alpha_key] == pytest.approx(float(params["alpha"]))
        assert trial.value == pytest.approx(run.data.metrics["best_val_accuracy"])


def test_no_alpha_for_activations_without_one(study) -> None:
    result, _, children = study
    ot = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    no_alpha = {"relu", "tanh", "logistic", "selu"}
    for run in children:
        if run.data.params["activation"] in no_alpha:
            assert "alpha" not in run.data.params
            assert "α" not in run.info.run_name
    for trial in ot.trials:
        if trial.params["activation"] in no_alpha:
            assert not any(k.endswith("_alpha") for k in trial.params)


def test_leaderboard_command_is_sorted_and_agrees_with_mlflow(study) -> None:
    result, _, children = study
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.cli",
            "leaderboard",
            "--study",
            result.study_name,
            "--tracking-uri",
            result.tracking_uri,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(proc.stdout)
    assert [r["rank"] for r in rows] == list(range(1, N_TRIALS + 1))
    scores = [r["best_val_accuracy"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    by_name = {run.info.run_name: run for run in children}
    assert set(by_name) == {r["run_name"] for r in rows}
    for row in rows:
        run = by_name[row["run_name"]]
        assert row["best_val_accuracy"] == pytest.approx(run.data.metrics["best_val_accuracy"])
        assert row["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
        assert row["activation"] == run.data.params["activation"]


def test_leaderboard_artifacts_on_parent(study) -> None:
    result, client, _ = study
    names = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"leaderboard.csv", "leaderboard.md", "config.json"} <= names
    local = Path(client.download_artifacts(result.parent_run_id, "leaderboard.csv"))
    assert len(local.read_text().strip().splitlines()) == N_TRIALS + 1


def test_learned_prelu_slopes_reach_mlflow(study) -> None:
    _, client, children = study
    prelu = [r for r in children if r.data.params["activation"] == "prelu"]
    assert prelu, "the enqueued prelu trial ran"
    for run in prelu:
        assert run.data.params["alpha"] == "0.25"
        for layer in ("layer_01", "layer_03"):
            history = client.get_metric_history(run.info.run_id, f"prelu/slope/{layer}")
            assert [m.step for m in history] == list(range(1, EPOCHS + 1))
            assert history[-1].value != 0.25, "the slope was learned"


def test_grid_runs_each_distinct_configuration_once(local_ray: None, tmp_path: Path) -> None:
    config = load_config(
        {
            "name": "grid",
            "searcher": {"name": "grid"},
            "search": {
                "activations": {"relu": {}, "elu": {"alpha": {"low": 0.5, "high": 1.5, "grid": 2}}},
                "initializers": ["he_normal", "glorot_uniform"],
                "lr": 0.01,
            },
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 1},
            "num_samples": 16,
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config)
    board = result.leaderboard
    assert len(board) == 6  # (relu + 2 elu alphas) x 2 inits, not 16 and no repeats
    assert len({(r.activation, r.alpha, r.init) for r in board.itertuples()}) == 6
    assert result.notes[0].startswith("grid: 6 distinct configurations")


def test_short_trials_checkpoint_their_last_epoch_only(study) -> None:
    """``checkpoint_min_seconds`` (30 s) skips the per-epoch checkpoints of these sub-second
    trials, and the last epoch's is always there: the trained model stays loadable."""
    import torch

    result, _, _ = study
    trial_dirs = [d for d in (result.output_dir / "ray").glob("*/t0*") if d.is_dir()]
    assert len(trial_dirs) == N_TRIALS
    for trial_dir in trial_dirs:
        (checkpoint,) = trial_dir.glob("checkpoint_*/checkpoint.pt")
        assert int(torch.load(checkpoint, weights_only=False)["epoch"]) == EPOCHS


def _states_and_outcomes(result) -> tuple[list[str], list[str], dict[str, set[str]]]:
    """The study's Optuna trial states and its child runs' outcomes, both sorted, and the MLflow
    statuses of each outcome's runs."""
    trials = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage).trials
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    children = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'"
    )
    statuses: dict[str, set[str]] = {}
    for run in children:
        statuses.setdefault(run.data.tags[OUTCOME_TAG], set()).add(run.info.status)
    outcomes = sorted(r.data.tags[OUTCOME_TAG] for r in children)
    return sorted(t.state.name for t in trials), outcomes, statuses


def test_trials_asha_stops_are_pruned_in_optuna(local_ray: None, tmp_path: Path) -> None:
    """One trial at a time, good learning rates first: ASHA stops the hopeless later ones at its
    first rung, and Optuna hears PRUNED for exactly those (not COMPLETE with a 1-epoch score)."""
    good, bad = {"activation": "relu", "lr": 0.05}, {"activation": "relu", "lr": 1e-7}
    config = load_config(
        {
            "name": "asha",
            "search": {
                "activations": ["relu"],
                "initializers": ["he_normal"],
                "lr": {"low": 1e-7, "high": 0.05, "log": True},
                "enqueue": [good, good, bad, bad],
            },
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 4, "batch_size": 64},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
            "diagnostics": {"enabled": False},
            "num_samples": 4,
            "max_concurrent": 1,
            "output_dir": str(tmp_path / "out"),
        }
    )
    states, outcomes, statuses = _states_and_outcomes(run_study(config))
    assert "PRUNED" in states and "RUNNING" not in states, states
    assert states.count("PRUNED") == outcomes.count("early_stopped"), (states, outcomes)
    assert states.count("COMPLETE") == outcomes.count("completed")
    assert statuses["early_stopped"] == {"FINISHED"}  # a search's normal work, not a failure


def test_trials_the_time_budget_stops_are_pruned_in_optuna(local_ray: None, tmp_path: Path) -> None:
    config = load_config(
        {
            "name": "budget",
            "search": {"activations": ["relu", "tanh"], "initializers": ["he_normal"]},
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 5000, "batch_size": 64},
            "diagnostics": {"enabled": False},
            "num_samples": 4,
            "max_concurrent": 2,
            "budget_minutes": 0.75,
            "output_dir": str(tmp_path / "out"),
        }
    )
    states, outcomes, statuses = _states_and_outcomes(run_study(config))
    assert states and set(states) == {"PRUNED"}, "stopped by the budget, never left RUNNING"
    assert outcomes == ["stopped"] * len(outcomes) and outcomes, outcomes
    assert statuses == {"stopped": {OUTCOMES["stopped"][0]}} == {"stopped": {"FINISHED"}}
