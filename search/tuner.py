"""Assembling the Ray Tune ``Tuner`` of a study: searcher, scheduler, trainable, callbacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search.schema import OBJECTIVE
from search.searcher import ResumingOptunaSearch
from search.trainable import run_trial
from spaces import TRIAL_NUMBER_KEY, StudyConfig, define_space, enqueued_points, make_sampler
from spaces.objectives import metrics_and_modes
from trainers import Splits

MODE = "max"
#: A Ray Tune function trainable: ``trainable(params, study=config dict, data=splits)``.
Trainable = Callable[..., None]


def _fifo(config: StudyConfig) -> TrialScheduler:
    return FIFOScheduler()


def _asha(config: StudyConfig) -> TrialScheduler:
    return ASHAScheduler(
        time_attr="epoch",  # a resumed trial's training_iteration restarts at 1
        max_t=config.training.epochs,
        grace_period=min(config.scheduler.grace_period, config.training.epochs),
        reduction_factor=config.scheduler.reduction_factor,
    )


#: Scheduler name (``scheduler.name`` in the config) -> Tune scheduler.
SCHEDULERS: dict[str, Callable[[StudyConfig], TrialScheduler]] = {"fifo": _fifo, "asha": _asha}


def trial_dirname(trial: Any) -> str:
    """``t007_<trial id>``: resume finds a trial's checkpoints by its Optuna number."""
    return f"t{int(trial.config.get(TRIAL_NUMBER_KEY, 0)):03d}_{trial.trial_id}"


def trials_so_far(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """How many trials the Optuna study holds already (0 for a new study): a resume's sampler
    continues after them instead of drawing the first trials again."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def make_searcher(
    config: StudyConfig,
    *,
    study_name: str,
    storage: optuna.storages.BaseStorage,
    resume: dict[int, dict[str, Any]] | None = None,
) -> ResumingOptunaSearch:
    """The study's searcher over ``storage``: its sampler, define-by-run space and, on a first
    run (``resume`` None), the enqueued points. Opens (or creates) the Optuna study.

    ``resume`` maps interrupted Optuna trial numbers to their extra config (their checkpoint):
    they run again first, and the enqueued points are not (they ran the first time). One
    searcher serves every round of the study (:func:`trials_per_round`)."""
    metrics, modes = metrics_and_modes(config.objectives)
    multi = config.multi_objective
    return ResumingOptunaSearch(
        space=define_space(config),
        metric=metrics if multi else OBJECTIVE,
        mode=modes if multi else MODE,
        sampler=make_sampler(config, trials_so_far(storage, study_name)),
        points_to_evaluate=(enqueued_points(config) or None) if resume is None else None,
        study_name=study_name,
        storage=storage,
        epochs=config.training.epochs,
        resume=resume or {},
    )


def trials_per_round(config: StudyConfig) -> int:
    """The most trials one Ray Tune run (a round of the study) holds: ``trials_per_round``, by
    default the larger of 5,000 and 50 per slot, so a round's last trials (the slots it leaves
    idle while they finish) and its new trial actors are a small share of its time."""
    return config.trials_per_round or max(5000, 50 * config.max_concurrent)


def build_tuner(
    config: StudyConfig,
    searcher: Searcher,
    *,
    run_name: str,
    output: Path,
    data: Splits,
    num_samples: int,
    callbacks: Sequence[tune.Callback],
    trainable: Trainable = run_trial,
    time_budget_s: float | None = None,
) -> tune.Tuner:
    """The Tuner of one round of the study: ``num_samples`` trials asked of ``searcher`` (see
    :func:`make_searcher`), stopped after ``time_budget_s``.

    Several ``objectives`` go to Optuna as lists (a multi-objective study); Tune and its
    scheduler see the primary (first) one, as they rank by one number.
    """
    metrics, modes = metrics_and_modes(config.objectives)
    resources = {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    # The splits go through the object store once: workers skip the loaders and the file.
    shipped = tune.with_parameters(trainable, study=config.model_dump(mode="json"), data=data)
    tuner = tune.Tuner(
        tune.with_resources(shipped, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=SCHEDULERS[config.scheduler.name](config),
            metric=metrics[0],
            mode=modes[0],
            num_samples=num_samples,
            time_budget_s=time_budget_s,
            max_concurrent_trials=config.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(output / "ray"),
            callbacks=list(callbacks),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # num_to_keep would force an experiment snapshot per checkpoint: O(trials) each time.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    return tuner
