"""The run schema: every tag, role, outcome and metric name a study writes to MLflow and Optuna,
and the formats and factor tables it is read back in.

Writers (the tracker, the study, resume) and readers (leaderboard, report, resume) import the
names from here, so a renamed tag cannot silently stop being read somewhere. It imports nothing
heavier than Optuna's ``TrialState``: the read side stays free of Ray and of the writer.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from optuna.trial import TrialState

from spaces.objectives import OBJECTIVES, metrics_and_modes

# -- tags -----------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a child run under its study
STUDY_TAG = "gradsweep.study"
ROLE_TAG = "gradsweep.role"
OUTCOME_TAG = "gradsweep.outcome"
REASON_TAG = "gradsweep.reason"
DIVERGED_EPOCH_TAG = "gradsweep.diverged_epoch"
SEEDS_DIVERGED_TAG = "gradsweep.seeds_diverged"  # "1/4": some seeds diverged, the rest went on
DIVERGED_SEEDS_TAG = "gradsweep.diverged_seeds"  # which seeds, in which epoch
RETRIES_TAG = "gradsweep.retries"
RETRIED_AFTER_TAG = "gradsweep.retried_after_epoch"
RESUMED_TAG = "gradsweep.resumed"  # parent: when; child: "true"
RESUMED_FROM_TAG = "gradsweep.resumed_from"  # child: the interrupted attempt's run id
#: Optuna user attribute of a trial put back to WAITING by Ctrl+C (resume continues it).
INTERRUPTED_ATTR = "gradsweep.interrupted"
CREATE_KEY_TAG = "gradsweep.create_key"  # a run's client-made key: a retried create finds it
OUTPUT_DIR_TAG = "gradsweep.output_dir"
OPTUNA_STORAGE_TAG = "gradsweep.optuna_storage"
TRIAL_NUMBER_TAG = "optuna.trial_number"
#: Parent of a multi-objective study: ``metric:mode,...`` in order (the leaderboard's front).
OBJECTIVES_TAG = "gradsweep.objectives"
LABEL_TAG = "gradsweep.label"  # a trial's full description; its run name is kept short
NOTE_TAG = "mlflow.note.content"  # MLflow's run description
RAY_TRIAL_ID_TAG = "ray.trial_id"
RAY_TRIAL_PATH_TAG = "ray.trial_path"
#: The seed whose per-layer figures (``diag/<figure>/layer_NN``) a trial logs: its first seed.
LAYERS_SEED_TAG = "diag.layers_seed"
#: Tags on a child run that the trainable reports with its first epoch (result key = tag name):
#: where the trial ran, and which seed its per-layer figures follow.
PLACEMENT_TAGS = ("node_id", "device", LAYERS_SEED_TAG)
#: The parent run's description of the study (tags, for filtering in the UI).
STUDY_DESCRIPTION_TAGS = ("searcher", "scheduler", "dataset")
#: A trial's factors, as tags for filtering in the UI and as params.
FACTOR_TAGS = ("activation", "init", "bn")

# -- roles ----------------------------------------------------------------------------------------
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
ROLE_CONFIRMATION = "confirmation"  # a best configuration retrained with fresh seeds
CONFIRMED_TAG = "gradsweep.confirmed"  # parent: when confirmation runs were added

# -- metrics --------------------------------------------------------------------------------------
OBJECTIVE = "best_val_accuracy"  # what Optuna and the scheduler maximise
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
    "chance_accuracy",  # what a diverged seed counts as (1 / classes)
)
#: Prefixes of the per-epoch metric families that also go to MLflow. ``init/`` figures were
#: measured before the first update: kept under that name, and also logged at step 0.
EPOCH_METRIC_PREFIXES = ("diag/", "prelu/", "seed/", "init/")
#: The configuration factors a child run records as params (a cell is one set of their values).
CELL_FACTORS = (
    "activation",
    "alpha",
    "init_applied",
    "bn",
    "depth",
    "width",
    "lr",
    "dataset",
    "optimizer",
    "batch_size",
    "epochs",
    "dropout",
    "weight_decay",
)
#: What a multi-objective study may optimise besides accuracy (:mod:`spaces.objectives`).
MEAN_EPOCH_SECONDS = OBJECTIVES["epoch_seconds"].metric  # mean over the epochs run
N_PARAMS = OBJECTIVES["params"].metric
#: Written once, when a trial ends (the objectives: the values Optuna was told).
FINAL_METRICS = ("test_accuracy", "best_val_accuracy", "epochs_run", MEAN_EPOCH_SECONDS, N_PARAMS)

#: Per-epoch copies of the training curves under a prefix MLflow's UI sorts before ``diag/``:
#: a trial's metrics page opens on them.
CURVES = {
    "val_accuracy": "curves/val_accuracy",
    "best_val_accuracy": "curves/best_val_accuracy",
    "train_loss": "curves/train_loss",
    "val_loss": "curves/val_loss",
}
#: The parent run's headline metrics (``study/...``), written when a study ends.
STUDY_METRICS_PREFIX = "study/"

# -- what a trial tells Ray Tune ------------------------------------------------------------------
#: The result keys Ray Tune and its plug-ins read: the objectives (Tune's metric, the searcher),
#: ``epoch`` (ASHA's time, the searcher's step), what :func:`outcome` reads, where the trial ran,
#: and ``epoch_seconds`` (the benchmarks' probes). Tune keeps running statistics of every numeric
#: key of every result in the driver; the other figures, which only the MLflow tracker reads,
#: travel as one string under :data:`PACKED` (:func:`pack`), which it leaves alone.
TUNE_KEYS = frozenset(
    {
        "epoch",
        "epoch_seconds",
        "diverged",
        "stop_reason",
        *(objective.metric for objective in OBJECTIVES.values()),
        *PLACEMENT_TAGS,
    }
)
#: A string: Tune neither flattens it nor keeps statistics of it, and its experiment state holds
#: it as is; JSON gives floats back exactly, NaN and infinities included.
PACKED = "gradsweep.figures"


def pack(metrics: dict[str, Any]) -> dict[str, Any]:
    """A trial's metrics as sent to Tune: :data:`TUNE_KEYS` as they are, the rest as JSON."""
    sent = {k: v for k, v in metrics.items() if k in TUNE_KEYS}
    sent[PACKED] = json.dumps({k: v for k, v in metrics.items() if k not in TUNE_KEYS})
    return sent


