"""Run a whole study: Ray Tune schedules, Optuna chooses, MLflow records.

:func:`run_study` checks everything a user can get wrong *before* it creates anything (data set,
tracking URI, cluster address), so bad input never leaves a half-made run behind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
import pandas as pd
import ray
from mlflow import MlflowClient
from mlflow.entities import RunTag
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.background import ReportProcess
from search.errors import UserError
from search.journal import Journal, spool_path
from search.leaderboard import find_parent_run, leaderboard, render
from search.plots import log_pictures
from search.progress import ProgressCallback
from search.resume import close_orphans, plan_resume
from search.searcher import ResumingOptunaSearch
from search.tracking import (
    MlflowTracker,
    check_tracking_uri,
    default_tracking_uri,
    existing_store,
    get_or_create_experiment,
    redact,
    start_parent_run,
)
from search.trainable import run_trial
from spaces import (
    TRIAL_NUMBER_KEY,
    StudyConfig,
    define_space,
    enqueued_points,
    grid_size,
    make_sampler,
)
from trainers import DataError, Splits

log = logging.getLogger(__name__)
# Tune's new console output prints tables even at verbose=0; gradsweep shows its own progress.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune swallows the first Ctrl+C and returns normally: the study would look FINISHED.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# Ray's log monitor re-lists the session's log folder every 0.1 s (every 0.5 s past this many
# files) to forward worker output, which gradsweep never asks for (log_to_driver=False); on 2
# cores that was 0.5% of a long study's CPU (0.9 s in 200 core-seconds; now half).
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# Results live in MLflow; Ray's CSV/JSON/TensorBoard loggers would write every result again.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# ... and so the ResultGrid that fit() returns (which gradsweep does not read) finds no files.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
# An embedded Ray lives as long as its study, with the token auth Ray 2.60 gives a new local
# cluster (README, Security); its notice about that would land in the middle of our output.
logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
METRIC, MODE = "best_val_accuracy", "max"
#: The MLflow journal gathers this long after a quiet spell, so epochs go out in few writes.
JOURNAL_LINGER_S = 0.5


@dataclass
class StudyResult:
    """What a finished study gives back to a script."""

    study_name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    optuna_storage: str
    leaderboard: pd.DataFrame
    output_dir: Path
    seconds: float
    notes: list[str] = field(default_factory=list)  # what a user should know (spooled writes, ...)


def resolve_paths(config: StudyConfig, tracking_uri: str | None) -> tuple[Path, str, str]:
    """(absolute output dir, tracking URI, Optuna storage URL): flag, env, config, default."""
    output = Path(config.output_dir).expanduser().resolve()
    uri = tracking_uri or os.environ.get("GRADSWEEP_TRACKING_URI") or config.tracking.uri
    uri = uri or default_tracking_uri(output)
    storage = os.environ.get("GRADSWEEP_OPTUNA_STORAGE") or config.optuna_storage
    storage = storage or f"sqlite:///{output / 'optuna.db'}"
    return output, with_driver(uri), with_driver(storage)


def with_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://``: SQLAlchemy 2.1 would pick psycopg 3,
    which gradsweep does not install; psycopg2 is what it ships with."""
    return (
        "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        if url.startswith("postgresql://")
        else url
    )


def check_address(address: str) -> None:
    """Fail fast when ``address`` names a Ray cluster that isn't there."""
    if address == "auto":
        current = Path("/tmp/ray/ray_current_cluster")
        found = os.environ.get("RAY_ADDRESS", "")
        if found in ("", "auto"):
            found = current.read_text().strip() if current.is_file() else ""
        if not found:
            raise UserError("--address auto: no running Ray cluster found on this machine")
        address = found
    target = address if "://" in address else f"tcp://{address}"
    parsed = urlparse(target)
    if parsed.scheme not in ("tcp", "ray") or not parsed.hostname:
        raise UserError(f"--address: {address!r} must be auto, HOST:PORT or ray://HOST:PORT")
    try:
        port = parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    except ValueError:
        raise UserError(f"--address: {address!r} has an invalid port") from None
    try:
        with socket.create_connection((parsed.hostname, port), timeout=3):
            pass
    except OSError as exc:
        raise UserError(
            f"--address: no Ray cluster reachable at {parsed.hostname}:{port} "
            f"({exc.strerror or exc})"
        ) from None


