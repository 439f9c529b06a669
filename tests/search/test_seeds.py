"""Repeated seeds fused in one Ray Tune trial: Optuna sees the mean, MLflow every seed."""

from __future__ import annotations

import mlflow
import numpy as np
import optuna
import pytest

from search import run_study
from search.schema import PARENT_TAG
from spaces import load_config
from trainers import TrainSettings, build_mlp, load_splits, seed_everything, train

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
        per_seed = [m[f"seed/{i}/best_val_accuracy"] for i in range(SEEDS)]
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
        # seed 0 of the fused trial is the plain training with seed 10
        seed_everything(10)
        model = build_mlp(64, 10, 3, 32, run.data.params["activation"], None, "he_normal", "none")
        plain = train(model, data, TrainSettings(epochs=EPOCHS, lr=0.003, seed=10))
        assert m["seed/0/best_val_accuracy"] == pytest.approx(plain.best_val_accuracy, abs=1e-4)
        # diagnostics of the fused trial describe its first seed
        history = client.get_metric_history(run.info.run_id, "diag/grad_norm/layer_01")
        assert [h.step for h in history] == list(range(1, EPOCHS + 1))
        expected = plain.history[-1].diagnostics["diag/grad_norm/layer_01"]
        assert history[-1].value == pytest.approx(expected, rel=1e-3)
