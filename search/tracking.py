"""MLflow recording: one parent run per study, one nested child run per trial.

All writes happen in the driver, through the study's :class:`~search.journal.Journal`: one
background thread that batches, keeps order and retries, so a slow or restarting tracking server
never stalls Ray Tune's event loop, SQLite only ever sees one writer, and what can't be delivered
is spooled to disk. Trials never talk to MLflow themselves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Param
from ray import tune

from search.errors import UserError
from search.journal import MAX_PARAMS, Journal
from search.outcomes import OUTCOMES, outcome
from spaces import StudyConfig, resolve_trial

log = logging.getLogger(__name__)

STUDY_TAG = "gradsweep.study"
ROLE_TAG = "gradsweep.role"
OUTCOME_TAG = "gradsweep.outcome"
PARENT_TAG = "mlflow.parentRunId"
#: Per-epoch metrics a trial reports that go to MLflow with step = epoch.
EPOCH_METRICS = (
    "train_loss",
    "val_loss",
    "val_accuracy",
    "best_val_accuracy",
    "epoch_seconds",
    # fused seeds: how many, how many diverged, spread of the per-seed best
    "seeds",
    "seeds_diverged",
    "best_val_accuracy_std",
    "best_val_accuracy_ci_low",
    "best_val_accuracy_ci_high",
)


def default_tracking_uri(output_dir: Path) -> str:
    """``sqlite:///<output>/mlflow.db``: MLflow 3 refuses its old ./mlruns file store."""
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before anything is created, when ``uri`` can't be a working tracking store."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status != 200:
                    raise UserError(
                        f"--tracking-uri: {uri} answered HTTP {response.status} on /health"
                    )
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"--tracking-uri: MLflow server {uri} is unreachable ({reason})"
            ) from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = Path.cwd() / path
        parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
        if path.is_dir() or parent is None or not parent.is_dir():
            raise UserError(f"--tracking-uri: {uri} does not name a writable SQLite file")
    elif uri.startswith(("postgresql://", "postgresql+psycopg2://", "mysql://")):
        return
    else:
        raise UserError(
            f"--tracking-uri: unsupported {uri!r}; use sqlite:///PATH, http(s)://HOST:PORT "
            "or postgresql://..."
        )


def existing_store(tracking_uri: str | None) -> MlflowClient:
    """A client on a tracking store that must exist already (leaderboard, report, resume):
    ``tracking_uri``, else ``GRADSWEEP_TRACKING_URI``, else ``./gradsweep-runs/mlflow.db``.
    A missing SQLite file is an error here, never silently created empty."""
    uri = (
        tracking_uri
        or os.environ.get("GRADSWEEP_TRACKING_URI")
        or default_tracking_uri(Path("gradsweep-runs"))
    )
    check_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"--tracking-uri: no MLflow database at {uri.removeprefix('sqlite:///')}")
    return MlflowClient(tracking_uri=uri)


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Flatten a nested config into ``a.b.c`` -> string, for MLflow params."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list | tuple) else str(value)}


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Experiment id for ``name``; a new one keeps artifacts under ``artifact_root`` if given."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


def redact(url: str | None) -> str | None:
    """A URL without its password: secrets never reach MLflow, logs or the terminal."""
    if not url:
        return url
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def public_config(config: StudyConfig) -> dict[str, Any]:
    """The config as logged on the parent run: store URLs with their passwords redacted."""
    dump = config.model_dump(mode="json")
    dump["optuna_storage"] = redact(dump.get("optuna_storage"))
    dump["tracking"]["uri"] = redact(dump["tracking"].get("uri"))
    return dump


def start_parent_run(
    client: MlflowClient, experiment_id: str, study_name: str, config: StudyConfig
) -> str:
    """Create the study's parent run (RUNNING) with the resolved config as params and artifact."""
    tags = {
        STUDY_TAG: study_name,
        ROLE_TAG: "study",
        "searcher": config.searcher.name,
        "scheduler": config.scheduler.name,
        "dataset": config.data.name,
    }
    run = client.create_run(experiment_id, run_name=study_name, tags=tags)
    run_id = run.info.run_id
    public = public_config(config)
    params = [Param(k, v[:6000]) for k, v in flatten("", public).items()]
    for i in range(0, len(params), MAX_PARAMS):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS])
    client.log_text(run_id, json.dumps(public, indent=2), "config.json")
    return run_id


