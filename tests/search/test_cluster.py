"""A real 2-node Ray cluster, MLflow server and Optuna on PostgreSQL, as docker-compose runs them.

The nodes and the server are started with the very scripts compose runs (``deploy/*.sh``), with
token auth, on ports of their own and temp dirs of their own, so a Ray or MLflow someone else runs
on this machine is never touched. Each is started in a new session and stopped by killing its
process group: never ``ray stop``, which would stop every Ray on the machine. PostgreSQL is the
machine's own (127.0.0.1:5432, trust auth); the test creates fresh databases and drops them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from postgres import PG, admin_connection
from ray_nodes import (
    AUTH_VARS,
    BIN,
    DEPLOY,
    ROOT,
    Service,
    base_env,
    free_ports,
    reload_ray_auth,
    start_ray_nodes,
    stop_all,
    wait_for,
)

from search import run_study
from search.schema import PARENT_TAG, STUDY_TAG
from spaces import load_config

pytestmark = pytest.mark.slow
N_TRIALS, EPOCHS = 4, 6


# ---------------------------------------------------------------------------------------------
# docker-compose.yml and the scripts (no Docker daemon here: check what can be checked)


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _script_of(service: dict) -> str | None:
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value:
            words = value if isinstance(value, list) else value.split()
            return next((w for w in words if w.endswith(".sh")), words[0])
    return None


def test_compose_services_run_scripts_that_exist() -> None:
    services = _compose()["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "optuna-dashboard"} <= set(services)
    assert services["ray-worker-gpu"]["profiles"] == ["gpu"]
    gpu = services["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name, service in services.items():
        script = _script_of(service)
        if script is None:  # an upstream image run with its own command (postgres)
            assert not service["image"].startswith("gradsweep"), name
            continue
        # The image's WORKDIR is /app, a copy of the repository root.
        path = ROOT / script.removeprefix("/app/")
        assert path.is_file(), f"{name}: {script} is not in the repository"
        assert path.stat().st_mode & stat.S_IXUSR, f"{name}: {script} is not executable"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: mounts missing {source}"
    # Ray storage is one volume on the head and every worker.
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        assert "ray-storage:/app/gradsweep-runs" in services[name]["volumes"], name


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = 0
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not on 127.0.0.1"
    assert published >= 3  # MLflow, Ray dashboard, optuna-dashboard


def test_compose_takes_secrets_from_env_file_only() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${RAY_AUTH_TOKEN:?" in text and "${POSTGRES_PASSWORD:?" in text
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for secret in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert example[secret] == "", f".env.example must not carry a value for {secret}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    assert (ROOT / "Dockerfile").read_text().startswith("# ") and "FROM python:3.11-slim" in (
        ROOT / "Dockerfile"
    ).read_text()


@pytest.mark.parametrize("script", sorted(p.name for p in DEPLOY.glob("start-*.sh")))
def test_scripts_are_strict_bash(script: str) -> None:
    path = DEPLOY / script
    assert path.stat().st_mode & stat.S_IXUSR
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "RAY_AUTH_MODE must be 'token'"),
        ({"RAY_AUTH_MODE": "token"}, "RAY_AUTH_TOKEN is empty"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "short"}, "shorter than 32"),
    ],
)
@pytest.mark.parametrize("script", ["start-head.sh", "start-worker.sh"])
def test_ray_scripts_refuse_to_start_without_token_auth(
    script: str, env: dict, message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    done = subprocess.run(
        [str(DEPLOY / script)],
        env={**clean, **env, "RAY_BIN": "false"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and message in done.stderr


def test_mlflow_script_needs_a_backend_store() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_BACKEND_STORE_URI"}
    done = subprocess.run(
        [str(DEPLOY / "start-mlflow.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "MLFLOW_BACKEND_STORE_URI" in done.stderr


# ---------------------------------------------------------------------------------------------
# PostgreSQL databases, the MLflow server, the Ray cluster


@pytest.mark.parametrize("setting", [{"CI": "true"}, {"GRADSWEEP_EXPECT_POSTGRES": "1"}])
def test_a_missing_postgres_fails_where_it_is_expected(
    monkeypatch: pytest.MonkeyPatch, setting: dict[str, str]
) -> None:
    for key in ("CI", "GRADSWEEP_EXPECT_POSTGRES"):
        monkeypatch.delenv(key, raising=False)
    nowhere = {**PG, "port": 1}
    with pytest.raises(pytest.skip.Exception):  # a laptop without PostgreSQL: skipped
        admin_connection(nowhere)
    for key, value in setting.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match=r"expected .* not reachable at 127\.0\.0\.1:1"):
        admin_connection(nowhere)


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Fresh ``gradsweep_test_<random>_{mlflow,optuna}`` databases, dropped afterwards."""
    admin = admin_connection(PG)
    admin.autocommit = True
    prefix = f"gradsweep_test_{secrets.token_hex(4)}"
    names = {role: f"{prefix}_{role}" for role in ("mlflow", "optuna")}
    try:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'CREATE DATABASE "{name}"')
        yield {
            role: f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
            for role, name in names.items()
        }
    finally:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@dataclass
