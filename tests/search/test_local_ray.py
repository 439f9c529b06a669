"""run_study starts an embedded Ray when none is running, and stops it: twice in one process."""

from __future__ import annotations

import gc

import optuna
import pytest
import ray

from search import UserError, run_study
from search.stores import study_exists
from spaces import load_config

pytestmark = pytest.mark.slow


def test_two_studies_in_one_process_each_with_its_own_ray(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray starts and stops beside another thread (stores opening, pictures being drawn): no
    garbage collection may run then, or a Ray object's finalizer can reach a core worker that
    is gone and Ray ends the process (seen in the benchmark, which runs several studies)."""
    gc_during: list[bool] = []
    for name in ("init", "shutdown"):
        real = getattr(ray, name)

        def watched(*args: object, _real=real, **kwargs: object) -> object:
            gc_during.append(gc.isenabled())
            return _real(*args, **kwargs)

        monkeypatch.setattr(ray, name, watched)
    assert not ray.is_initialized()
    config = load_config(
        {
            "name": "embedded",
            "search": {"activations": ["relu"], "initializers": ["he_normal"], "lr": 0.01},
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 1},
            "num_samples": 2,
            "output_dir": str(tmp_path),
        }
    )
    first = run_study(config)
    assert not ray.is_initialized(), "the study stops the Ray it started"
    second = run_study(config)
    assert not ray.is_initialized()
    assert len(first.leaderboard) == len(second.leaderboard) == 2
    assert first.study_name != second.study_name
    with pytest.raises(UserError, match="exists already; 'gradsweep resume"):
        run_study(config, study_name=first.study_name)
    assert not ray.is_initialized()
    assert gc_during == [False] * 4, "two starts and two stops, none with gc enabled"
    assert gc.isenabled()


def test_a_taken_automatic_name_gets_a_suffix(tmp_path) -> None:
    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    mlflow_url = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not study_exists(mlflow_url, optuna_url, "s-1")
    assert not (tmp_path / "optuna.db").exists(), "checking creates no store"
    optuna.create_study(study_name="s-1", storage=optuna_url)
    assert study_exists(mlflow_url, optuna_url, "s-1")


def test_the_python_api_honours_ray_address(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like the CLI (and `ray.init()`), `run_study` attaches to the cluster RAY_ADDRESS names
    rather than starting its own: here a dead one, refused before anything is created."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    config = load_config({"name": "env", "num_samples": 1, "output_dir": str(tmp_path / "o")})
    with pytest.raises(UserError, match=r"no Ray cluster reachable at 127\.0\.0\.1:1"):
        run_study(config)
    assert not ray.is_initialized()
    assert not (tmp_path / "o").exists()
