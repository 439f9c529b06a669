"""MLflow recording: one parent run per study, one nested child run per trial.

All writes happen in the driver, through :class:`RunWriter`, a single background thread that
batches and retries, so a slow or briefly unreachable tracking server never stalls Ray Tune's
event loop and SQLite only ever sees one writer. Trials never talk to MLflow themselves.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from ray import tune

from search.errors import UserError
from spaces import TRIAL_NUMBER_KEY, StudyConfig, resolve_trial

log = logging.getLogger(__name__)

STUDY_TAG = "gradsweep.study"
ROLE_TAG = "gradsweep.role"
OUTCOME_TAG = "gradsweep.outcome"
PARENT_TAG = "mlflow.parentRunId"
#: Per-epoch metrics a trial reports that go to MLflow with step = epoch.
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "best_val_accuracy", "epoch_seconds")
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits


def default_tracking_uri(output_dir: Path) -> str:
    """``sqlite:///<output>/mlflow.db``: MLflow 3 refuses its old ./mlruns file store."""
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before anything is created, when ``uri`` can't be a working tracking store."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status != 200:
                    raise UserError(f"--tracking-uri: {uri} answered HTTP {response.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"--tracking-uri: MLflow server {uri} is unreachable ({reason})") from None
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


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Flatten a nested config into ``a.b.c`` -> string, for MLflow params."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list | tuple) else str(value)}


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class RunWriter:
    """One background thread applying MLflow writes in order, retrying with backoff.

    ``submit`` never blocks and never raises; ``close`` waits for every write. A write that still
    fails after ``retries`` attempts is logged and counted in ``failed``.
    """

    def __init__(self, client: MlflowClient, retries: int = 6, backoff_s: float = 0.5) -> None:
        self.client, self.retries, self.backoff_s = client, retries, backoff_s
        self.failed: list[str] = []
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="gradsweep-mlflow", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[], None], what: str = "write") -> None:
        self._queue.put(_Labelled(op, what))

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:  # noqa: ANN001
        """Queue a batch, split to MLflow's per-call limits."""
        metrics, params, tags = list(metrics), list(params), list(tags)
        for part in _chunks(params, MAX_PARAMS):
            self.submit(lambda p=part: self.client.log_batch(run_id, params=p), "params")
        for part in _chunks(tags, MAX_TAGS):
            self.submit(lambda t=part: self.client.log_batch(run_id, tags=t), "tags")
        for part in _chunks(metrics, MAX_METRICS):
            self.submit(lambda m=part: self.client.log_batch(run_id, metrics=m), "metrics")

    def flush(self) -> None:
        """Block until every queued write was attempted."""
        done = threading.Event()
        self._queue.put(_Labelled(done.set, "flush"))
        done.wait()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (op := self._queue.get()) is not None:
            for attempt in range(self.retries):
                try:
                    op()
                    break
                except Exception as exc:  # network, database locked, server restart, ...
                    if attempt == self.retries - 1:
                        log.warning("MLflow %s failed after %d tries: %s", op.what, self.retries, exc)
                        self.failed.append(f"{op.what}: {exc}")
                    else:
                        time.sleep(self.backoff_s * 2**attempt)


class _Labelled:
    def __init__(self, op: Callable[[], None], what: str) -> None:
        self.op, self.what = op, what

    def __call__(self) -> None:
        self.op()


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Experiment id for ``name``; a new one keeps artifacts under ``artifact_root`` if given."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


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
    params = [Param(k, v[:6000]) for k, v in flatten("", config.model_dump(mode="json")).items()]
    for part in _chunks(params, MAX_PARAMS):
        client.log_batch(run_id, params=part)
    client.log_text(run_id, json.dumps(config.model_dump(mode="json"), indent=2), "config.json")
    return run_id


def final_status(result: dict[str, Any] | None, epochs: int) -> tuple[str, str]:
    """(MLflow status, outcome tag) for a trial that ended without an exception."""
    if not result:
        return "KILLED", "no_result"
    if result.get("diverged"):
        return "FAILED", "diverged"
    if result.get("stop_reason"):
        return "KILLED", "stopped"
    if int(result.get("epoch", 0)) < epochs:
        return "KILLED", "early_stopped"
    return "FINISHED", "completed"


