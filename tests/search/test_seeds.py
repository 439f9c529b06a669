"""Repeated seeds fused in one Ray Tune trial: Optuna sees the mean, MLflow every seed by its
value, and a seed that diverges counts at chance accuracy instead of dropping out."""

from __future__ import annotations

import sys
from typing import Any

import mlflow
import numpy as np
import optuna
import pytest
import ray
import torch

from search import run_study
from search.schema import DIVERGED_SEEDS_TAG, OUTCOME_TAG, PARENT_TAG, SEEDS_DIVERGED_TAG
from search.seeds import SeedBook
from search.trainable import run_trial
from spaces import load_config
from trainers import EpochReport, TrainSettings, build_mlp, load_splits, seed_everything, train

pytestmark = pytest.mark.slow
SEEDS, EPOCHS = 3, 2


def test_fused_seeds_reach_optuna_and_mlflow(local_ray: None, tmp_path) -> None:
    config = load_config(
        {
            "name": "seeds",
            "search": {"activations": ["elu", "relu"], "initializers": ["he_normal"], "lr": 0.003},
            "model": {"depth": 3, "width": 32},
            "training": {"epochs": EPOCHS, "seeds": SEEDS, "seed": 10},
            "num_samples": 2,
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'"
    )
    study = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    values = {t.number: t.value for t in study.trials}
    data = load_splits("digits")
    assert len(runs) == 2
    for run in runs:
        m = run.data.metrics
        per_seed = [m[f"seed/{10 + i}/best_val_accuracy"] for i in range(SEEDS)]
        assert m["seeds"] == SEEDS
        assert m["best_val_accuracy"] == pytest.approx(np.mean(per_seed))
        assert m["best_val_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert (
            m["best_val_accuracy_ci_low"]
            <= m["best_val_accuracy"]
            <= m["best_val_accuracy_ci_high"]
        )
        assert values[int(run.data.tags["optuna.trial_number"])] == pytest.approx(
            m["best_val_accuracy"]
        )
        # seed 10 of the fused trial is the plain training with seed 10
        seed_everything(10)
        model = build_mlp(64, 10, 3, 32, run.data.params["activation"], None, "he_normal", "none")
        plain = train(model, data, TrainSettings(epochs=EPOCHS, lr=0.003, seed=10))
        assert m["seed/10/best_val_accuracy"] == pytest.approx(plain.best_val_accuracy, abs=1e-4)
        # every seed is measured, from initialisation (step 0) on; per-layer figures: seed 10
        history = client.get_metric_history(run.info.run_id, "diag/grad_norm/layer_01")
        assert [h.step for h in history] == list(range(EPOCHS + 1))
        assert history[0].value == pytest.approx(
            plain.history[0].initial["diag/grad_norm/layer_01"], rel=1e-5
        )
        expected = plain.history[-1].diagnostics["diag/grad_norm/layer_01"]
        assert history[-1].value == pytest.approx(expected, rel=1e-2)
        for seed in range(10, 10 + SEEDS):
            rate = client.get_metric_history(
                run.info.run_id, f"seed/{seed}/diag/grad_ratio_first_last"
            )
            assert [h.step for h in rate] == list(range(EPOCHS + 1))
        assert run.data.tags["diag.at_init.vanishing"].endswith(f"/{SEEDS}")


def diverging_seed_trial(params: dict[str, Any], study: dict[str, Any], data: Any) -> None:
    """The real trainable, with seed 11's network built with an absurd output layer: that seed
    alone diverges in its first step (``seed_everything(11)`` runs just before its build)."""
    import search.trainable as trainable

    real = trainable.model_builder

    def builder(*args: Any) -> Any:
        build = real(*args)

        def diverging() -> torch.nn.Module:
            model = build()
            if torch.initial_seed() == 11:
                with torch.no_grad():
                    model.head.weight.mul_(1e38)
            return model

        return diverging

    trainable.model_builder = builder
    try:
        run_trial(params, study, data)
    finally:
        trainable.model_builder = real


def test_a_diverged_seed_counts_at_chance_and_is_tagged(local_ray: None, tmp_path) -> None:
    config = load_config(
        {
            "name": "seeddiverge",
            "search": {"activations": ["relu"], "initializers": ["he_normal"], "lr": 0.003},
            "model": {"depth": 3, "width": 32},
            "training": {"epochs": EPOCHS, "seeds": SEEDS, "seed": 10},
            "num_samples": 1,
            "output_dir": str(tmp_path),
        }
    )
    # Ray workers can't import this test module: ship the trainable by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    result = run_study(config, trainable=diverging_seed_trial)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    (run,) = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'"
    )
    m = run.data.metrics
    assert m["seed/11/diverged"] == 1.0 and m["seed/11/diverged_epoch"] == 1.0
    assert m["seed/10/diverged"] == m["seed/12/diverged"] == 0.0
    assert m["seeds_diverged"] == 1.0
    chance = m["chance_accuracy"]
    assert chance == pytest.approx(0.1)
    policy = np.mean([m["seed/10/best_val_accuracy"], chance, m["seed/12/best_val_accuracy"]])
    assert m["best_val_accuracy"] == pytest.approx(policy)
    # the survivors went on for every epoch, keyed by their seed value throughout
    for seed in (10, 12):
        steps = client.get_metric_history(run.info.run_id, f"seed/{seed}/val_accuracy")
        assert [h.step for h in steps] == list(range(1, EPOCHS + 1))
    assert run.data.tags[OUTCOME_TAG] == "completed"
    assert run.data.tags[SEEDS_DIVERGED_TAG] == f"1/{SEEDS}"
    assert run.data.tags[DIVERGED_SEEDS_TAG] == "seed 11 in epoch 1"
    study = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    assert study.trials[0].value == pytest.approx(policy)


def test_mean_epoch_seconds_is_the_mean_over_epochs_run_and_survives_a_resume() -> None:
    """The multi-objective ``epoch_seconds`` objective: every epoch counts once, also the epochs
    a resumed trial ran before its checkpoint."""

    def epoch(n: int, seconds: float) -> dict[int, EpochReport]:
        return {0: EpochReport(n, 1.0, 1.0, 0.5, 0.5, 0.5, seconds)}

    book = SeedBook([0], chance=0.1)
    assert book.record(epoch(1, 1.0))["mean_epoch_seconds"] == 1.0
    assert book.record(epoch(2, 3.0))["mean_epoch_seconds"] == 2.0
    resumed = SeedBook([0], chance=0.1)
    resumed.restore(book.state())
    metrics = resumed.record(epoch(3, 5.0))
    assert metrics["mean_epoch_seconds"] == 3.0 and metrics["epoch_seconds"] == 5.0
