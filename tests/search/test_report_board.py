"""The report's notes and ``leaderboard --by`` on a study written straight into MLflow.

No training: an adaptive (TPE) study's runs as the tracker logs them, with one configuration run
twice on the same seeds, so the report must say that it merged them and that the study is
exploratory, and the CLI's csv/json must carry the pairwise tests.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from search.cli import main
from search.report import build_report
from search.schema import OUTCOME_TAG, PARENT_TAG, ROLE_STUDY, ROLE_TAG, STUDY_TAG

_COMMON = {
    "depth": "20",
    "width": "64",
    "lr": "0.001",
    "dataset": "digits",
    "optimizer": "adam",
    "batch_size": "64",
    "epochs": "5",
    "dropout": "0.0",
    "weight_decay": "0.0",
    "bn": "none",
    "init": "matched",
    "init_is_matched": "true",
}
#: activation, its alpha param, the initializer ``matched`` resolved to, mean accuracy
_CELLS = [
    ("relu", None, "he_normal", 0.90),
    ("relu", None, "he_normal", 0.90),  # the searcher proposed it again: same seeds, merged
    ("tanh", None, "glorot_uniform", 0.80),
    ("leaky_relu", "0.01", "he_normal", 0.92),
]


@pytest.fixture(scope="module")
def tpe_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, mlflow.MlflowClient]:
    root = tmp_path_factory.mktemp("board")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("gradsweep", artifact_location=str(root / "art"))
    tags = {STUDY_TAG: "s", ROLE_TAG: ROLE_STUDY, "searcher": "tpe", "scheduler": "fifo"}
    parent = client.create_run(experiment, tags={**tags, "design": "false"})
    rng = np.random.default_rng(0)
    for activation, alpha, init, mean in _CELLS:
        params = {**_COMMON, "activation": activation, "init_applied": init}
        if alpha is not None:
            params["alpha"] = alpha
        run = client.create_run(
            experiment,
            tags={PARENT_TAG: parent.info.run_id, OUTCOME_TAG: "completed"},
        )
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        values = mean + rng.normal(0, 0.01, 3)
        metrics = {"best_val_accuracy": float(values.mean()), "seeds": 3.0, "epochs_run": 5.0}
        for seed, value in enumerate(values):
            metrics[f"seed/{seed}/best_val_accuracy"] = float(value)
            metrics[f"seed/{seed}/test_accuracy"] = float(value)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    return uri, client


def test_report_says_what_was_merged_and_that_an_adaptive_search_is_exploratory(
    tpe_study, tmp_path: Path
) -> None:
    _, client = tpe_study
    report = build_report(client, "s", tmp_path / "report", log=False)
    merged = [n for n in report.notes if "merged" in n]
    assert len(merged) == 1 and merged[0].startswith("3 observations repeated a configuration")
    caveat = [n for n in report.notes if n.startswith("searcher tpe, scheduler fifo")]
    assert len(caveat) == 1 and "exploratory" in caveat[0]
    text = (tmp_path / "report" / "report.md").read_text()
    assert merged[0] in text and caveat[0] in text
    pairs = report.pairwise["activation"].set_index(["a", "b"])
    assert pairs.loc[("relu", "tanh"), "reason"] == ""  # He and Glorot share the matched rule
    assert (pairs.loc[("relu", "tanh"), "seeds_a"], pairs.loc[("relu", "tanh"), "cells_a"]) == (
        3,
        1,
    )


def test_leaderboard_by_writes_levels_and_pairwise_tests_as_csv_and_json(
    tpe_study, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, _ = tpe_study
    argv = ["leaderboard", "--study", "s", "--tracking-uri", uri, "--by", "activation"]
    assert main([*argv, "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    levels = table[table["kind"] == "level"].set_index("level")
    assert levels.loc["relu", "n"] == 3 and levels.loc["relu", "cells"] == 1
    pairwise = table[table["kind"] == "pairwise"]
    assert len(pairwise) == 3 and pairwise["p_holm"].notna().all()
    assert main([*argv, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["level"] for r in records["levels"]} == {"relu", "tanh", "leaky_relu"}
    by_pair = {(r["a"], r["b"]): r for r in records["pairwise"]}
    relu_tanh = by_pair[("relu", "tanh")]
    assert relu_tanh["effect"] == pytest.approx(0.10, abs=0.03) and relu_tanh["p_holm"] < 0.05
    assert relu_tanh["ci_low"] > 0 and relu_tanh["strata"] == 1
