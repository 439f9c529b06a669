"""The Ray Tune function trainable: one trial = resolve the config, build, train, report.

Runs inside a Ray worker. Data are loaded and standardised once, by the driver, and reach every
trial through Ray's object store; torch uses exactly the CPUs the trial was given, and every
epoch goes to Tune with ``tune.report`` (plus a checkpoint when due), from which the driver-side
tracker writes MLflow.
"""

from __future__ import annotations

import functools
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search.checkpoints import CHECKPOINT_FILE, RESUME_KEY, owned_by_user
from search.schema import N_PARAMS, pack
from search.seeds import SeedBook
from spaces import StudyConfig, model_builder, resolve_trial, train_settings
from trainers import EpochReport, LoopState, Splits, seed_everything, train, train_fused


def _save_checkpoint(
    state: LoopState, directory: str, metrics: dict[str, Any], book: dict[str, Any]
) -> None:
    """Atomic write: a reader never sees a half-written checkpoint. The epoch's metrics and the
    seeds' book go with it, so a resumed trial reports what an uninterrupted one would."""
    checkpoint = state.checkpoint()
    checkpoint["metrics"] = metrics
    checkpoint["seed_book"] = book
    tmp = Path(directory) / (CHECKPOINT_FILE + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, Path(directory) / CHECKPOINT_FILE)


def _load(path: Path) -> dict[str, Any]:
    # The checkpoint holds pickled RNG states: only files this user owns are loaded.
    if not owned_by_user(path):
        raise PermissionError(f"refusing to load a checkpoint owned by another user: {path}")
    return torch.load(path, weights_only=False)


