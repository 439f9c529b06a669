"""MLflow recording: one parent run per study, one nested child run per trial.

All writes happen in the driver, through the study's :class:`~search.journal.Journal`: one
background thread that batches, keeps order and retries, so a slow or restarting tracking server
never stalls Ray Tune's event loop, SQLite only ever sees one writer, and what can't be delivered
is spooled to disk. Trials never talk to MLflow themselves.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param
from ray import tune

from search.environment import Locations, redact
from search.journal import MAX_PARAMS, Journal
from search.schema import (
    CURVES,
    DIVERGED_EPOCH_TAG,
    DIVERGED_SEEDS_TAG,
    EPOCH_METRIC_PREFIXES,
    EPOCH_METRICS,
    LABEL_TAG,
    MEAN_EPOCH_SECONDS,
    N_PARAMS,
    NOTE_TAG,
    OBJECTIVES_TAG,
    OPTUNA_STORAGE_TAG,
    OUTCOME_TAG,
    OUTCOMES,
    OUTPUT_DIR_TAG,
    PARENT_TAG,
    PLACEMENT_TAGS,
    RAY_TRIAL_ID_TAG,
    RAY_TRIAL_PATH_TAG,
    REASON_TAG,
    RETRIED_AFTER_TAG,
    RETRIES_TAG,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
    SEEDS_DIVERGED_TAG,
    STUDY_TAG,
    TRIAL_NUMBER_TAG,
    objectives_tag,
    outcome,
    unpack,
)
from search.seeds import INIT
from spaces import StudyConfig, resolve_trial
from trainers import FLAGS


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Flatten a nested config into ``a.b.c`` -> string, for MLflow params."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list | tuple) else str(value)}


def public_config(config: StudyConfig) -> dict[str, Any]:
    """The config as logged on the parent run: store URLs with their passwords redacted."""
    dump = config.model_dump(mode="json")
    dump["optuna_storage"] = redact(dump.get("optuna_storage"))
    dump["tracking"]["uri"] = redact(dump["tracking"].get("uri"))
    return dump


def parent_run_name(study_name: str, config: StudyConfig) -> str:
    """What the UI's runs table shows for a study: its config's name and when it started, short
    enough not to be cut (``quick 11-29 18:03``); a name chosen with ``--study`` as it is. The
    study's full name is its tag and description: commands find studies by the tag."""
    stamp = study_name.removeprefix(f"{config.name}-")
    if stamp != study_name and len(stamp) >= 15 and stamp[8] == "-":  # YYYYmmdd-HHMMSS
        return f"{config.name} {stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}"
    return study_name


def start_parent_run(
    client: MlflowClient,
    experiment_id: str,
    study_name: str,
    config: StudyConfig,
    where: Locations,
) -> str:
    """Create the study's parent run (RUNNING) with the resolved config as params and artifact,
    and where its records live (resume reads them back)."""
    tags = {
        STUDY_TAG: study_name,
        ROLE_TAG: ROLE_STUDY,
        OUTPUT_DIR_TAG: str(where.output),
        OPTUNA_STORAGE_TAG: redact(where.optuna_storage) or "",
        "searcher": config.searcher.name,
        "scheduler": config.scheduler.name,
        "dataset": config.data.name,
        "design": str(bool(config.design)).lower(),
    }
    if config.multi_objective:
        tags[OBJECTIVES_TAG] = objectives_tag(config.objectives)
    about = f": {config.description}" if config.description else ""
    tags[NOTE_TAG] = f"study {study_name}{about}"
    name = parent_run_name(study_name, config)
    run = client.create_run(experiment_id, run_name=name, tags=tags, start_time=_now_ms())
    run_id = run.info.run_id
    public = public_config(config)
    params = [Param(k, v[:6000]) for k, v in flatten("", public).items()]
    for i in range(0, len(params), MAX_PARAMS):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS])
    client.log_text(run_id, json.dumps(public, indent=2), "config.json")
    return run_id


def _now_ms() -> int:
    return int(time.time() * 1000)


#: Per-layer figures the pictures draw (kept in the driver's memory per trial and epoch).
PICTURED = ("diag/grad_norm/", "diag/act_std/")