class MlflowTracker(tune.Callback):
    """Ray Tune callback that mirrors every trial into a nested MLflow child run.

    Child run name ``t007 elu α=1.0 he_normal bn=before``; params are the trial's configuration
    plus the study's fixed settings; tags ``activation``, ``init``, ``bn`` for filtering in the UI
    and ``node_id`` for where it ran; per-epoch metrics with step = epoch; final
    ``test_accuracy``, ``best_val_accuracy``, ``epochs_run``; status FINISHED, KILLED (stopped
    early) or FAILED (diverged, crashed). All writes go through the journal, keyed by trial id.
    """

    def __init__(
        self,
        journal: Journal,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        config: StudyConfig,
        extra_tags: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.journal = journal
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.study_name, self.config = study_name, config
        #: Optuna trial number -> extra tags for its run (e.g. what a resumed run continues)
        self.extra_tags = extra_tags or {}
        self.started: set[str] = set()
        self.finished: set[str] = set()
        self.retries: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        #: trial id -> epoch -> the per-layer figures the pictures need
        self.history: dict[str, dict[int, dict[str, float]]] = {}
        self._fixed = {
            "dataset": config.data.name,
            "depth": str(config.model.depth),
            "width": str(config.model.width),
            "epochs": str(config.training.epochs),
            "batch_size": str(config.training.batch_size),
            "optimizer": config.training.optimizer,
            "dropout": str(config.model.dropout),
        }

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; the journal thread stays behind.
        return {k: v for k, v in self.__dict__.items() if k != "journal"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, journal=None)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.started:
            return  # a retried trial keeps its run
        self.started.add(trial.trial_id)
        spec = resolve_trial(self.config, trial.config)
        tags = {
            PARENT_TAG: self.parent_run_id,
            STUDY_TAG: self.study_name,
            ROLE_TAG: "trial",
            "ray.trial_id": trial.trial_id,
            "ray.trial_path": str(getattr(trial, "path", "") or ""),
            "optuna.trial_number": str(spec.number),
            "activation": spec.activation,
            "init": spec.init,
            "bn": spec.bn,
            **self.extra_tags.get(str(spec.number), {}),
        }
        self.journal.create_run(trial.trial_id, self.experiment_id, spec.label(), tags)
        params = {
            "activation": spec.activation,
            "init": spec.init,
            "bn": spec.bn,
            "lr": repr(spec.lr),
        }
        if spec.alpha is not None:
            alpha = spec.alpha
            params["alpha"] = json.dumps(list(alpha)) if isinstance(alpha, tuple) else repr(alpha)
        if spec.activation == "prelu":
            params["prelu_per_unit"] = str(spec.per_unit)
        params.update(self._fixed)
        self.journal.log_batch(trial.trial_id, params=params)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if trial.trial_id not in self.started:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        values = {
            k: float(v)
            for k, v in result.items()
            if (k in EPOCH_METRICS or k.startswith(("diag/", "prelu/", "seed/")))
            and isinstance(v, int | float)
            and not isinstance(v, bool)
        }
        self.history.setdefault(trial.trial_id, {})[epoch] = {
            k: v for k, v in values.items() if k.startswith(("diag/grad_norm/", "diag/act_std/"))
        }
        tags = {}
        if trial.trial_id not in self.last and "node_id" in result:
            tags = {"node_id": str(result["node_id"]), "device": str(result.get("device"))}
        self.last[trial.trial_id] = dict(result)
        self.journal.log_batch(
            trial.trial_id, metrics=[(k, v, now, epoch) for k, v in values.items()], tags=tags
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A crashed trial is retried (from its last checkpoint): say so on its run."""
        key = trial.trial_id
        if key not in self.started:
            return
        self.retries[key] = self.retries.get(key, 0) + 1
        epoch = int((self.last.get(key) or {}).get("epoch", 0))
        self.journal.log_batch(
            key,
            tags={
                "gradsweep.retries": str(self.retries[key]),
                "gradsweep.retried_after_epoch": str(epoch),
            },
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id) or trial.last_result
        ended = outcome(result, self.config.training.epochs)
        self._finish(trial, OUTCOMES[ended][0], ended, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial.get_error() if hasattr(trial, "get_error") else None
        reason = str(error).strip().splitlines()[-1][:500] if error else "trial raised"
        self._finish(trial, "FAILED", "error", self.last.get(trial.trial_id), reason)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Trials Tune stopped without completing them (the time budget) end KILLED."""
        for trial in trials:
            if trial.trial_id in self.started and trial.trial_id not in self.finished:
                self._finish(
                    trial,
                    "KILLED",
                    "stopped",
                    self.last.get(trial.trial_id),
                    "stopped when the search ended (time budget)",
                )

    def _finish(
        self, trial: Any, status: str, outcome: str, result: dict[str, Any] | None, reason: str = ""
    ) -> None:
        key = trial.trial_id
        if key not in self.started or key in self.finished:
            return
        self.finished.add(key)
        tags = {OUTCOME_TAG: outcome}
        metrics: list[tuple[str, float, int, int]] = []
        if result:
            epoch = int(result.get("epoch", 0))
            now = int(time.time() * 1000)
            metrics = [("epochs_run", float(epoch), now, epoch)]
            for name in ("test_accuracy", "best_val_accuracy"):
                value = result.get(name)
                if (
                    isinstance(value, int | float)
                    and math.isfinite(value)
                    and not result.get("diverged")
                ):
                    metrics.append((name, float(value), now, epoch))
            if result.get("diverged"):
                reason = reason or f"non-finite loss or gradient in epoch {epoch}"
                tags["gradsweep.diverged_epoch"] = str(epoch)
            if result.get("stop_reason"):
                reason = reason or str(result["stop_reason"])
            for flag in ("vanishing", "exploding", "dying", "saturated"):
                if f"diag/{flag}" in result:
                    tags[f"diag.{flag}"] = str(bool(result[f"diag/{flag}"])).lower()
        if reason:
            tags["gradsweep.reason"] = reason
        self.journal.log_batch(key, metrics=metrics, tags=tags)
        self.journal.set_terminated(key, status)
