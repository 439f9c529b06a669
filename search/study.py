"""A study from start to end: run a new one, resume an interrupted one, and finish either.

:func:`run_study` checks what a user can get wrong before it creates anything
(:mod:`search.preflight`), loads the data set, starts Ray while the stores open, runs one Tuner
(:mod:`search.tuner`) recorded by the MLflow tracker, and always finishes: leaderboard, report,
pictures, parent status, Ray stopped if it started it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from ray import tune

from search import environment, preflight, ray_session
from search.background import ReportProcess
from search.ending import finish_study
from search.environment import Locations, redact
from search.errors import UserError
from search.journal import Journal
from search.leaderboard import find_parent_run, leaderboard
from search.progress import ProgressCallback
from search.result import StudyResult, interruption, study_result
from search.resume import plan_resume
from search.schema import OUTPUT_DIR_TAG, RESUMED_TAG, ROLE_TRIAL
from search.spool import spool_path
from search.stores import (
    Stores,
    existing_store,
    get_or_create_experiment,
    open_stores,
    optuna_storage,
    study_exists,
)
from search.tracking import MlflowTracker, start_parent_run
from search.trainable import run_trial
from search.tuner import Trainable, build_tuner
from spaces import StudyConfig, grid_size
from trainers import Splits

log = logging.getLogger(__name__)
#: The MLflow journal gathers this long after a quiet spell, so epochs go out in few writes.
JOURNAL_LINGER_S = 0.5


def run_study(
    config: StudyConfig,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    study_name: str | None = None,
    progress: bool = False,
    close_patience_s: float = 60.0,
    trainable: Trainable = run_trial,
    callbacks: Sequence[tune.Callback] = (),
) -> StudyResult:
    """Run ``config``'s search and return its name, MLflow parent run and leaderboard.

    ``trainable`` and ``callbacks`` are seams for tools (benchmarks): a Tune function trainable
    with :func:`~search.trainable.run_trial`'s signature, and extra Tune callbacks.
    """
    t0 = time.perf_counter()
    environment.configure()
    address = environment.ray_address(address)
    where = environment.locate(config, tracking_uri)
    if study_name is not None:
        preflight.check_study_name(study_name)
    preflight.check_writable(where.output, "output_dir")
    preflight.check(where.tracking_uri, where.optuna_storage, address)
    name = _new_name(config, where, study_name)
    # Forked first, while this process runs no Ray, journal or helper thread of this study.
    with ReportProcess() as reporter:
        data, stores, owns_ray = _start(config, where, address)
        client = stores.client
        artifact_root = None if _remote(where.tracking_uri) else where.output / "artifacts"
        experiment_id = get_or_create_experiment(client, config.tracking.experiment, artifact_root)
        parent_run_id = start_parent_run(client, experiment_id, name, config, where)
        num_samples = config.num_samples
        if config.searcher.name == "grid":  # each distinct configuration once
            num_samples = min(num_samples, grid_size(config))
        board, notes = run_trials(
            config,
            name,
            where,
            stores,
            experiment_id,
            parent_run_id,
            owns_ray,
            reporter,
            data=data,
            num_samples=num_samples,
            run_name=name,
            progress=progress,
            close_patience_s=close_patience_s,
            trainable=trainable,
            callbacks=callbacks,
        )
    if num_samples < config.num_samples:
        notes.insert(0, f"grid: {num_samples} distinct configurations, so {num_samples} trials")
    if config.confirm is not None and not board.empty:
        from search.confirm import confirm_study  # it runs studies: imported only when used

        confirmed = confirm_study(
            name,
            seeds=config.confirm.seeds,
            factor=config.confirm.factor,
            tracking_uri=where.tracking_uri,
            address=address,
            progress=progress,
            close_patience_s=close_patience_s,
            trainable=trainable,
        )
        board, notes = confirmed.leaderboard, [*notes, *confirmed.notes]
    return study_result(name, where, experiment_id, parent_run_id, board, notes, t0)


def resume_study(
    study_name: str,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    progress: bool = False,
    close_patience_s: float = 60.0,
    trainable: Trainable = run_trial,
    callbacks: Sequence[tune.Callback] = (),
) -> StudyResult:
    """Finish a study whose driver died: see :mod:`search.resume`."""
    t0 = time.perf_counter()
    client, parent, config, where, address = open_study(study_name, tracking_uri, address)
    output = where.output
    if spool_path(output, study_name).exists():
        raise UserError(
            f"--study {study_name}: MLflow writes of this study are still spooled in "
            f"{spool_path(output, study_name)}; run 'gradsweep sync' first"
        )
    try:
        study = optuna.load_study(study_name=study_name, storage=where.optuna_storage)
    except Exception as exc:
        raise UserError(
            f"--study {study_name}: no Optuna study in {redact(where.optuna_storage)} "
            f"({exc.__class__.__name__})"
        ) from None
    plan = plan_resume(client, parent, study, output / "ray")
    target = config.num_samples
    if config.searcher.name == "grid":  # as run_study: each distinct configuration once
        target = min(target, grid_size(config))
    remaining = target - plan.finished
    if remaining <= 0 and not plan.resume and parent.info.status != "RUNNING":
        # A finished study: setting its parent RUNNING and FINISHED again would move its end.
        note = f"nothing to resume: all {plan.finished} trials of {study_name} have finished"
        board = leaderboard(client, study_name)
        result = study_result(
            study_name, where, parent.info.experiment_id, parent.info.run_id, board, [note], t0
        )
        result.ran = False
        return result
    board, notes = continue_study(
        config,
        study_name,
        parent,
        where,
        tag=RESUMED_TAG,
        num_samples=remaining,
        run_name=f"{study_name}-resume-{time.strftime('%H%M%S')}",
        address=address,
        progress=progress,
        close_patience_s=close_patience_s,
        trainable=trainable,
        callbacks=callbacks,
        resume=plan.resume,
        resumed_tags=plan.tags,
    )
    notes.insert(
        0,
        f"resumed: {plan.finished} trials already finished, {len(plan.resume)} resumed, "
        f"{max(0, remaining - len(plan.resume))} new",
    )
    return study_result(
        study_name, where, parent.info.experiment_id, parent.info.run_id, board, notes, t0
    )


def open_study(
    study_name: str, tracking_uri: str | None, address: str | None
) -> tuple[MlflowClient, Run, StudyConfig, Locations, str | None]:
    """An existing study, for more trials (resume, confirm): its tracking client, parent run,
    saved config and locations, and the Ray address to use, every flag checked first."""
    preflight.check_study_name(study_name)
    environment.configure()
    address = environment.ray_address(address)
    client = existing_store(tracking_uri)
    if address:
        preflight.check_address(address)
    parent = find_parent_run(client, study_name)
    config = saved_config(client, parent.info.run_id, study_name)
    output = Path(parent.data.tags.get(OUTPUT_DIR_TAG, config.output_dir))
    storage = environment.optuna_storage(config.optuna_storage, output)
    return client, parent, config, Locations(output, client.tracking_uri, storage), address


def continue_study(
    config: StudyConfig,
    study_name: str,
    parent: Run,
    where: Locations,
    *,
    tag: str,
    num_samples: int,
    run_name: str,
    address: str | None,
    progress: bool,
    close_patience_s: float,
    trainable: Trainable,
    callbacks: Sequence[tune.Callback] = (),
    **more: Any,
) -> tuple[pd.DataFrame, list[str]]:
    """More trials under an existing study's parent run (a resume, a confirmation): Ray
    connected and checked, the parent marked with ``tag`` (when) and RUNNING again, then
    :func:`run_trials` with ``more`` (its ``resume``, ``optuna_study``, ``role``, ...)."""
    client = MlflowClient(tracking_uri=where.tracking_uri)
    data = preflight.load_data(config)
    with ReportProcess() as reporter:  # forked before Ray and the journal start (run_study)
        owns_ray = ray_session.connect(address) if num_samples > 0 else False
        if num_samples > 0:
            try:
                _check_resources(config)
            except BaseException:
                if owns_ray:
                    ray_session.shutdown()
                raise
        client.log_batch(parent.info.run_id, tags=[RunTag(tag, time.strftime("%Y-%m-%dT%H:%M:%S"))])
        if parent.info.status != "RUNNING":  # children nest under an active run
            client.update_run(parent.info.run_id, status="RUNNING")
        stores = Stores(client, optuna_storage(where.optuna_storage))
        return run_trials(
            config,
            study_name,
            where,
            stores,
            parent.info.experiment_id,
            parent.info.run_id,
            owns_ray,
            reporter,
            data=data,
            num_samples=num_samples,
            run_name=run_name,
            progress=progress,
            close_patience_s=close_patience_s,
            trainable=trainable,
            callbacks=callbacks,
            **more,
        )


def _new_name(config: StudyConfig, where: Locations, chosen: str | None) -> str:
    """``chosen`` if no study has it yet, else NAME-timestamp (suffixed if that is taken)."""
    uri, storage = where.tracking_uri, where.optuna_storage
    if chosen is not None:
        if study_exists(uri, storage, chosen):
            raise UserError(
                f"--study: {chosen!r} exists already; 'gradsweep resume --study "
                f"{chosen}' continues it, or choose another name"
            )
        return chosen
    stem = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidates = (stem, *(f"{stem}-{i}" for i in range(2, 1000)))
    return next(n for n in candidates if not study_exists(uri, storage, n))


def _start(
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
            _check_resources(config)
        except BaseException:
            stores.remove_created()
            if owns_ray:
                ray_session.shutdown()
            raise
    return data, stores, owns_ray


def _check_resources(config: StudyConfig) -> None:
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


def _remote(uri: str) -> bool:
    """A tracking server stores artifacts itself (``mlflow-artifacts:/``): a local path would be
    one only this machine can see, not the server's UI."""
    return uri.startswith(("http://", "https://"))


