"""Acceptance, offline: ``gradsweep run mnist1d`` on a machine with no network and an empty data
cache. The real console command in a subprocess; every Python process it starts (the CLI, Ray's
workers and agents) refuses any host but this one and records who it was asked for.

One exception is Ray's own: its API-server process (``ray/dashboard/dashboard.py``, started even
with ``include_dashboard=False`` to host ``UsageStatsHead``) asks the cloud metadata addresses
once at start, to learn the provider, even with usage stats off; offline each try fails within
its 1 s timeout, in that background process. The test names those probes and allows nothing
else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from offline import sitecustomize

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
#: Ray's cloud-provider probe (``usage_lib.get_cloud_from_metadata_requests``): Azure, GCP, AWS.
RAY_CLOUD_PROBES = {"169.254.169.254", "metadata.google.internal"}


def test_run_mnist1d_works_offline_with_an_empty_cache(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    site = sitecustomize(tmp_path / "site", log)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    env["GRADSWEEP_DATA_HOME"] = str(tmp_path / "empty-cache")  # nothing downloaded before
    out = tmp_path / "out"
    argv = ["run", "mnist1d", "--set", "num_samples=1", "--set", "training.epochs=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", *argv, "--set", f"output_dir={out}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = log.read_text().splitlines()
    asked = [line.split("\t", 1) for line in lines if not line.startswith("loaded ")]
    others = [
        (host, command)
        for host, command in asked
        if not (host in RAY_CLOUD_PROBES and "ray/dashboard/dashboard.py" in command)
    ]
    assert others == [], "nothing outside this machine was asked, but Ray's cloud probe"
    loaded = [line.split("\t", 1)[1] for line in lines if line.startswith("loaded ")]
    assert any("default_worker.py" in command for command in loaded), "and the trials' workers"
    storage = f"sqlite:///{out / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert f"study {summary.study_name} - 1 trials in" in proc.stdout
    assert not (tmp_path / "empty-cache").exists(), "MNIST-1D is made here, never fetched"
