"""Trials under a study's parent run: load the data, start Ray beside the stores, run the Tuners,
and always end (leaderboard, report, pictures, parent status, Ray stopped if the study started it).

:mod:`search.study` decides *which* trials a study runs (new, resumed, confirmed); this module
runs them, so a new kind of study reuses the start and the end as they are.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
from ray import tune

from search import ending, preflight, ray_session
from search.ask_ahead import AskAheadSearch, StudySearcher, open_searcher
from search.background import ReportProcess
from search.environment import Locations
from search.journal import Journal
from search.progress import ProgressCallback
from search.result import interruption
from search.schema import ROLE_TRIAL
from search.spool import spool_path
from search.stores import Stores, open_stores
from search.tracking import MlflowTracker
from search.tuner import Trainable, build_tuner, trials_per_round
from spaces import StudyConfig
from trainers import Splits

log = logging.getLogger(__name__)
#: The MLflow journal gathers this long after a quiet spell, so epochs go out in few writes.
JOURNAL_LINGER_S = 0.5


class ForgetFinished(tune.Callback):
    """Drops what Tune keeps of a finished trial that nothing of gradsweep reads again.

    For every numeric key of every result Tune keeps running statistics per trial (max, min,
    mean, the last 5 and 10 values: ~30 KiB per trial of 17 keys) until the study ends, for the
    ``ResultGrid`` that ``fit`` returns and for its experiment snapshot; gradsweep reads neither
    (MLflow and Optuna hold the results; resume never restores Tune's state), so a study of
    thousands of trials would only grow the driver with them (benchmarks/README.md, scale).
    Tune's last result of the trial stays.
    """

    def on_trial_complete(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: object
    ) -> None:
        self._forget(trial)

    def on_trial_error(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: object
    ) -> None:
        self._forget(trial)

    @staticmethod
    def _forget(trial: tune.experiment.Trial) -> None:
        metadata = getattr(trial, "run_metadata", None)
        if metadata is not None and hasattr(metadata, "metric_analysis"):
            metadata.metric_analysis = {}
            metadata.metric_n_steps = {}


@contextlib.contextmanager
def start_up_frozen() -> Iterator[None]:
    """What the driver holds when its trials start (Ray, Tune, MLflow, torch, the data: some
    0.5 M objects) is out of the garbage collector's reach until they end.

    Otherwise every full collection, which the driver's own allocations set off every few asks
    of a large study, scans all of it again: a few hundred ms of CPU each time, landing in
    whichever ask or tell set it off (benchmarks/ask_cost.py). Collected first; given back
    afterwards, so a process that runs several studies still collects what they leave.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def start(
    config: StudyConfig, where: Locations, address: str | None
) -> tuple[Splits, Stores, bool]:
    """Load the data set, then start Ray while the stores open (both mostly wait).

    The data comes first, so bad data is refused before Ray or a store exists. Returns the data,
    the stores and whether this study owns its Ray session. If Ray or the stores fail, the other
    is undone: Ray stopped, or what opening the stores created removed.
    """
    data = preflight.load_data(config)
    with ray_session.no_gc(), ThreadPoolExecutor(1, thread_name_prefix="gradsweep-start") as pool:
        opened = pool.submit(open_stores, where, config.tracking.experiment)
        try:
            owns_ray = ray_session.connect(address)
        except BaseException:
            with contextlib.suppress(Exception):
                opened.result().remove_created()
            raise
        try:
            stores = opened.result()
        except BaseException:
            if owns_ray:
                ray_session.shutdown()
            raise
        try:
            check_resources(config)
        except BaseException:
            stores.remove_created()
            if owns_ray:
                ray_session.shutdown()
            raise
    return data, stores, owns_ray


def check_resources(config: StudyConfig) -> None:
    """A trial's request against the cluster Ray is now connected to (see preflight)."""
    wanted = config.resources
    preflight.await_resources(
        wanted.cpu,
        wanted.gpu,
        ray_session.node_resources,
        autoscaling=ray_session.autoscaling(),
        say=lambda line: log.warning("%s", line),
        request=ray_session.request_resources,
    )


def run_rounds(
    config: StudyConfig,
    searcher: StudySearcher,
    *,
    num_samples: int,
    **tuner: Any,
) -> None:
    """``num_samples`` trials of ``searcher`` in rounds of at most :func:`trials_per_round`, each
    one ``Tuner.fit`` (``tuner``: :func:`build_tuner`'s other arguments).

    Ray Tune keeps every trial of a run (its ``Trial``, last result and JSON state) in the
    driver until the run ends, and snapshots them all as the run goes; a new Tuner per round
    bounds both by the round (benchmarks/README.md, scale). The searcher, the Optuna study, the
    callbacks (MLflow runs, progress) and the time budget carry over; what starts again is
    Tune's: the trials' actors and the scheduler's state (ASHA's rungs). The rounds end early
    when one runs fewer trials than it asked for: the budget ran out, or the searcher (a grid)
    has no more.
    """
    deadline = time.monotonic() + config.budget_minutes * 60 if config.budget_minutes else None
    left = num_samples
    while left > 0:
        budget = None if deadline is None else deadline - time.monotonic()
        if budget is not None and budget <= 0:
            return
        size = min(left, trials_per_round(config))
        asked = searcher.asked
        fit = build_tuner(config, searcher, num_samples=size, time_budget_s=budget, **tuner)
        with start_up_frozen():
            fit.fit()
        left -= size
        if searcher.asked - asked < size:
            return


def run_trials(
    config: StudyConfig,
    name: str,
    where: Locations,
    stores: Stores,
    experiment_id: str,
    parent_run_id: str,
    owns_ray: bool,
    reporter: ReportProcess,
    *,
    data: Splits,
    num_samples: int,
    run_name: str,
    progress: bool,
    close_patience_s: float,
    trainable: Trainable,
    callbacks: Sequence[tune.Callback],
    resume: dict[int, dict[str, str]] | None = None,
    resumed_tags: dict[int, dict[str, str]] | None = None,
    optuna_study: str | None = None,
    role: str = ROLE_TRIAL,
) -> tuple[pd.DataFrame, list[str]]:
    """The study's trials (in rounds, :func:`run_rounds`), then always the end: leaderboard,
    report, parent status, Ray stopped if the study owns it. ``optuna_study`` (default: the
    study's name) is where the trials are asked and told; ``role`` tags their runs."""
    journal = Journal(
        stores.client,
        spool_path(where.output, name),
        run_ids={"parent": parent_run_id},
        linger_s=JOURNAL_LINGER_S,
    )
    tracker = MlflowTracker(
        journal,
        experiment_id,
        parent_run_id,
        name,
        config,
        extra_tags={str(k): v for k, v in (resumed_tags or {}).items()},
        role=role,
    )
    status = "FAILED"
    searcher = None
    bar = ProgressCallback(num_samples, run_name) if progress and num_samples > 0 else None
    try:
        if num_samples > 0:
            extra: list[tune.Callback] = [tracker, ForgetFinished(), *callbacks]
            if bar is not None:
                extra.append(bar)
            searcher = open_searcher(
                config,
                study_name=optuna_study or name,
                storage=stores.optuna,
                storage_url=where.optuna_storage,
                resume=resume,
                limit=num_samples,
            )
            run_rounds(
                config,
                searcher,
                run_name=run_name,
                output=where.output,
                data=data,
                num_samples=num_samples,
                callbacks=extra,
                trainable=trainable,
            )
            searcher.close_unfinished()  # stopped by the time budget: PRUNED, not left RUNNING
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        if searcher is not None:  # before interrupt() closes the rest
            tracker.finish_told(searcher.told)
        raise interruption(
            stores.optuna, optuna_study or name, searcher, num_samples, role, where
        ) from None
    finally:
        if bar is not None:
            bar.close()
        if isinstance(searcher, AskAheadSearch):  # its trials asked ahead go back first
            searcher.close()
        # Ray's processes stop (mostly waiting) while the leaderboard and pictures are made.
        with ray_session.no_gc(), ThreadPoolExecutor(1, thread_name_prefix="gradsweep-end") as pool:
            end = pool.submit(
                ending.finish_study,
                config,
                name,
                where,
                stores.client,
                journal,
                tracker,
                status,
                close_patience_s,
                reporter,
            )
            if owns_ray:
                ray_session.shutdown()
            board, notes = end.result()
    return board, notes