def check_storage(url: str) -> None:
    """Fail fast on an Optuna storage URL SQLAlchemy cannot use, or a database that is not
    there (a server database is connected to; a SQLite file is not created here)."""
    if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql")):
        raise UserError(
            f"optuna_storage: unsupported {redact(url)!r}; use sqlite:///PATH or postgresql://..."
        )
    if url.startswith("sqlite:///"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"optuna_storage: cannot connect to {redact(url)}: {first}") from None


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def study_exists(uri: str, storage: str, name: str) -> bool:
    """Whether MLflow or Optuna already hold a study called ``name`` (creates no store)."""
    from search.leaderboard import find_parent_run

    def missing(url: str) -> bool:
        return url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()

    if not missing(storage) and name in optuna.study.get_all_study_names(storage=storage):
        return True
    if missing(uri):
        return False
    try:
        find_parent_run(MlflowClient(tracking_uri=uri), name)
    except UserError:
        return False
    return True


def check_study_name(name: str) -> None:
    """Study names become file names, Ray experiment names and MLflow filter values."""
    if not STUDY_NAME.fullmatch(name) or len(name) > 120:
        raise UserError(f"--study: {name!r} must use letters, digits, '_', '.' and '-'")


def make_scheduler(config: StudyConfig) -> TrialScheduler:
    """FIFO, or ASHA over epochs with the config's grace period and reduction factor."""
    if config.scheduler.name == "asha":
        return ASHAScheduler(
            time_attr="epoch",  # a resumed trial's training_iteration restarts at 1
            max_t=config.training.epochs,
            grace_period=min(config.scheduler.grace_period, config.training.epochs),
            reduction_factor=config.scheduler.reduction_factor,
        )
    return FIFOScheduler()


def preflight(tracking_uri: str, storage: str, address: str | None) -> None:
    """The quick checks, before anything is created (the data set is checked by
    :func:`_prepare`, while Ray starts)."""
    check_tracking_uri(tracking_uri)
    check_storage(storage)
    if address:
        check_address(address)


def load_data(config: StudyConfig) -> Splits:
    try:
        return config.data.load()
    except DataError as exc:
        raise UserError(str(exc)) from None


@dataclass
class _Stores:
    """MLflow and Optuna stores opened for a study, and which files opening them created."""

    client: MlflowClient
    optuna: optuna.storages.BaseStorage
    created: list[Path]


def _remove_created(paths: list[Path]) -> None:
    """Remove what opening the stores created (the study never started: nothing is in it)."""
    for path in reversed(paths):  # files before the folder that holds them
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # only if still empty
        else:
            path.unlink(missing_ok=True)


