"""Diagnostics inside a real Ray Tune search: divergence, gradient-health stopping, pictures."""

from __future__ import annotations

import matplotlib.image
import mlflow
import optuna
import pandas as pd
import pytest

from search import run_study
from search.plots import DPI, FIGSIZE, PARENT_FIGURE, TRIAL_FIGURE
from search.schema import OUTCOME_TAG, PARENT_TAG
from search.tracking import LAYER_TABLE
from spaces import load_config

pytestmark = pytest.mark.slow
EPOCHS = 3


def _children(result):
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'"
    )
    return client, runs


@pytest.fixture(scope="module")
def diverging_study(local_ray: None, tmp_path_factory: pytest.TempPathFactory):
    config = load_config(
        {
            "name": "diverge",
            "search": {
                "activations": ["relu", "elu", "logistic"],
                "initializers": ["he_normal", "pytorch_default"],
                "lr": {"low": 0.01, "high": 0.05, "log": True},
                # the first trial: an absurd learning rate that must diverge
                "enqueue": [{"activation": "relu", "init": "he_normal", "lr": 1.0e4}],
            },
            "model": {"depth": 6, "width": 32},
            "training": {"epochs": EPOCHS, "optimizer": "sgd", "batch_size": 64},
            "diagnostics": {"plots_top": 2},
            "num_samples": 4,
            "output_dir": str(tmp_path_factory.mktemp("diverge")),
        }
    )
    return run_study(config)


def test_diverged_trial_fails_alone(diverging_study) -> None:
    result = diverging_study
    client, runs = _children(result)
    assert len(runs) == 4
    diverged = [r for r in runs if r.data.tags[OUTCOME_TAG] == "diverged"]
    assert len(diverged) == 1
    bad = diverged[0]
    assert bad.info.status == "FAILED"
    assert bad.data.params["lr"] == "10000.0"
    assert int(bad.data.tags["gradsweep.diverged_epoch"]) >= 1
    assert "non-finite" in bad.data.tags["gradsweep.reason"]
    for run in runs:
        if run is not bad:
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(run.info.run_id, "val_accuracy")
            assert len(history) == EPOCHS
    study = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    states = {t.number: t.state for t in study.trials}
    assert states[int(bad.data.tags["optuna.trial_number"])] == optuna.trial.TrialState.FAIL
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 3


def test_leaderboard_lists_diverged_last_with_reason(diverging_study) -> None:
    board = diverging_study.leaderboard
    assert board.iloc[-1]["outcome"] == "diverged"
    assert "non-finite" in board.iloc[-1]["reason"]
    assert (board.iloc[:-1]["outcome"] == "completed").all()


def test_diagnostic_metrics_and_flags_reach_mlflow(diverging_study, tmp_path) -> None:
    client, runs = _children(diverging_study)
    healthy = next(r for r in runs if r.info.status == "FINISHED")
    for layer in ("layer_01", "layer_06"):
        history = client.get_metric_history(healthy.info.run_id, f"diag/grad_norm/{layer}")
        assert [m.step for m in history] == list(range(EPOCHS + 1)), "epoch 0 = at init"
        assert all(m.value > 0 for m in history)
    assert "diag/grad_ratio_first_last" in healthy.data.metrics
    # the other per-layer figures: one table per trial, not 5 x depth metrics
    assert not any(
        k.startswith(("diag/act_std/", "init/diag/grad_norm/")) for k in healthy.data.metrics
    )
    table = pd.read_csv(client.download_artifacts(healthy.info.run_id, LAYER_TABLE, str(tmp_path)))
    assert list(table["epoch"].unique()) == list(range(EPOCHS + 1))
    assert list(table["layer"].unique()) == list(range(1, 7))
    assert table["update_ratio"].isna().tolist() == [True] * 6 + [False] * 6 * EPOCHS
    assert (table["act_std"] > 0).all()
    last = table[(table["epoch"] == EPOCHS) & (table["layer"] == 1)].iloc[0]
    assert last["grad_norm"] == pytest.approx(healthy.data.metrics["diag/grad_norm/layer_01"])
    vanishing = [k for k in healthy.data.metrics if k.endswith("/diag/vanishing_epochs")]
    for key in vanishing:  # a counter is logged when it changes, so its latest is the count
        steps = [m.value for m in client.get_metric_history(healthy.info.run_id, key)]
        assert steps == sorted(set(steps)) and healthy.data.metrics[key] == steps[-1]
    assert vanishing
    assert healthy.data.tags["diag.vanishing"] in ("0/1", "1/1")
    assert healthy.data.tags["diag.at_init.vanishing"] in ("0/1", "1/1")


