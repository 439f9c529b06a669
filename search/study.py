"""Run a whole study: Ray Tune schedules, Optuna chooses, MLflow records.

:func:`run_study` checks everything a user can get wrong *before* it creates anything (data set,
tracking URI, cluster address), so bad input never leaves a half-made run behind.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
import pandas as pd
import ray
from mlflow import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.errors import UserError
from search.leaderboard import leaderboard, render
from search.plots import log_pictures
from search.progress import ProgressCallback
from search.searcher import HonestOptunaSearch
from search.tracking import (
    MlflowTracker,
    RunWriter,
    check_tracking_uri,
    default_tracking_uri,
    get_or_create_experiment,
    start_parent_run,
)
from search.trainable import run_trial
from spaces import StudyConfig, define_space, enqueued_points, make_sampler
from trainers import DataError, load_splits

log = logging.getLogger(__name__)
# Tune's new console output prints tables even at verbose=0; gradsweep shows its own progress.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
METRIC, MODE = "best_val_accuracy", "max"


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
    failed_writes: list[str] = field(default_factory=list)


def resolve_paths(config: StudyConfig, tracking_uri: str | None) -> tuple[Path, str, str]:
    """(absolute output dir, tracking URI, Optuna storage URL), from flags, env, config, defaults."""
    output = Path(config.output_dir).expanduser().resolve()
    uri = tracking_uri or os.environ.get("GRADSWEEP_TRACKING_URI") or config.tracking.uri
    uri = uri or default_tracking_uri(output)
    storage = os.environ.get("GRADSWEEP_OPTUNA_STORAGE") or config.optuna_storage
    storage = storage or f"sqlite:///{output / 'optuna.db'}"
    return output, uri, storage


def check_address(address: str) -> None:
    """Fail fast when ``address`` names a Ray cluster that isn't there."""
    if address == "auto":
        if not os.environ.get("RAY_ADDRESS") and not Path("/tmp/ray/ray_current_cluster").exists():
            raise UserError("--address auto: no running Ray cluster found on this machine")
        return
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
        raise UserError(f"--address: no Ray cluster reachable at {parsed.hostname}:{port} ({exc.strerror or exc})") from None


def check_storage(url: str) -> None:
    """Fail fast on an Optuna storage URL SQLAlchemy cannot use."""
    if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql")):
        raise UserError(
            f"optuna_storage: unsupported {url!r}; use sqlite:///PATH or postgresql://..."
        )


def make_scheduler(config: StudyConfig) -> TrialScheduler:
    """FIFO, or ASHA over epochs with the config's grace period and reduction factor."""
    if config.scheduler.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=config.training.epochs,
            grace_period=min(config.scheduler.grace_period, config.training.epochs),
            reduction_factor=config.scheduler.reduction_factor,
        )
    return FIFOScheduler()


def preflight(config: StudyConfig, tracking_uri: str, storage: str, address: str | None) -> None:
    """Everything that can be checked without creating anything."""
    try:
        load_splits(
            config.data.name,
            config.data.options,
            config.data.val_fraction,
            config.data.test_fraction,
            config.data.split_seed,
        )
    except DataError as exc:
        raise UserError(str(exc)) from None
    check_tracking_uri(tracking_uri)
    check_storage(storage)
    if address:
        check_address(address)
    if config.searcher.name == "grid":
        from spaces import grid_space

        size = 1
        for values in grid_space(config).values():
            size *= len(values)
        if config.num_samples > size:
            log.info("grid has %d points; num_samples %d repeats some", size, config.num_samples)


def connect_ray(address: str | None, config: StudyConfig) -> bool:
    """Attach to ``address`` or start an embedded local Ray. Returns True if we started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
            return True
        ray.init(include_dashboard=False, **kwargs)
        return True
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"--address: cannot attach to Ray at {address or 'local'}: {exc}") from None


def run_study(
    config: StudyConfig,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    study_name: str | None = None,
    progress: bool = False,
) -> StudyResult:
    """Run ``config``'s search and return its name, MLflow parent run and leaderboard."""
    t0 = time.perf_counter()
    output, uri, storage = resolve_paths(config, tracking_uri)
    preflight(config, uri, storage, address)
    name = study_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    output.mkdir(parents=True, exist_ok=True)
    started_ray = connect_ray(address, config)
    client = MlflowClient(tracking_uri=uri)
    # A tracking server stores artifacts itself (mlflow-artifacts:/); a local path would be one
    # only this machine can see, not the server's UI.
    remote = uri.startswith(("http://", "https://"))
    artifact_root = None if remote else output / "artifacts"
    experiment_id = get_or_create_experiment(client, config.tracking.experiment, artifact_root)
    parent_run_id = start_parent_run(client, experiment_id, name, config)
    writer = RunWriter(client)
    tracker = MlflowTracker(writer, experiment_id, parent_run_id, name, config)
    status = "FAILED"
    try:
        searcher = HonestOptunaSearch(
            space=define_space(config),
            metric=METRIC,
            mode=MODE,
            sampler=make_sampler(config),
            points_to_evaluate=enqueued_points(config) or None,
            study_name=name,
            storage=optuna.storages.RDBStorage(storage),
            epochs=config.training.epochs,
        )
        callbacks: list[tune.Callback] = [tracker]
        if progress:
            callbacks.append(ProgressCallback(config.num_samples, name))
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, study=config.model_dump(mode="json")),
            {"cpu": config.resources.cpu, "gpu": config.resources.gpu},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=make_scheduler(config),
                metric=METRIC,
                mode=MODE,
                num_samples=config.num_samples,
                max_concurrent_trials=config.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(output / "ray"),
                callbacks=callbacks,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
                # num_to_keep would force an experiment snapshot per checkpoint: O(trials) each time.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )
        tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        writer.flush()
        board = leaderboard(client, name)
        client.log_text(parent_run_id, render(board, "csv"), "leaderboard.csv")
        client.log_text(parent_run_id, render(board, "markdown"), "leaderboard.md")
        if config.diagnostics.enabled:
            log_pictures(client, board, tracker.history, parent_run_id,
                         config.diagnostics.plots_top, config.diagnostics.plots_diverged)
        writer.close()
        client.set_terminated(parent_run_id, status=status)
        if started_ray:
            ray.shutdown()
    return StudyResult(
        study_name=name,
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        optuna_storage=storage,
        leaderboard=board,
        output_dir=output,
        seconds=time.perf_counter() - t0,
        failed_writes=list(writer.failed),
    )