def saved_config(client: MlflowClient, parent_run_id: str, study_name: str) -> StudyConfig:
    """The config a study ran with, read back from its parent run's ``config.json``."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent_run_id, "config.json", tmp)
            return StudyConfig.model_validate(json.loads(Path(path).read_text()))
    except Exception as exc:
        raise UserError(f"--study {study_name}: its saved config can't be read ({exc})") from None


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
    """One Tuner over the study, then always the end: leaderboard, report, parent status, Ray
    stopped if the study owns it. ``optuna_study`` (default: the study's name) is where the
    trials are asked and told; ``role`` tags their runs."""
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
    try:
        if num_samples > 0:
            extra: list[tune.Callback] = [tracker, *callbacks]
            if progress:
                extra.append(ProgressCallback(num_samples, run_name))
            tuner, searcher = build_tuner(
                config,
                study_name=optuna_study or name,
                run_name=run_name,
                output=where.output,
                storage=stores.optuna,
                data=data,
                num_samples=num_samples,
                callbacks=extra,
                trainable=trainable,
                resume=resume,
            )
            tuner.fit()
            searcher.close_unfinished()  # stopped by the time budget: PRUNED, not left RUNNING
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise interruption(
            stores.optuna, optuna_study or name, searcher, num_samples, role, where
        ) from None
    finally:
        # Ray's processes stop (mostly waiting) while the leaderboard and pictures are made.
        with ray_session.no_gc(), ThreadPoolExecutor(1, thread_name_prefix="gradsweep-end") as pool:
            ending = pool.submit(
                finish_study,
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
            board, notes = ending.result()
    return board, notes
