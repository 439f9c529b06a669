"""Acceptance, offline: an OpenML data set from a cache the test writes (OpenML's own format)
trains in a real Ray study; with an empty cache and no network, ``gradsweep run`` says so in one
line, exits 2 and creates nothing (no MLflow store, run or Optuna study, no output folder)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from offline import refusing
from openml_cache import write_openml_cache

from search import run_study
from search.cli import main
from spaces import load_config
from trainers import datasets, openml

pytestmark = pytest.mark.slow
REFUSED: list[object] = []  # every outside connection refused below


@pytest.fixture(autouse=True)
def _outside_network_blocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No host but this one: Ray (loopback) works, openml.org is unreachable, and every attempt
    to reach it is recorded."""
    getaddrinfo, guarded = refusing(REFUSED.append)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(openml, "OPENML_RETRIES", 1)
    monkeypatch.setattr(openml, "OPENML_RETRY_DELAY_S", 0.01)
    datasets._load_splits_cached.cache_clear()  # loaded from this test's cache, not memory
    REFUSED.clear()
    yield
    datasets._load_splits_cached.cache_clear()


def test_openml_from_the_cache_trains_in_a_real_study(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADSWEEP_DATA_HOME", str(write_openml_cache(tmp_path / "cache")))
    config = load_config(
        {
            "name": "openml-tiny",
            "data": {"name": "openml", "options": {"name": "tiny"}},
            "search": {"activations": ["relu", "elu"]},
            "model": {"depth": 2, "width": 8},
            "training": {"epochs": 2, "batch_size": 16},
            "num_samples": 2,
            "output_dir": str(tmp_path / "out"),
        }
    )
    result = run_study(config)
    # the cache held it: nothing outside this machine was asked (openml.org, telemetry)
    assert REFUSED == []
    board = result.leaderboard
    assert len(board) == 2 and set(board["outcome"]) == {"completed"}
    assert set(board["dataset"]) == {"openml"}
    assert board["best_val_accuracy"].between(0, 1).all()
    study = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["data.options.name"] == "tiny"


def test_empty_cache_without_network_is_one_line_and_creates_nothing(
    local_ray: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "empty-cache"
    monkeypatch.setenv("GRADSWEEP_DATA_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(
        "name: fm\ndata: {name: openml, options: {name: Fashion-MNIST}}\n"
        "num_samples: 1\ntraining: {epochs: 1}\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    code = main(["run", str(tmp_path / "study.yaml")])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, captured.err
    assert "OpenML data set 'Fashion-MNIST' is not in the" in lines[0]
    assert str(home) in lines[0] and "GRADSWEEP_DATA_HOME" in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert any("openml" in str(host) for host in REFUSED), "a miss should have tried openml.org"
    # no output folder (so no MLflow store, run, Optuna study or report), no cache folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