class Cluster:
    address: str
    token: str
    tracking_uri: str
    node_ids: set[str]
    services: list[Service]
    root: Path
    worker_node_id: str = ""


def _mlflow_healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(databases: dict[str, str]) -> Iterator[Cluster]:
    """deploy/start-mlflow.sh, deploy/start-head.sh and deploy/start-worker.sh, 1 CPU per node."""
    import ray

    # Short: Ray puts unix sockets under the temp dir, and their paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="gsw-", dir="/tmp"))
    token = secrets.token_hex(32)
    services: list[Service] = []
    saved = {k: os.environ.get(k) for k in AUTH_VARS}
    try:
        (mlflow_port,) = free_ports(1)
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        env = base_env()
        services.append(
            Service.start(
                "mlflow",
                [str(DEPLOY / "start-mlflow.sh")],
                {
                    **env,
                    "MLFLOW_BACKEND_STORE_URI": databases["mlflow"],
                    "MLFLOW_ARTIFACTS_DESTINATION": str(root / "mlartifacts"),
                    "MLFLOW_PORT": str(mlflow_port),
                    "MLFLOW_WORKERS": "1",
                },
                root / "mlflow.log",
            )
        )
        nodes = start_ray_nodes(root, token, env, services)
        worker_ports = nodes.worker_ports

        # This process is the driver: the same token as the nodes.
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.pop("RAY_ADDRESS", None)
        os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        reload_ray_auth()
        address = nodes.gcs_address
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        try:
            alive: list[str] = []

            def two_nodes() -> bool:
                alive[:] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
                return len(alive) == 2

            wait_for("2 Ray nodes", two_nodes, services, timeout_s=60)
            worker_node_id = next(
                n["NodeID"] for n in ray.nodes() if n["NodeManagerPort"] == worker_ports[0]
            )
            cpus = ray.cluster_resources().get("CPU")
            assert cpus == 2, f"cluster has {cpus} CPUs"
        finally:
            ray.shutdown()
        wait_for("MLflow server", lambda: _mlflow_healthy(tracking_uri), services, timeout_s=90)
        yield Cluster(address, token, tracking_uri, set(alive), services, root, worker_node_id)
    finally:
        stop_all(services, f"RAY_AUTH_TOKEN={token}".encode())
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reload_ray_auth()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def study(cluster: Cluster, databases: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """4 trials x 6 epochs, 2 at a time, 1 CPU each: one trial per node at any moment.

    Tune reuses a finished trial's actor for a pending trial, cancelling the actor it had asked
    for: a trial that ends before the other node's first actor is up (a cold Python and torch
    import, seconds on a busy machine) would pull the whole study onto one node. So a trial lasts
    several seconds here (6 epochs of 8000 samples at batch size 16), not one: on digits it took
    under a second once trial set-up got cheap, and the study once ran on one node.
    """
    out = tmp_path_factory.mktemp("cluster-study")  # Tune's storage_path: both nodes see it
    config = load_config(
        {
            "name": "cluster",
            "search": {
                "activations": {
                    "relu": {},
                    "tanh": {},
                    "elu": {"alpha": {"low": 0.5, "high": 1.5}},
                },
                "initializers": ["he_normal", "glorot_uniform"],
                "batch_norm": ["none"],
            },
            "data": {"name": "synthetic", "options": {"n_samples": 8000, "n_features": 20}},
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": EPOCHS, "batch_size": 16},
            "num_samples": N_TRIALS,
            "max_concurrent": 2,
            "resources": {"cpu": 1},
            "tracking": {"experiment": "gradsweep-cluster-test"},
            "output_dir": str(out),
        }
    )
    # The Optuna storage comes the way a cluster deployment passes it: the environment.
    os.environ["GRADSWEEP_OPTUNA_STORAGE"] = databases["optuna"]
    try:
        result = run_study(config, address=cluster.address, tracking_uri=cluster.tracking_uri)
    finally:
        os.environ.pop("GRADSWEEP_OPTUNA_STORAGE", None)
    client = mlflow.MlflowClient(tracking_uri=cluster.tracking_uri)
    runs = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{result.study_name}'"
    )
    return result, client, runs