def _per_seed(result: dict[str, Any], name: str) -> dict[str, float]:
    """``seed/<seed>/<name>`` values of a result, by seed."""
    prefix, suffix = "seed/", f"/{name}"
    return {
        k.removeprefix(prefix).removesuffix(suffix): float(v)
        for k, v in result.items()
        if k.startswith(prefix) and k.endswith(suffix) and k.count("/") == name.count("/") + 2
    }


def flag_tags(result: dict[str, Any], initial: dict[str, float]) -> dict[str, str]:
    """``diag.<flag>`` = how many seeds raise it at the last epoch (``3/4``), and
    ``diag.at_init.<flag>`` the same at initialisation."""
    tags = {}
    for flag in FLAGS:
        for prefix, source in (("diag.", result), ("diag.at_init.", initial)):
            raised = _per_seed(source, f"diag/{flag}")
            if raised:
                tags[f"{prefix}{flag}"] = f"{sum(v > 0 for v in raised.values())}/{len(raised)}"
    return tags


def divergence_tags(result: dict[str, Any]) -> dict[str, str]:
    """Seeds that diverged in a trial whose other seeds went on: which, and in which epoch."""
    epochs = _per_seed(result, "diverged_epoch")
    if not epochs or len(epochs) == int(result.get("seeds", 0)):
        return {}
    return {
        SEEDS_DIVERGED_TAG: f"{len(epochs)}/{int(result.get('seeds', 0))}",
        DIVERGED_SEEDS_TAG: ", ".join(f"seed {s} in epoch {int(e)}" for s, e in epochs.items()),
    }