def test_pictures_are_logged_and_load(diverging_study, tmp_path) -> None:
    result = diverging_study
    client, runs = _children(result)
    with_picture = [
        r
        for r in runs
        if any(a.path == TRIAL_FIGURE for a in client.list_artifacts(r.info.run_id, "diagnostics"))
    ]
    outcomes = sorted(r.data.tags[OUTCOME_TAG] for r in with_picture)
    assert outcomes == ["completed", "completed", "diverged"]  # top 2 and every diverged one
    expected = (int(FIGSIZE[1] * DPI), int(FIGSIZE[0] * DPI))
    for run in with_picture:
        path = client.download_artifacts(run.info.run_id, TRIAL_FIGURE, str(tmp_path))
        assert matplotlib.image.imread(path).shape[:2] == expected
    parent = client.download_artifacts(result.parent_run_id, PARENT_FIGURE, str(tmp_path))
    assert matplotlib.image.imread(parent).shape[:2] == expected


def test_gradient_health_stopping_prunes(local_ray: None, tmp_path) -> None:
    config = load_config(
        {
            "name": "healthstop",
            "search": {"activations": ["relu"], "initializers": ["he_normal"], "lr": 0.01},
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 4},
            # every first-layer gradient is below 1e9: each trial must stop after 2 epochs
            "diagnostics": {"stop_vanishing_below": 1.0e9, "stop_patience": 2},
            "num_samples": 2,
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config)
    _, runs = _children(result)
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"  # stopping early is not a failure (README)
        assert run.data.tags[OUTCOME_TAG] == "stopped"
        assert "vanishing gradients" in run.data.tags["gradsweep.reason"]
        assert run.data.metrics["epochs_run"] == 2
    study = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2


def test_depth_as_a_factor_flags_at_initialisation_and_draws_how_deep(
    local_ray: None, tmp_path
) -> None:
    """depth: [4, 12, 20] over relu (with and without BN), elu and logistic: the figures of the
    initialised nets reach MLflow at step 0, ReLU + BN at depth 20 explodes there, logistic at
    depth 20 vanishes, and the report draws how deep each activation can go."""
    design = [
        {"activation": "relu", "bn": bn, "depth": depth}
        for bn in ("none", "before")
        for depth in (4, 12, 20)
    ]
    design += [{"activation": a, "depth": 20} for a in ("elu", "logistic")]
    config = load_config(
        {
            "name": "depths",
            "model": {"depth": [4, 12, 20], "width": 64},
            "search": {
                "activations": ["relu", "elu", "logistic"],
                "initializers": ["matched"],
                "batch_norm": ["none", "before"],
                "lr": 0.001,
            },
            "design": design,
            "training": {"epochs": 2},
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config)
    client, runs = _children(result)
    assert len(runs) == len(design) == config.num_samples
    by_cell = {
        (r.data.params["activation"], r.data.params["bn"], r.data.params["depth"]): r for r in runs
    }
    assert set(by_cell) == {(d["activation"], d.get("bn", "none"), str(d["depth"])) for d in design}
    for run in runs:
        steps = client.get_metric_history(run.info.run_id, "diag/grad_ratio_first_last")
        assert steps[0].step == 0, "the initialised net is measured"
        assert run.data.tags["depth"] == run.data.params["depth"]
    assert by_cell["relu", "before", "20"].data.tags["diag.at_init.exploding"] == "1/1"
    assert by_cell["relu", "none", "20"].data.tags["diag.at_init.exploding"] == "0/1"
    assert by_cell["logistic", "none", "20"].data.tags["diag.at_init.vanishing"] == "1/1"
    assert by_cell["elu", "none", "20"].data.tags["diag.at_init.vanishing"] == "0/1"
    path = client.download_artifacts(
        result.parent_run_id, "report/depth_by_activation.png", str(tmp_path / "dl")
    )
    assert matplotlib.image.imread(path).shape[0] > 100
