"""The study's stores: the Optuna SQLite write-ahead log, and a failed start's clean-up."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import optuna

from search.environment import Locations
from search.stores import SQLITE_SIDECARS, open_stores, optuna_storage


def _pragma(storage: optuna.storages.RDBStorage, name: str) -> object:
    with storage.engine.connect() as connection:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_a_sqlite_optuna_storage_logs_ahead_and_syncs_at_checkpoints(tmp_path: Path) -> None:
    storage = optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert _pragma(storage, "journal_mode") == "wal"
    assert _pragma(storage, "synchronous") == 1  # NORMAL

    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    trial.report(0.5, 1)
    study.tell(trial, 0.7)
    # Another process's plain connection (the report, `gradsweep leaderboard`) reads it all.
    with sqlite3.connect(tmp_path / "optuna.db") as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # kept in the file
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.value for t in again.trials] == [0.7]
    assert again.trials[0].intermediate_values == {1: 0.5}


def test_a_postgres_storage_opens_as_optuna_opens_it() -> None:
    # SQLite's pragmas would be syntax errors on PostgreSQL: only SQLite gets them.
    storage = optuna_storage("postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    name = f"stores-{uuid.uuid4().hex}"
    study = optuna.create_study(study_name=name, storage=storage)
    try:
        study.tell(study.ask(), 1.0)
        assert [t.value for t in study.trials] == [1.0]
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_a_failed_start_removes_the_databases_with_their_log_files(tmp_path: Path) -> None:
    output = tmp_path / "out"
    where = Locations(
        output=output,
        tracking_uri=f"sqlite:///{output / 'mlflow.db'}",
        optuna_storage=f"sqlite:///{output / 'optuna.db'}",
    )
    stores = open_stores(where, "exp")
    optuna.create_study(study_name="s", storage=stores.optuna)  # writes: the log files appear
    assert any((output / f"optuna.db{s}").exists() for s in SQLITE_SIDECARS)

    stores.optuna.engine.dispose()
    stores.remove_created()

    assert not output.exists()
