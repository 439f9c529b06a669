"""MLflow recording of trials: one nested child run per trial, under the study's parent run
(:mod:`search.parent_run`).

All writes happen in the driver, through the study's :class:`~search.journal.Journal`: a
background writer that batches, keeps each run's order and retries (different runs go out at
once to an HTTP server), so a slow or restarting tracking server never stalls Ray Tune's event
loop, SQLite only ever sees one writer, and what can't be delivered is spooled to disk. Trials
never talk to MLflow themselves.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pandas as pd
from ray import tune

from search.journal import Journal
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
    OUTCOME_TAG,
    OUTCOMES,
    PARENT_TAG,
    PLACEMENT_TAGS,
    RAY_TRIAL_ID_TAG,
    RAY_TRIAL_PATH_TAG,
    REASON_TAG,
    RETRIED_AFTER_TAG,
    RETRIES_TAG,
    ROLE_TAG,
    ROLE_TRIAL,
    SEEDS_DIVERGED_TAG,
    STUDY_TAG,
    TRIAL_NUMBER_TAG,
    outcome,
    unpack,
)
from search.seeds import INIT
from spaces import StudyConfig, resolve_trial
from trainers import FLAGS


def _now_ms() -> int:
    return int(time.time() * 1000)


#: Per-layer figures (``diag/<figure>/layer_NN``, and ``init/...`` copies at initialisation).
_LAYER = re.compile(r"^(?:init/)?diag/(\w+)/layer_(\d+)$")
#: The one per-layer figure logged as an MLflow metric each epoch: the gradient norm, the notes'
#: quantity, charted per layer across runs in the UI. Every per-layer figure (this one too) goes
#: into one table per trial, :data:`LAYER_TABLE`, written when the trial ends: five figures x
#: depth as metrics were most of a trial's MLflow rows (100 of 172 per epoch at depth 20), the
#: driver's largest per-epoch cost (benchmarks/README.md), for charts nobody reads one by one.
CHARTED_LAYER_FIGURE = "diag/grad_norm/"
#: The per-layer figures the pictures draw, kept per trial until the study ends.
PICTURED = ("diag/grad_norm/", "diag/act_std/")
LAYER_TABLE = "diagnostics/layers.csv"
#: A seed's count of epochs with a flag up: logged when it changes, so its latest value is the
#: count, without one row per seed, flag and epoch that repeats it.
_COUNTER = re.compile(r"^seed/[^/]+/diag/\w+_epochs$")
#: A 0/1 flag of one measurement (a seed's, or the layers seed's, at an epoch or at init): a
#: threshold on the figures logged beside it. The run's tags count the seeds that raise it (last
#: epoch, initialisation) and each seed's counter says for how many epochs, so the flags
#: themselves are not metrics: that would be four rows per seed and epoch more.
_FLAG = re.compile(rf"^(?:init/)?(?:seed/[^/]+/)?diag/(?:{'|'.join(FLAGS)})$")


def charted(key: str) -> bool:
    """Whether a per-epoch figure is an MLflow metric: not a flag (:data:`_FLAG`); per-layer
    figures only the gradient norm (at initialisation it is the step-0 value: no ``init/`` copy)."""
    if _FLAG.match(key):
        return False
    match = _LAYER.match(key)
    return match is None or (not key.startswith(INIT) and key.startswith(CHARTED_LAYER_FIGURE))


def layer_table(history: dict[int, dict[str, float]]) -> str:
    """Every per-layer figure of a trial as CSV, a row per epoch (0 = at initialisation) and
    layer, a column per figure."""
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for epoch, figures in history.items():
        for key, value in figures.items():
            if match := _LAYER.match(key):
                rows.setdefault((epoch, int(match[2])), {})[match[1]] = value
    table = pd.DataFrame([{"epoch": e, "layer": layer, **f} for (e, layer), f in rows.items()])
    return table.sort_values(["epoch", "layer"]).to_csv(index=False)


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
        #: trial id -> epoch -> its per-layer figures (the pictures and the layer table)
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
        for step, figures in ((0, initial), (epoch, values)):
            layers = {
                k: v for k, v in figures.items() if _LAYER.match(k) and not k.startswith(INIT)
            }
            if layers:
                self.history.setdefault(trial.trial_id, {})[step] = layers
        if initial:
            self.initial[trial.trial_id] = initial
        tags = {}
        if trial.trial_id not in self.last and PLACEMENT_TAGS[0] in result:
            tags = {k: str(result.get(k)) for k in PLACEMENT_TAGS}
        previous = self.last.get(trial.trial_id, {})
        self.last[trial.trial_id] = dict(result)
        for key in [k for k in values if _COUNTER.match(k) and previous.get(k) == values[k]]:
            del values[key]  # a counter is logged when it changes
        metrics = [(k, v, now, 0) for k, v in initial.items() if charted(k)]
        metrics += [(k, v, now, epoch) for k, v in values.items() if charted(k)]
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

    def write_open_tables(self) -> None:
        """The layer table of every trial whose run is still open when the study ends (Ctrl+C,
        Tune stopping): what it measured so far, so an interrupted run keeps its figures too."""
        for key, history in self.history.items():
            if key in self.started and key not in self.finished and history:
                self.journal.log_text(key, layer_table(history), LAYER_TABLE)

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
        if self.history.get(key):
            self.journal.log_text(key, layer_table(self.history[key]), LAYER_TABLE)
            # kept to the study's end for the pictures, which draw only these figures
            self.history[key] = {
                epoch: {k: v for k, v in figures.items() if k.startswith(PICTURED)}
                for epoch, figures in self.history[key].items()
            }
        self.journal.set_terminated(key, status, _now_ms())
        # A long study's driver keeps of a finished trial only the above and its last epoch, which
        # a retry's tag needs: Tune can still report a trial failed after it completed (its
        # node lost while its actor was being stopped).
        if key in self.last:
            self.last[key] = {"epoch": self.last[key].get("epoch", 0)}
        self.initial.pop(key, None)