class MlflowTracker(tune.Callback):
    """Ray Tune callback that mirrors every trial into a nested MLflow child run.

    Child run name ``t007 elu`` (short enough for the UI's runs table), the full description
    (``elu α=1.0 he_normal bn=before``) in the label tag and the run's note; params are the
    trial's configuration plus the study's fixed settings; tags ``activation``, ``init``, ``bn``
    for filtering in the UI and ``node_id`` for where it ran; per-epoch metrics with step =
    epoch; final ``test_accuracy``, ``best_val_accuracy``, ``epochs_run``. Start and end times
    are the trial's own (as the driver saw them). Status and outcome tag come from
    :data:`~search.schema.OUTCOMES`: FINISHED for completed and early-stopped trials (stopping
    is a search's normal work), FAILED for diverged or crashed ones, KILLED for a trial that
    never reported. All writes go through the journal, keyed by trial id.
    """

    def __init__(
        self,
        journal: Journal,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        config: StudyConfig,
        extra_tags: dict[str, dict[str, str]] | None = None,
        role: str = ROLE_TRIAL,
    ) -> None:
        self.journal = journal
        self.role = role
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.study_name, self.config = study_name, config
        #: Optuna trial number -> extra tags for its run (e.g. what a resumed run continues)
        self.extra_tags = extra_tags or {}
        self.started: set[str] = set()
        self.finished: set[str] = set()
        self.retries: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        #: trial id -> the figures measured at initialisation (epoch 0)
        self.initial: dict[str, dict[str, float]] = {}
        #: trial id -> epoch -> the per-layer figures the pictures need
        self.history: dict[str, dict[int, dict[str, float]]] = {}
        self._fixed = {
            "dataset": config.data.name,
            "epochs": str(config.training.epochs),
            "batch_size": str(config.training.batch_size),
            "optimizer": config.training.optimizer,
            "weight_decay": str(config.training.weight_decay),
            "dropout": str(config.model.dropout),
        }
        #: Depth or width searched: part of the run names.
        self._shaped = any(len(config.model.choices(n)) > 1 for n in ("depth", "width"))

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
            ROLE_TAG: self.role,
            RAY_TRIAL_ID_TAG: trial.trial_id,
            RAY_TRIAL_PATH_TAG: str(getattr(trial, "path", "") or ""),
            TRIAL_NUMBER_TAG: str(spec.number),
            "activation": spec.activation,
            "init": spec.init,
            "bn": spec.bn,
            "depth": str(spec.depth),
            "width": str(spec.width),
            LABEL_TAG: spec.label(self._shaped),
            NOTE_TAG: f"{spec.label(self._shaped)} (study {self.study_name})",
            **self.extra_tags.get(str(spec.number), {}),
        }
        # Short enough for the UI's runs table; the full description is the label tag.
        name = f"t{spec.number:03d} {spec.activation}"
        self.journal.create_run(trial.trial_id, self.experiment_id, name, tags, _now_ms())
        params = {
            "activation": spec.activation,
            "init": spec.init,
            "init_applied": spec.concrete_init,  # matched resolved: what the layers got
            "init_is_matched": str(spec.init_is_matched).lower(),
            "bn": spec.bn,
            "lr": repr(spec.lr),
            "depth": str(spec.depth),
            "width": str(spec.width),
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
        result = unpack(result)
        if trial.trial_id not in self.started:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        numbers = {
            k: float(v)
            for k, v in result.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        # Figures measured before the first update go in at step 0 (epoch 0).
        initial = {k.removeprefix(INIT): v for k, v in numbers.items() if k.startswith(INIT)}
        values = {
            k: v
            for k, v in numbers.items()
            if k in EPOCH_METRICS or k.startswith(EPOCH_METRIC_PREFIXES)
        }
        history = self.history.setdefault(trial.trial_id, {})
        for step, figures in ((0, initial), (epoch, values)):
            if figures:
                history[step] = {k: v for k, v in figures.items() if k.startswith(PICTURED)}
        if initial:
            self.initial[trial.trial_id] = initial
        tags = {}
        if trial.trial_id not in self.last and PLACEMENT_TAGS[0] in result:
            tags = {k: str(result.get(k)) for k in PLACEMENT_TAGS}
        self.last[trial.trial_id] = dict(result)
        metrics = [(k, v, now, 0) for k, v in initial.items()]
        metrics += [(k, v, now, epoch) for k, v in values.items()]
        metrics += [(CURVES[k], v, now, epoch) for k, v in values.items() if k in CURVES]
        self.journal.log_batch(trial.trial_id, metrics=metrics, tags=tags)

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
                RETRIES_TAG: str(self.retries[key]),
                RETRIED_AFTER_TAG: str(epoch),
            },
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id) or unpack(trial.last_result)
        ended = outcome(result, self.config.training.epochs)
        self._finish(trial, OUTCOMES[ended][0], ended, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial.get_error() if hasattr(trial, "get_error") else None
        reason = str(error).strip().splitlines()[-1][:500] if error else "trial raised"
        self._finish(trial, "FAILED", "error", self.last.get(trial.trial_id), reason)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Trials Tune stopped without completing them (the time budget) end ``stopped``:
        FINISHED, as gradient-health stops are, not a failure; one stopped before its first
        report ends ``no_result``, as everywhere else. (Ctrl+C never gets here: Tune's SIGINT
        handler is off, so the interrupt skips Tune's cleanup and the study closes those runs
        ``interrupted``.)"""
        for trial in trials:
            if trial.trial_id in self.started and trial.trial_id not in self.finished:
                last = self.last.get(trial.trial_id)
                ended = "stopped" if last else "no_result"
                self._finish(
                    trial,
                    OUTCOMES[ended][0],
                    ended,
                    last,
                    "stopped when the search ended (time budget)",
                )

    def finish_told(self, trial_ids: Iterable[str]) -> None:
        """After Ctrl+C: trials Optuna was already told of end as they ended, not
        ``interrupted``. Tune tells its searcher of a completion before its callbacks hear of
        it (the trial's actor stops in between), so Ctrl+C there would leave a finished trial
        whose run the study closes as interrupted: resume would not run it again, and the
        leaderboard would lose it."""
        for key in trial_ids:
            result = self.last.get(key)
            ended = outcome(result, self.config.training.epochs)
            self._finish(SimpleNamespace(trial_id=key), OUTCOMES[ended][0], ended, result)

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
            for name in ("test_accuracy", "best_val_accuracy", MEAN_EPOCH_SECONDS, N_PARAMS):
                value = result.get(name)
                if (
                    isinstance(value, int | float)
                    and math.isfinite(value)
                    and not result.get("diverged")
                ):
                    metrics.append((name, float(value), now, epoch))
            if result.get("diverged"):
                reason = reason or f"non-finite loss or gradient in epoch {epoch}"
                tags[DIVERGED_EPOCH_TAG] = str(epoch)
            if result.get("stop_reason"):
                reason = reason or str(result["stop_reason"])
            tags.update(flag_tags(result, self.initial.get(key, {})))
            tags.update(divergence_tags(result))
        if reason:
            tags[REASON_TAG] = reason
        self.journal.log_batch(key, metrics=metrics, tags=tags)
        self.journal.set_terminated(key, status, _now_ms())