def _sqlite_file(url: str) -> Path | None:
    return Path(url.split("///", 1)[1]) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No garbage collection while ``ray.init`` or ``ray.shutdown`` runs beside another
    thread: a collection started by that thread's allocations may free a Ray object (an object
    reference of this or an earlier session), whose finalizer then calls into a core worker
    that is starting or stopping, and Ray ends the process ("The core worker has already been
    shutdown"; seen in a benchmark running several studies in one process). Collected first,
    on this thread, while Ray is steady."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _prepare(config: StudyConfig, output: Path, uri: str, storage: str) -> _Stores:
    """Check the data set, then open (create when new) the MLflow and Optuna stores: the slow
    part of a start, which runs while Ray starts."""
    load_data(config)
    files = [output, *filter(None, (_sqlite_file(uri), _sqlite_file(storage)))]
    created = [p for p in files if not p.exists()]
    output.mkdir(parents=True, exist_ok=True)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.get_experiment_by_name(config.tracking.experiment)  # creates a new store's tables
        return _Stores(client, optuna.storages.RDBStorage(storage), created)
    except BaseException:
        _remove_created(created)
        raise


def connect_ray(address: str | None, config: StudyConfig) -> bool:
    """Attach to ``address`` or start an embedded local Ray. Returns True if we started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
            return True
        # Ray would start a pool of idle workers for the driver, but Tune's trial actors live in
        # placement groups and never use them: on 2 cores that is ~1.5 s of start-up spent
        # importing Ray into processes that wait until the study ends.
        ray.init(include_dashboard=False, _system_config=dict(NO_PRESTART), **kwargs)
        return True
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"--address: cannot attach to Ray at {address or 'local'}: {exc}") from None


NO_PRESTART = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


@dataclass
class _Session:
    """Everything one study's Tuner runs share (a first run, or a resume)."""

    config: StudyConfig
    name: str
    output: Path
    uri: str
    storage: str
    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    journal: Journal
    optuna_storage: optuna.storages.BaseStorage | None = None  # opened already, else from storage


def _trial_dirname(trial: Any) -> str:
    return f"t{int(trial.config.get(TRIAL_NUMBER_KEY, 0)):03d}_{trial.trial_id}"


def _run_session(
    session: _Session,
    started_ray: bool,
    close_patience_s: float,
    reporter: ReportProcess,
    resumed_tags: dict[int, dict[str, str]] | None = None,
    **tune_args: Any,
) -> tuple[pd.DataFrame, list[str]]:
    """Tune, then always finish: leaderboard, report, parent status, Ray stopped if ours."""
    tracker = MlflowTracker(
        session.journal,
        session.experiment_id,
        session.parent_run_id,
        session.name,
        session.config,
        extra_tags={str(k): v for k, v in (resumed_tags or {}).items()},
    )
    status = "FAILED"
    try:
        _tune(session, tracker, **tune_args)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        # Ray's processes stop (mostly waiting) while the leaderboard and pictures are made.
        with _no_gc(), ThreadPoolExecutor(1, thread_name_prefix="gradsweep-finish") as pool:
            finished = pool.submit(_finish, session, tracker, status, close_patience_s, reporter)
            if started_ray:
                ray.shutdown()
            board, notes = finished.result()
    return board, notes


def _tune(
    session: _Session,
    tracker: MlflowTracker,
    *,
    num_samples: int,
    run_name: str,
    progress: bool,
    resume: dict[int, dict[str, str]] | None = None,
) -> None:
    """Run one Tuner over the study, recorded by ``tracker``."""
    config = session.config
    if num_samples < 1:
        return
    searcher = ResumingOptunaSearch(
        space=define_space(config),
        metric=METRIC,
        mode=MODE,
        sampler=make_sampler(config),
        points_to_evaluate=(enqueued_points(config) or None) if resume is None else None,
        study_name=session.name,
        storage=session.optuna_storage or optuna.storages.RDBStorage(session.storage),
        epochs=config.training.epochs,
        resume=resume or {},
    )
    callbacks: list[tune.Callback] = [tracker]
    if progress:
        callbacks.append(ProgressCallback(num_samples, run_name))
    trainable = tune.with_resources(
        # The splits go through the object store once: workers skip the loaders and the file.
        tune.with_parameters(
            run_trial, study=config.model_dump(mode="json"), data=load_data(config)
        ),
        {"cpu": config.resources.cpu, "gpu": config.resources.gpu},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(config),
            metric=METRIC,
            mode=MODE,
            num_samples=num_samples,
            time_budget_s=config.budget_minutes * 60 if config.budget_minutes else None,
            max_concurrent_trials=config.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(session.output / "ray"),
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
            # num_to_keep would force an experiment snapshot per checkpoint: O(trials) each time.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    tuner.fit()
    searcher.close_unfinished()  # stopped by the time budget: PRUNED, not left RUNNING


def _finish(
    session: _Session,
    tracker: MlflowTracker,
    status: str,
    patience_s: float,
    reporter: ReportProcess,
) -> tuple[pd.DataFrame, list[str]]:
    """Leaderboard, report (in ``reporter``'s process) beside the pictures, orphan sweep and
    parent status; spool what MLflow can't take."""
    journal, client, config = session.journal, session.client, session.config
    board = pd.DataFrame()
    notes: list[str] = []
    if journal.flush(timeout_s=patience_s):
        try:
            parent = client.get_run(session.parent_run_id)
            if status == "KILLED":  # Ctrl+C: 'gradsweep resume' continues these trials
                closed = close_orphans(client, parent, "interrupted by the user", interrupted=True)
            else:
                closed = close_orphans(client, parent, "its trial ended without a final status")
            if closed:
                notes.append(f"{len(closed)} orphaned runs marked FAILED")
            board = leaderboard(client, session.name)
            journal.log_text("parent", render(board, "csv"), "leaderboard.csv")
            journal.log_text("parent", render(board, "markdown"), "leaderboard.md")
            if not board.empty:  # built from MLflow and Optuna, now complete
                reporter.start(
                    session.uri,
                    session.name,
                    session.output / "reports" / session.name,
                    session.storage,
                )
            if config.diagnostics.enabled:
                histories = {
                    journal.run_ids[k]: h
                    for k, h in tracker.history.items()
                    if k in journal.run_ids
                }
                log_pictures(
                    client,
                    board,
                    histories,
                    session.parent_run_id,
                    config.diagnostics.plots_top,
                    config.diagnostics.plots_diverged,
                )
        except Exception as exc:  # MLflow went away between flush and here
            notes.append(f"leaderboard not written: {exc.__class__.__name__}: {exc}")
        finally:  # the parent run ends only after the report's writes
            problem = reporter.wait()
        if problem:
            notes.append(f"report not written: {problem}")
    journal.set_terminated("parent", status)
    spooled = journal.close(close_patience_s=patience_s)
    if spooled:
        notes.append(
            f"MLflow unreachable: {spooled} writes saved to {journal.spool}; "
            f"run 'gradsweep sync' when it is back"
        )
    notes.extend(f"MLflow rejected: {r}" for r in journal.rejected)
    return board, notes


def _open_session(
    config: StudyConfig,
    name: str,
    output: Path,
    uri: str,
    storage: str,
    parent_run_id: str | None = None,
    stores: _Stores | None = None,
) -> _Session:
    client = stores.client if stores else MlflowClient(tracking_uri=uri)
    # A tracking server stores artifacts itself (mlflow-artifacts:/); a local path would be one
    # only this machine can see, not the server's UI.
    remote = uri.startswith(("http://", "https://"))
    artifact_root = None if remote else output / "artifacts"
    experiment_id = get_or_create_experiment(client, config.tracking.experiment, artifact_root)
    if parent_run_id is None:
        parent_run_id = start_parent_run(client, experiment_id, name, config)
        client.log_batch(
            parent_run_id,
            tags=[
                RunTag("gradsweep.output_dir", str(output)),
                RunTag("gradsweep.optuna_storage", redact(storage)),
            ],
        )
    journal = Journal(
        client,
        spool_path(output, name),
        run_ids={"parent": parent_run_id},
        linger_s=JOURNAL_LINGER_S,
    )
    return _Session(
        config,
        name,
        output,
        uri,
        storage,
        client,
        experiment_id,
        parent_run_id,
        journal,
        stores.optuna if stores else None,
    )


def run_study(
    config: StudyConfig,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    study_name: str | None = None,
    progress: bool = False,
    close_patience_s: float = 60.0,
) -> StudyResult:
    """Run ``config``'s search and return its name, MLflow parent run and leaderboard."""
    t0 = time.perf_counter()
    # As `ray.init()` would: RAY_ADDRESS names the cluster (an embedded Ray gets settings that
    # ray.init refuses when it would attach to one).
    address = address or os.environ.get("RAY_ADDRESS") or None
    output, uri, storage = resolve_paths(config, tracking_uri)
    if study_name is not None:
        check_study_name(study_name)
    preflight(uri, storage, address)
    if study_name is not None:
        if study_exists(uri, storage, study_name):
            raise UserError(
                f"--study: {study_name!r} exists already; 'gradsweep resume --study "
                f"{study_name}' continues it, or choose another name"
            )
        name = study_name
    else:  # two runs in the same second must not share a study
        stem = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        name = next(
            n
            for n in (stem, *(f"{stem}-{i}" for i in range(2, 1000)))
            if not study_exists(uri, storage, n)
        )

    # Forked first, while this process runs no Ray, journal or helper thread of this study.
    with ReportProcess() as reporter:
        # Ray's start is mostly waiting on its processes: the data and stores open meanwhile.
        with _no_gc(), ThreadPoolExecutor(1, thread_name_prefix="gradsweep-prepare") as pool:
            prepared = pool.submit(_prepare, config, output, uri, storage)
            try:
                started_ray = connect_ray(address, config)
            except BaseException:
                with contextlib.suppress(Exception):
                    _remove_created(prepared.result().created)
                raise
            try:
                stores = prepared.result()
            except BaseException:
                if started_ray:
                    ray.shutdown()
                raise
        session = _open_session(config, name, output, uri, storage, stores=stores)
        num_samples = config.num_samples
        if config.searcher.name == "grid":  # each distinct configuration once
            num_samples = min(num_samples, grid_size(config))
        board, notes = _run_session(
            session,
            started_ray,
            close_patience_s,
            reporter,
            num_samples=num_samples,
            run_name=name,
            progress=progress,
        )
    if num_samples < config.num_samples:
        notes.insert(0, f"grid: {num_samples} distinct configurations, so {num_samples} trials")
    return _result(session, board, notes, t0)


def resume_study(
    study_name: str,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    progress: bool = False,
    close_patience_s: float = 60.0,
) -> StudyResult:
    """Finish a study whose driver died: see :mod:`search.resume`."""
    check_study_name(study_name)
    t0 = time.perf_counter()
    address = address or os.environ.get("RAY_ADDRESS") or None
    client = existing_store(tracking_uri)
    uri = client.tracking_uri
    if address:
        check_address(address)
    parent = find_parent_run(client, study_name)
    tags = parent.data.tags
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = json.loads(
                Path(client.download_artifacts(parent.info.run_id, "config.json", tmp)).read_text()
            )
        config = StudyConfig.model_validate(raw)
    except Exception as exc:
        raise UserError(f"--study {study_name}: its saved config can't be read ({exc})") from None
    output = Path(tags.get("gradsweep.output_dir", config.output_dir))
    if spool_path(output, study_name).exists():
        raise UserError(
            f"--study {study_name}: MLflow writes of this study are still spooled in "
            f"{spool_path(output, study_name)}; run 'gradsweep sync' first"
        )
    storage = with_driver(
        os.environ.get("GRADSWEEP_OPTUNA_STORAGE")
        or config.optuna_storage
        or f"sqlite:///{output / 'optuna.db'}"
    )
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as exc:
        raise UserError(
            f"--study {study_name}: no Optuna study in {redact(storage)} ({exc.__class__.__name__})"
        ) from None
    plan = plan_resume(client, parent, study, output / "ray")
    remaining = config.num_samples - plan.finished
    with ReportProcess() as reporter:  # forked before Ray and the journal start (run_study)
        started_ray = connect_ray(address, config) if remaining > 0 else False
        client.log_batch(
            parent.info.run_id,
            tags=[RunTag("gradsweep.resumed", time.strftime("%Y-%m-%dT%H:%M:%S"))],
        )
        if parent.info.status != "RUNNING":  # children nest under an active run
            client.update_run(parent.info.run_id, status="RUNNING")
        session = _open_session(config, study_name, output, uri, storage, parent.info.run_id)
        board, notes = _run_session(
            session,
            started_ray,
            close_patience_s,
            reporter,
            resumed_tags=plan.tags,
            num_samples=remaining,
            run_name=f"{study_name}-resume-{time.strftime('%H%M%S')}",
            progress=progress,
            resume=plan.resume,
        )
    notes.insert(
        0,
        f"resumed: {plan.finished} trials already finished, {len(plan.resume)} resumed, "
        f"{max(0, remaining - len(plan.resume))} new",
    )
    return _result(session, board, notes, t0)


def _result(session: _Session, board: pd.DataFrame, notes: list[str], t0: float) -> StudyResult:
    return StudyResult(
        study_name=session.name,
        parent_run_id=session.parent_run_id,
        experiment_id=session.experiment_id,
        tracking_uri=session.uri,
        optuna_storage=session.storage,
        leaderboard=board,
        output_dir=session.output,
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