def test_driver_without_the_token_is_refused(cluster: Cluster) -> None:
    env = {**base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # tries to connect: 2 (default 20, 1 s apart)
    code = f"import ray; ray.init(address={cluster.address!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert re.search(r"(?i)auth|token|unauthenticated", done.stderr), done.stderr[-2000:]


def test_trials_ran_on_both_nodes(cluster: Cluster, study) -> None:
    result, _, runs = study
    assert result.optuna_storage.startswith("postgresql+psycopg2://")
    assert not [note for note in result.notes if "MLflow" in note], result.notes
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == result.parent_run_id]
    assert len(children) == N_TRIALS
    nodes = {r.data.tags["node_id"] for r in children}
    assert nodes == cluster.node_ids, f"trials ran on {nodes}, cluster has {cluster.node_ids}"


def test_optuna_study_is_in_postgresql(study, databases: dict[str, str]) -> None:
    result, _, _ = study
    loaded = optuna.load_study(study_name=result.study_name, storage=databases["optuna"])
    assert len(loaded.trials) == N_TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in loaded.trials)


def test_mlflow_server_has_one_parent_and_n_children(study) -> None:
    result, client, runs = study
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert parents[0].info.status == "FINISHED"
    assert len(runs) == 1 + N_TRIALS
    for run in runs:
        if run.info.run_id != result.parent_run_id:
            assert run.data.tags[PARENT_TAG] == result.parent_run_id
            assert run.info.status == "FINISHED"
            assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == EPOCHS
    # Artifacts go through the server (mlflow-artifacts:/), not to a path only the driver sees.
    experiment = client.get_experiment(result.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    names = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"leaderboard.csv", "config.json"} <= names


def test_cli_takes_the_cluster_from_the_environment(
    cluster: Cluster, databases: dict[str, str], tmp_path: Path
) -> None:
    """`gradsweep run` with RAY_ADDRESS, GRADSWEEP_TRACKING_URI, GRADSWEEP_OPTUNA_STORAGE only."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "search": {"activations": ["relu", "tanh"], "initializers": ["he_normal"]},
                "model": {"depth": 2, "width": 8},
                "training": {"epochs": 1},
                "num_samples": 2,
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    env = base_env() | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": cluster.token,
        "RAY_ADDRESS": cluster.address,
        "GRADSWEEP_TRACKING_URI": cluster.tracking_uri,
        "GRADSWEEP_OPTUNA_STORAGE": databases["optuna"],
    }
    done = subprocess.run(
        [str(BIN / "gradsweep"), "run", str(config), "--study", "cli-on-cluster"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert cluster.tracking_uri in done.stdout
    loaded = optuna.load_study(study_name="cli-on-cluster", storage=databases["optuna"])
    assert len(loaded.trials) == 2
    client = mlflow.MlflowClient(tracking_uri=cluster.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("gradsweep").experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` = 'cli-on-cluster'",
    )
    assert len(runs) == 1 + 2
    assert not (tmp_path / "out" / "mlflow.db").exists()  # nothing fell back to local SQLite


def _raylet_pid(service: Service) -> int:
    """The raylet among a node's processes (its own process group)."""
    for pid in service.members():
        with suppress(OSError):
            if b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                return pid
    raise RuntimeError(f"no raylet in {service.name}'s process group\n{service.tail()}")