def unpack(result: dict[str, Any]) -> dict[str, Any]:
    """Every figure of a Tune result as its own key again; a result without :data:`PACKED`
    (a trainable that does not pack) as it is."""
    if PACKED not in result:
        return result
    out = {k: v for k, v in result.items() if k != PACKED}
    out.update(json.loads(result[PACKED]))
    return out


# -- outcomes -------------------------------------------------------------------------------------
#: outcome -> (MLflow run status, Optuna trial state). The tracker, the searcher and resume all
#: read this table, so a trial can never be FINISHED in one store and FAIL in the other.
OUTCOMES: dict[str, tuple[str, TrialState]] = {
    "completed": ("FINISHED", TrialState.COMPLETE),  # ran every epoch
    # Stopping early is a search's normal work, not a failure: FINISHED (a green tick in the UI),
    # with the outcome tag saying why it ran fewer epochs; Optuna still hears PRUNED.
    "early_stopped": ("FINISHED", TrialState.PRUNED),  # the scheduler (ASHA) stopped it
    "stopped": ("FINISHED", TrialState.PRUNED),  # gradient-health stopping or the time budget
    "diverged": ("FAILED", TrialState.FAIL),  # non-finite loss: no score to learn from
    "error": ("FAILED", TrialState.FAIL),  # the trial raised
    "no_result": ("KILLED", TrialState.FAIL),  # ended before its first epoch was reported
}
#: Outcomes of runs that a study closed itself (never reported by a trial).
INTERRUPTED, ORPHANED = "interrupted", "orphaned"
#: What an Optuna trial's final state says about a run whose own final write was lost.
FROM_OPTUNA = {
    TrialState.COMPLETE: "completed",
    TrialState.PRUNED: "stopped",
    TrialState.FAIL: "error",
}


def objectives_tag(objectives: list[dict[str, str]]) -> str:
    """``best_val_accuracy:max,mean_epoch_seconds:min``: a study's objectives as metrics."""
    metrics, modes = metrics_and_modes(objectives)
    return ",".join(f"{m}:{d}" for m, d in zip(metrics, modes, strict=True))


def parse_objectives_tag(tag: str | None) -> list[tuple[str, str]]:
    """The (metric, mode) pairs of :func:`objectives_tag`; empty for a single objective."""
    return [
        (part.partition(":")[0], part.partition(":")[2]) for part in (tag or "").split(",") if part
    ]


def outcome(result: dict[str, Any] | None, epochs: int, error: bool = False) -> str:
    """The outcome of a trial that ended with ``result`` as its last report."""
    if error:
        return "error"
    if not result:
        return "no_result"
    if result.get("diverged"):
        return "diverged"
    if result.get("stop_reason"):
        return "stopped"
    if int(result.get("epoch", 0)) < epochs:
        return "early_stopped"
    return "completed"


# -- reading --------------------------------------------------------------------------------------
#: How ``gradsweep leaderboard`` prints a board (:func:`search.leaderboard.render`).
Format = Literal["table", "csv", "markdown", "json"]
FORMATS: tuple[Format, ...] = get_args(Format)
#: Factor tables (:mod:`search.analysis`): name -> the leaderboard columns that make a level.
FACTORS: dict[str, list[str]] = {
    "activation": ["activation"],
    "init": ["init_applied"],
    "bn": ["bn"],
    "activation_bn": ["activation", "bn"],
    "depth": ["depth"],
    "width": ["width"],
}
