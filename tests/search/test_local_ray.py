"""run_study starts an embedded Ray when none is running, and stops it: twice in one process."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import subprocess
import sys

import optuna
import pytest
import ray
from ray import tune

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


class _Probe(tune.Callback):
    """Looks at the study's own Ray while it runs: its nodes, and who may join it."""

    def __init__(self) -> None:
        self.nodes: list[str] = []
        self.gcs = ""
        self.attach: dict[str, subprocess.CompletedProcess[str]] = {}
        self.from_network: OSError | None = None

    def setup(self, **info: object) -> None:
        self.nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        self.gcs = ray.get_runtime_context().gcs_address
        address = _network_address()
        if address is not None:  # the port is bound to loopback only
            try:
                socket.create_connection((address, int(self.gcs.rsplit(":", 1)[1])), 3).close()
            except OSError as exc:
                self.from_network = exc
        else:
            self.from_network = OSError("no network address")
        code = f"import ray; ray.init(address={self.gcs!r}, log_to_driver=False)"
        ours = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        tokens = {
            "other token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
            "study token": {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"],
            },
        }
        for label, env in tokens.items():
            self.attach[label] = subprocess.run(
                [sys.executable, "-c", code],
                env={**ours, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )


def _network_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_embedded_ray_listens_on_loopback_with_its_own_token(tmp_path) -> None:
    """The study's embedded Ray is reachable from this machine only, and only with the token
    made for it; the process's environment is as before once the study ends."""
    before = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    probe = _Probe()
    config = load_config(
        {
            "name": "loopback",
            "search": {"activations": ["relu"], "initializers": ["he_normal"], "lr": 0.01},
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 1},
            "num_samples": 1,
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config, callbacks=[probe])
    assert len(result.leaderboard) == 1
    assert probe.nodes == ["127.0.0.1"]
    assert probe.gcs.startswith("127.0.0.1:")
    assert probe.from_network is not None, "the GCS port answers on the network address"
    refused = probe.attach["other token"]
    assert refused.returncode != 0 and "Failed to connect" in refused.stderr, refused.stderr[-2000:]
    assert probe.attach["study token"].returncode == 0, probe.attach["study token"].stderr[-2000:]
    assert {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")} == before
    assert not ray.is_initialized()