class MlflowTracker(tune.Callback):
    """Ray Tune callback that mirrors every trial into a nested MLflow child run.

    Child run name ``t007 elu α=1.0 he_normal bn=before``; params are the trial's configuration
    plus the study's fixed settings; tags ``activation``, ``init``, ``bn`` for filtering in the UI;
    per-epoch metrics with step = epoch; final ``test_accuracy``, ``best_val_accuracy``,
    ``epochs_run``; status FINISHED, KILLED (stopped early) or FAILED (diverged, crashed).
    """

    def __init__(
        self,
        writer: RunWriter,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        config: StudyConfig,
    ) -> None:
        self.writer, self.client = writer, writer.client
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.study_name, self.config = study_name, config
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.last: dict[str, dict[str, Any]] = {}
        #: run id -> epoch -> the per-layer figures the pictures need
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
        # Tune pickles its callbacks into the experiment state; the writer thread stays behind.
        return {k: v for k, v in self.__dict__.items() if k not in ("writer", "client")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, writer=None, client=None)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.runs:
            return  # a retried trial keeps its run
        spec = resolve_trial(self.config, trial.config)
        tags = {
            PARENT_TAG: self.parent_run_id,
            STUDY_TAG: self.study_name,
            ROLE_TAG: "trial",
            "ray.trial_id": trial.trial_id,
            "optuna.trial_number": str(trial.config.get(TRIAL_NUMBER_KEY, "")),
            "activation": spec.activation,
            "init": spec.init,
            "bn": spec.bn,
        }
        run = self.client.create_run(self.experiment_id, run_name=spec.label(), tags=tags)
        run_id = run.info.run_id
        self.runs[trial.trial_id] = run_id
        params = {"activation": spec.activation, "init": spec.init, "bn": spec.bn, "lr": repr(spec.lr)}
        if spec.alpha is not None:
            params["alpha"] = json.dumps(list(spec.alpha)) if isinstance(spec.alpha, tuple) else repr(spec.alpha)
        if spec.activation == "prelu":
            params["prelu_per_unit"] = str(spec.per_unit)
        params.update(self._fixed)
        self.writer.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        values = {
            k: float(v)
            for k, v in result.items()
            if (k in EPOCH_METRICS or k.startswith(("diag/", "prelu/")))
            and isinstance(v, int | float)
            and not isinstance(v, bool)
        }
        self.history.setdefault(run_id, {})[epoch] = {
            k: v for k, v in values.items() if k.startswith(("diag/grad_norm/", "diag/act_std/"))
        }
        metrics = [Metric(k, v, now, epoch) for k, v in values.items()]
        tags = []
        if trial.trial_id not in self.last and "node_id" in result:
            tags = [RunTag("node_id", str(result["node_id"])), RunTag("device", str(result.get("device")))]
        self.last[trial.trial_id] = dict(result)
        self.writer.log_batch(run_id, metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id) or trial.last_result
        status, outcome = final_status(result, self.config.training.epochs)
        self._finish(trial, status, outcome, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial.get_error() if hasattr(trial, "get_error") else None
        reason = str(error).strip().splitlines()[-1][:500] if error else "trial raised"
        self._finish(trial, "FAILED", "error", self.last.get(trial.trial_id), reason)

    def _finish(
        self, trial: Any, status: str, outcome: str, result: dict[str, Any] | None, reason: str = ""
    ) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        tags = [RunTag(OUTCOME_TAG, outcome)]
        metrics: list[Metric] = []
        if result:
            epoch = int(result.get("epoch", 0))
            now = int(time.time() * 1000)
            metrics = [Metric("epochs_run", float(epoch), now, epoch)]
            for key in ("test_accuracy", "best_val_accuracy"):
                value = result.get(key)
                if isinstance(value, int | float) and math.isfinite(value) and not result.get("diverged"):
                    metrics.append(Metric(key, float(value), now, epoch))
            if result.get("diverged"):
                reason = reason or f"non-finite loss or gradient in epoch {epoch}"
                tags.append(RunTag("gradsweep.diverged_epoch", str(epoch)))
            if result.get("stop_reason"):
                reason = reason or str(result["stop_reason"])
            for flag in ("vanishing", "exploding", "dying", "saturated"):
                if f"diag/{flag}" in result:
                    tags.append(RunTag(f"diag.{flag}", str(bool(result[f"diag/{flag}"])).lower()))
        if reason:
            tags.append(RunTag("gradsweep.reason", reason))
        self.writer.log_batch(run_id, metrics=metrics, tags=tags)
        self.writer.submit(lambda: self.client.set_terminated(run_id, status=status), "status")
