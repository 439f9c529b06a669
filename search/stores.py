"""The study's two stores: MLflow (what every trial logged) and Optuna (which trials exist).

Opening creates a new SQLite store's tables; :class:`Stores` remembers which files that created,
so a study that fails to start can remove them again and leave nothing half-made behind.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from sqlalchemy import event

from search.environment import Locations, tracking_uri
from search.errors import UserError
from search.leaderboard import find_parent_run
from search.preflight import check_tracking_uri


@dataclass
class Stores:
    """Open MLflow and Optuna stores of a study, and which paths opening them created."""

    client: MlflowClient
    optuna: optuna.storages.BaseStorage
    created: list[Path] = field(default_factory=list)

    def remove_created(self) -> None:
        """Remove what opening created (only while the study has not started: it is empty)."""
        _remove(self.created)


def _remove(paths: list[Path]) -> None:
    for path in reversed(paths):  # files before the folder that holds them
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # only if still empty
        else:
            for sibling in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDECARS)):
                sibling.unlink(missing_ok=True)


#: The files SQLite keeps beside a database in write-ahead-log mode.
SQLITE_SIDECARS = ("-wal", "-shm")


def _fast_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead log, synced at checkpoints rather than at every commit: the driver's loop
    commits to Optuna every epoch of every trial (a few ms instead of tens with a rollback
    journal). A crash of the process loses nothing; a power cut may lose the last commits,
    never the database's consistency."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's Optuna storage; a SQLite one in write-ahead-log mode (see ``_fast_sqlite``)."""
    storage = optuna.storages.RDBStorage(url)
    if sqlite_file(url) is not None:
        event.listen(storage.engine, "connect", _fast_sqlite)
        storage.engine.dispose()  # connections opened before the listener: reopened with it
    return storage


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, else None."""
    return Path(url.split("///", 1)[1]) if url.startswith("sqlite:///") else None


def open_stores(where: Locations, experiment: str) -> Stores:
    """Open (create when new) the MLflow and Optuna stores: the slow part of a study's start."""
    databases = (sqlite_file(where.tracking_uri), sqlite_file(where.optuna_storage))
    files = [where.output, *(p for p in databases if p is not None)]
    created = [p for p in files if not p.exists()]
    where.output.mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=where.tracking_uri)
        client.get_experiment_by_name(experiment)  # creates a new store's tables
        return Stores(client, optuna_storage(where.optuna_storage), created)
    except BaseException:
        _remove(created)
        raise


def existing_store(flag: str | None) -> MlflowClient:
    """A client on a tracking store that must exist already (leaderboard, report, resume).

    A missing SQLite file is an error here, never silently created empty.
    """
    uri = tracking_uri(flag, None, Path("gradsweep-runs"))
    check_tracking_uri(uri)
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        raise UserError(f"--tracking-uri: no MLflow database at {path}")
    return MlflowClient(tracking_uri=uri)


#: The saved view the UI link opens: the columns a person compares trials by. Sorted by start
#: time, not by a metric: sorting by a metric would un-nest the trials from their study.
UI_VIEW = "gradsweep-trials"
_VIEW_COLUMNS = [
    "metrics.`best_val_accuracy`",
    "metrics.`test_accuracy`",
    "metrics.`epochs_run`",
    "params.`activation`",
    "params.`alpha`",
    "params.`init`",
    "params.`bn`",
    "params.`lr`",
    "params.`depth`",
    "params.`width`",
    "tags.`gradsweep.outcome`",
]


def experiment_tags() -> dict[str, str]:
    """A classic-ML experiment (not MLflow 3's GenAI kind) with gradsweep's saved view of its
    runs (``mlflow.sharedViewState.<id>``, what the UI's "Views" menu stores)."""
    now = int(time.time() * 1000)
    state = {"orderByKey": "attributes.start_time", "orderByAsc": False}
    view = {
        "name": "gradsweep trials",
        "createdAt": now,
        "updatedAt": now,
        "state": json.dumps({**state, "selectedColumns": _VIEW_COLUMNS}),
    }
    return {
        "mlflow.experimentKind": "custom_model_development",
        f"mlflow.sharedViewState.{UI_VIEW}": json.dumps(view),
    }


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Experiment id for ``name``; a new one keeps artifacts under ``artifact_root`` if given.
    An experiment made before gradsweep set its tags gets them now."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        return client.create_experiment(name, artifact_location=location, tags=experiment_tags())
    for key, value in experiment_tags().items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def ui_url(server: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into the MLflow UI that opens on the training runs (MLflow 3 opens an experiment
    on its GenAI overview unless told ``workflowType``), with gradsweep's view."""
    where = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    view = "" if run_id else f"&viewStateShareKey={UI_VIEW}"
    return f"{server.rstrip('/')}/{where}?workflowType=machine_learning{view}"


def study_exists(uri: str, storage: str, name: str) -> bool:
    """Whether MLflow or Optuna already hold a study called ``name`` (creates no store)."""

    def missing(url: str) -> bool:
        path = sqlite_file(url)
        return path is not None and not path.is_file()

    if not missing(storage) and name in optuna.study.get_all_study_names(storage=storage):
        return True
    if missing(uri):
        return False
    try:
        find_parent_run(MlflowClient(tracking_uri=uri), name)
    except UserError:
        return False
    return True
