"""Where a study's stores live (flags beat environment beat config beat defaults), and the
process settings a study applies when it starts (never when ``search`` is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.environment import _SETTINGS, configure, locate, redact, with_driver
from search.parent_run import public_config
from spaces import load_config


def test_defaults_live_in_the_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADSWEEP_TRACKING_URI", raising=False)
    monkeypatch.delenv("GRADSWEEP_OPTUNA_STORAGE", raising=False)
    where = locate(load_config({"output_dir": str(tmp_path)}))
    uri, storage = where.tracking_uri, where.optuna_storage
    assert where.output == tmp_path
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert storage == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_flag_beats_environment_beats_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(
        {"tracking": {"uri": "http://config:5000"}, "optuna_storage": "sqlite:///c.db"}
    )
    monkeypatch.setenv("GRADSWEEP_TRACKING_URI", "http://env:5000")
    monkeypatch.setenv("GRADSWEEP_OPTUNA_STORAGE", "postgresql://u@db:5432/optuna")
    where = locate(config, "http://flag:5000")
    assert where.tracking_uri == "http://flag:5000"
    assert where.optuna_storage == "postgresql+psycopg2://u@db:5432/optuna"
    assert locate(config).tracking_uri == "http://env:5000"
    monkeypatch.delenv("GRADSWEEP_TRACKING_URI")
    monkeypatch.delenv("GRADSWEEP_OPTUNA_STORAGE")
    assert locate(config).tracking_uri == "http://config:5000"
    assert locate(config).optuna_storage == "sqlite:///c.db"


def test_ray_address_flag_beats_environment_for_studies_and_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from search.environment import ray_address
    from search.jobs import job_server_address

    monkeypatch.setenv("RAY_ADDRESS", "http://env-head:8265")
    assert ray_address(None) == job_server_address(None) == "http://env-head:8265"
    assert ray_address("http://flag:8265") == job_server_address("http://flag:8265/")
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_address(None) is None


def test_auto_address_falls_back_to_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from search.errors import UserError
    from search.preflight import check_address

    monkeypatch.setenv("RAY_ADDRESS", "bad://x")  # what 'auto' resolves to, then checked
    with pytest.raises(UserError, match="'bad://x' must be local, auto"):
        check_address("auto")


def test_postgres_urls_get_the_installed_driver_and_lose_passwords() -> None:
    assert with_driver("postgresql://a:b@h/db") == "postgresql+psycopg2://a:b@h/db"
    assert with_driver("sqlite:///x.db") == "sqlite:///x.db"
    assert (
        redact("postgresql+psycopg2://user:s3cret@h:5432/db")
        == "postgresql+psycopg2://user:***@h:5432/db"
    )


def test_no_password_reaches_the_logged_config() -> None:
    config = load_config(
        {
            "optuna_storage": "postgresql://u:s3cret@db/o",
            "tracking": {"uri": "http://a:pw@mlflow:5000"},
        }
    )
    logged = str(public_config(config))
    assert "s3cret" not in logged and ":pw@" not in logged and "***" in logged


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_importing_search_changes_no_environment_variable() -> None:
    """Importing is free of side effects; a study applies its settings when it starts.
    (MLflow's import sets its own private ``_MLFLOW_TELEMETRY_SESSION_ID``, Ray's its
    ``RAY_CLIENT_MODE``: not ours.)"""
    out = _run(
        "import json, os; before = dict(os.environ); "
        "import search, search.study, search.journal, search.cli; "
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    # Ray's import sets RAY_CLIENT_MODE=0 itself (ray/_private/client_mode_hook.py): not ours
    # either; the suite passed only where an earlier test had imported Ray in this process.
    libraries = ("_MLFLOW_", "RAY_CLIENT_MODE")
    assert [k for k, _ in json.loads(out) if not k.startswith(libraries)] == []


def test_configure_applies_every_setting_and_keeps_a_users_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in _SETTINGS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    configure()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert all(
        os.environ[k] == v for k, v in _SETTINGS.items() if k != "MLFLOW_HTTP_REQUEST_TIMEOUT"
    )
