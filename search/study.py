"""A study from start to end: run a new one, resume an interrupted one, and finish either.

:func:`run_study` checks what a user can get wrong before it creates anything
(:mod:`search.preflight`), then hands the trials to :mod:`search.trials`: the data set loaded
(bad data refused before anything exists), Ray started while the stores open, one Tuner
(:mod:`search.tuner`) recorded by the MLflow tracker, and always the end: leaderboard, report,
pictures, parent status, Ray stopped if it started it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from ray import tune

from search import environment, parent_run, preflight, ray_session, stores, trials
from search.background import ReportProcess
from search.environment import Locations, redact
from search.errors import UserError
from search.leaderboard import find_parent_run, leaderboard
from search.result import StudyResult, study_result
from search.resume import plan_resume
from search.schema import OUTPUT_DIR_TAG, RESUMED_TAG, ROLE_TRIAL
from search.spool import spool_path
from search.trainable import run_trial
from search.tuner import Trainable
from spaces import StudyConfig, grid_size


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
        data, opened, owns_ray = trials.start(config, where, address)
        client = opened.client
        artifact_root = None if _remote(where.tracking_uri) else where.output / "artifacts"
        experiment_id = stores.get_or_create_experiment(
            client, config.tracking.experiment, artifact_root
        )
        parent_run_id = parent_run.start_parent_run(client, experiment_id, name, config, where)
        num_samples = config.num_samples
        if config.searcher.name == "grid":  # each distinct configuration once
            num_samples = min(num_samples, grid_size(config))
        board, notes = trials.run_trials(
            config,
            name,
            where,
            opened,
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
    client = stores.existing_store(tracking_uri)
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
    resume: dict[int, dict[str, str]] | None = None,
    resumed_tags: dict[int, dict[str, str]] | None = None,
    optuna_study: str | None = None,
    role: str = ROLE_TRIAL,
) -> tuple[pd.DataFrame, list[str]]:
    """More trials under an existing study's parent run (a resume, a confirmation): Ray
    connected and checked, the parent marked with ``tag`` (when) and RUNNING again, then
    :func:`~search.trials.run_trials` (see there for ``resume``, ``optuna_study``, ``role``)."""
    client = MlflowClient(tracking_uri=where.tracking_uri)
    data = preflight.load_data(config)
    with ReportProcess() as reporter:  # forked before Ray and the journal start (run_study)
        owns_ray = ray_session.connect(address) if num_samples > 0 else False
        if num_samples > 0:
            try:
                trials.check_resources(config)
            except BaseException:
                if owns_ray:
                    ray_session.shutdown()
                raise
        client.log_batch(parent.info.run_id, tags=[RunTag(tag, time.strftime("%Y-%m-%dT%H:%M:%S"))])
        if parent.info.status != "RUNNING":  # children nest under an active run
            client.update_run(parent.info.run_id, status="RUNNING")
        opened = stores.Stores(client, stores.optuna_storage(where.optuna_storage))
        return trials.run_trials(
            config,
            study_name,
            where,
            opened,
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
            resume=resume,
            resumed_tags=resumed_tags,
            optuna_study=optuna_study,
            role=role,
        )


def _new_name(config: StudyConfig, where: Locations, chosen: str | None) -> str:
    """``chosen`` if no study has it yet, else NAME-timestamp (suffixed if that is taken)."""
    uri, storage = where.tracking_uri, where.optuna_storage
    if chosen is not None:
        if stores.study_exists(uri, storage, chosen):
            raise UserError(
                f"--study: {chosen!r} exists already; 'gradsweep resume --study "
                f"{chosen}' continues it, or choose another name"
            )
        return chosen
    stem = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidates = (stem, *(f"{stem}-{i}" for i in range(2, 1000)))
    return next(n for n in candidates if not stores.study_exists(uri, storage, n))


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