def _load_checkpoint(resume_from: str | None) -> dict[str, Any] | None:
    """Ray's checkpoint of this trial (a retry), else the one a resumed study points to."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            return _load(Path(directory) / CHECKPOINT_FILE)
    if resume_from:
        return _load(Path(resume_from) / CHECKPOINT_FILE)
    return None


class HealthWatch:
    """Gradient-health stopping (``diagnostics.stop_*``): the reason to stop, or None.

    The rule counts seeds: the trial stops when a strict majority of the seeds still training
    (more than half; with one seed, that seed) is exploding in an epoch, or has had its first
    layer's gradient norm below ``stop_vanishing_below`` for ``stop_patience`` epochs in a row.
    Fused seeds stop together, so the decision is the configuration's, not one seed's luck.
    """

    def __init__(self, config: StudyConfig) -> None:
        self.below = config.diagnostics.stop_vanishing_below
        self.patience = config.diagnostics.stop_patience
        self.exploding = config.diagnostics.stop_exploding
        self.streak = 0

    def check(self, reports: dict[int, EpochReport]) -> str | None:
        live = [r for r in reports.values() if not r.diverged]
        if not live:
            return None
        epoch, seeds = live[0].epoch, len(live)
        exploding = sum(bool(r.diagnostics.get("diag/exploding")) for r in live)
        if self.exploding and 2 * exploding > seeds:
            return f"exploding gradients in epoch {epoch} ({exploding}/{seeds} seeds)"
        first = [r.diagnostics.get("diag/grad_norm/layer_01") for r in live]
        if self.below is None or any(norm is None for norm in first):
            return None
        below = sum(norm is not None and norm < self.below for norm in first)
        self.streak = self.streak + 1 if 2 * below > seeds else 0
        if self.streak >= self.patience:
            return (
                f"vanishing gradients: first-layer gradient norm < {self.below:g} "
                f"for {self.streak} epochs ({below}/{seeds} seeds)"
            )
        return None


class Reporter:
    """``tune.report`` each epoch, with a checkpoint every ``checkpoint_every`` epochs (unless
    the last one is younger than ``checkpoint_min_seconds``), and always at the trial's last
    epoch: the planned last, or the one after which gradient-health stopping ends it. Tune gets
    the metrics packed (:func:`search.schema.pack`); the checkpoint keeps them whole."""

    def __init__(self, every: int, min_seconds: float, last: int) -> None:
        self.every, self.min_seconds, self.last = every, min_seconds, last
        self.saved_at = time.monotonic()  # a trial's first checkpoint also waits min_seconds

    def due(self, epoch: int, diverged: bool, stopping: bool = False) -> bool:
        if not self.every or diverged:
            return False
        if epoch == self.last or stopping:
            return True
        return epoch % self.every == 0 and time.monotonic() - self.saved_at >= self.min_seconds

    def __call__(
        self,
        metrics: dict[str, Any],
        state: Any,
        epoch: int,
        diverged: bool,
        stopping: bool,
        book: dict[str, Any],
    ) -> None:
        if not self.due(epoch, diverged, stopping):
            tune.report(pack(metrics))
            return
        with tempfile.TemporaryDirectory() as directory:
            _save_checkpoint(state, directory, metrics, book)
            tune.report(pack(metrics), checkpoint=tune.Checkpoint.from_directory(directory))
        self.saved_at = time.monotonic()


@functools.cache
def _freeze_imports() -> None:
    """Once per trial process: move what is alive now (Ray, Ray Tune, torch, the loaders: hundreds
    of thousands of long-lived objects) out of the garbage collector's reach. Otherwise every full
    collection that a trial's allocations trigger scans them all again, a cost paid per trial
    (benchmarks/README.md, the stream benchmark)."""
    gc.collect()
    gc.freeze()


def run_trial(params: dict[str, Any], study: dict[str, Any], data: Splits) -> None:
    """Train one configuration; ``params`` from Optuna, ``study`` the resolved study config.

    ``data``: the splits, loaded and standardised once by the driver and shipped through Ray's
    object store, so a worker neither imports the loaders (scikit-learn) nor needs the data file.

    With ``training.seeds: k > 1`` the k seeds train fused in this one trial
    (:func:`trainers.train_fused`); either way every seed is reported by value
    (:class:`~search.seeds.SeedBook`), and Tune and Optuna see the seeds' mean under its
    divergence policy.
    """
    _freeze_imports()
    config = StudyConfig.model_validate(study)
    spec = resolve_trial(config, params)
    torch.set_num_threads(max(1, int(config.resources.cpu)))
    use_gpu = config.resources.gpu > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    data = data.to(device)
    build = model_builder(config, spec, data.n_features, data.n_classes)
    training = config.training
    settings = train_settings(config, spec)
    health = HealthWatch(config)
    node = {"node_id": ray.get_runtime_context().get_node_id(), "device": device.type}
    resume = _load_checkpoint(params.get(RESUME_KEY))
    last = settings.epochs
    report = Reporter(training.checkpoint_every, training.checkpoint_min_seconds, last)
    if resume is not None and int(resume["epoch"]) >= last:
        # Interrupted after its final checkpoint: nothing left to train, only to report.
        tune.report(pack({**resume.get("metrics", {}), **node}))
        return
    seeds = [training.seed + i for i in range(training.seeds)]
    book = SeedBook(seeds, chance=1.0 / data.n_classes)
    book.restore((resume or {}).get("seed_book"))
    with torch.random.fork_rng(devices=[]):  # counting must not move the seeds' RNG
        size = {N_PARAMS: float(sum(p.numel() for p in build().parameters() if p.requires_grad))}

    def on_epoch(reports: dict[int, EpochReport], state: Any) -> str | None:
        metrics = {**book.record(reports), **node, **size}
        reason = health.check(reports)
        if reason:
            metrics["stop_reason"] = reason
        epoch, diverged = int(metrics["epoch"]), bool(metrics["diverged"])
        report(metrics, state, epoch, diverged, bool(reason), book.state())
        return reason

    if len(seeds) > 1:
        train_fused(build, seeds, data, settings, on_epoch, resume=resume)
        return
    seed_everything(training.seed)
    model = build().to(device)
    train(model, data, settings, lambda r, state: on_epoch({seeds[0]: r}, state), resume=resume)
