"""Where a study's stores live: flags beat environment beat config beat defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.study import resolve_paths, with_driver
from search.tracking import public_config, redact
from spaces import load_config


def test_defaults_live_in_the_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADSWEEP_TRACKING_URI", raising=False)
    monkeypatch.delenv("GRADSWEEP_OPTUNA_STORAGE", raising=False)
    output, uri, storage = resolve_paths(load_config({"output_dir": str(tmp_path)}), None)
    assert output == tmp_path
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert storage == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_flag_beats_environment_beats_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(
        {"tracking": {"uri": "http://config:5000"}, "optuna_storage": "sqlite:///c.db"}
    )
    monkeypatch.setenv("GRADSWEEP_TRACKING_URI", "http://env:5000")
    monkeypatch.setenv("GRADSWEEP_OPTUNA_STORAGE", "postgresql://u@db:5432/optuna")
    _, uri, storage = resolve_paths(config, "http://flag:5000")
    assert uri == "http://flag:5000"
    assert storage == "postgresql+psycopg2://u@db:5432/optuna"
    _, uri, _ = resolve_paths(config, None)
    assert uri == "http://env:5000"


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