def test_worker_loss_mid_search(cluster: Cluster, tmp_path: Path) -> None:
    """Kill the worker node's raylet by PID mid-search (last test: the cluster loses a node).

    Ray Tune retries the trials that ran there from their last checkpoint on the surviving head
    node; the search ends with every trial terminal, no run RUNNING, and each retried trial's
    history continues (no epoch twice) instead of restarting.

    MLflow hears of a trial's epochs a little after they ran, so the kill waits for a run 2 to
    ``epochs - 6`` epochs in: that trial is still on the worker when its raylet dies even if
    MLflow lags it by a few epochs (with 8 epochs and no upper bound, a slow host's lag let the
    watched trial finish and the worker's next trial, 0 epochs in, be the one retried).
    """
    epochs, trials = 12, 4
    config = tmp_path / "workerloss.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "workerloss",
                # ~1 s per epoch: the lost node's trial must still run when Ray notices the loss
                "data": {"name": "synthetic", "options": {"n_samples": 12000, "n_features": 32}},
                "search": {"activations": ["relu", "tanh"], "initializers": ["he_normal"]},
                "model": {"depth": 3, "width": 64},
                "training": {"epochs": epochs, "batch_size": 16, "checkpoint_min_seconds": 0},
                "diagnostics": {"enabled": False},
                "num_samples": trials,
                "max_concurrent": 2,
                "max_failures": 3,
                "resources": {"cpu": 1},
                "tracking": {"experiment": "gradsweep-cluster-test"},
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    study = f"workerloss-{secrets.token_hex(3)}"
    log = tmp_path / "driver.log"
    env = {**base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "search.cli",
                "run",
                str(config),
                "--study",
                study,
                "--address",
                cluster.address,
                "--tracking-uri",
                cluster.tracking_uri,
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = mlflow.MlflowClient(tracking_uri=cluster.tracking_uri)

    def children() -> list:
        return client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`gradsweep.role` = 'trial'",
        )

    mid_way: set[str] = set()

    def worker_trial_mid_way() -> bool:
        if driver.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        on_worker = [
            r.info.run_id
            for r in children()
            if r.info.status == "RUNNING" and r.data.tags.get("node_id") == cluster.worker_node_id
        ]
        for run_id in on_worker:
            if 2 <= len(client.get_metric_history(run_id, "val_accuracy")) <= epochs - 6:
                mid_way.add(run_id)
        return bool(mid_way)

    worker = next(s for s in cluster.services if s.name == "ray-worker")
    try:
        wait_for(
            "a trial 2 epochs into its run on the worker",
            worker_trial_mid_way,
            cluster.services[:2],
            timeout_s=240,
        )
        os.kill(_raylet_pid(worker), signal.SIGKILL)
        assert driver.wait(timeout=500) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    runs = children()
    assert len(runs) == trials
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    retried = [r for r in runs if "gradsweep.retries" in r.data.tags]
    assert retried, "the trial on the lost worker was retried"
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == list(range(1, epochs + 1)), f"{run.info.run_name}: {steps}"
        assert run.info.status == "FINISHED"
    after = {r.info.run_id: int(r.data.tags["gradsweep.retried_after_epoch"]) for r in retried}
    # the watched trial resumed from a checkpoint, not restarted: it had 2+ epochs before
    assert [after.get(run_id, -1) >= 2 for run_id in mid_way] == [True] * len(mid_way), (
        after,
        log.read_text()[-3000:],
    )
    assert all(0 <= epoch < epochs for epoch in after.values()), after
    storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    states = [t.state for t in optuna.load_study(study_name=study, storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * trials
