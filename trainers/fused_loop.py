"""Training a fused model (:mod:`trainers.fused`): k seeds of one configuration at once.

What stays per seed, so that seed ``s`` trains as :func:`trainers.train` would train it:

- initialisation: each copy is built by the caller's ``build()`` after ``seed_everything(s)``,
  then the copies' parameters are stacked (:func:`~trainers.fused.fuse`);
- shuffle order: one :func:`~trainers.loop.shuffle_generator` per seed, the one ``train`` uses;
- optimizer state: SGD (momentum, weight decay), Adam and AdamW are elementwise, so one optimizer
  over the stacked tensors is k independent optimizers; Adam's step count is shared, which is
  right because every live seed steps together;
- divergence: a seed whose loss goes non-finite is taken out of the fused model (its slices of
  every parameter, buffer and optimizer state are dropped) before the step, so it cannot poison
  the others, and it ends ``"diverged"`` exactly where ``train`` would have stopped it.

One fused optimizer step equals the k separate steps up to float rounding; over many steps the
batched kernels' different summation order lets results drift apart slightly (the tests state
the tolerances). RReLU and dropout draw their random numbers from the global generator per
element in one fused tensor, so they are random per seed but not the same draws as separate runs.
``epoch_seconds`` is the fused epoch's wall time, shared by every seed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainers.datasets import Splits
from trainers.diagnostics import FusedGradientProbe
from trainers.fused import FusedMLP, evaluate_fused, fuse, fused_slopes
from trainers.loop import (
    OPTIMIZERS,
    EpochReport,
    Outcome,
    TrainResult,
    TrainSettings,
    restore_rng_state,
    restore_shuffle,
    rng_state,
    seed_everything,
    shuffle_generator,
)

#: ``on_epoch`` gets the epoch's report of every seed that ran it, keyed by seed, in seed order.
OnFusedEpoch = Callable[[dict[int, EpochReport], "FusedLoopState"], "str | None"]


def _keep_optimizer_state(state: dict[str, Any], index: Sequence[int]) -> dict[str, Any]:
    """An optimizer ``state_dict`` with only copies ``index`` of every per-parameter tensor."""
    rows = torch.tensor(list(index), dtype=torch.long)
    for per_param in state["state"].values():
        for key, value in per_param.items():
            if torch.is_tensor(value) and value.dim() > 0:  # Adam's scalar ``step`` is shared
                per_param[key] = value[rows.to(value.device)].clone()
    return state


@dataclass
class _Seed:
    """One seed's progress inside the fused run."""

    seed: int
    shuffle: torch.Generator
    best_val: float = 0.0
    test_accuracy: float = 0.0
    history: list[EpochReport] = field(default_factory=list)


@dataclass
class FusedLoopState:
    """Live objects for ``on_epoch``: the fused model holds the live ``seeds``, in that order."""

    model: FusedMLP
    optimizer: torch.optim.Optimizer
    epoch: int
    seeds: list[int]
    best_val_accuracy: dict[int, float]
    settings: TrainSettings
    shuffles: dict[int, torch.Generator]
    finished: dict[int, dict[str, Any]]

    def checkpoint(self) -> dict[str, Any]:
        """A plain dict from which :func:`train_fused` resumes bit-for-bit (deep-copied)."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "epoch": self.epoch,
            "seeds": list(self.seeds),
            "best_val_accuracy": dict(self.best_val_accuracy),
            "finished": copy.deepcopy(self.finished),
            "settings": self.settings.__dict__,
            "rng": {
                **rng_state(),
                "shuffle": {s: g.get_state() for s, g in self.shuffles.items()},
            },
        }


def train_fused(
    build: Callable[[], nn.Module],
    seeds: Sequence[int],
    data: Splits,
    settings: TrainSettings,
    on_epoch: OnFusedEpoch | None = None,
    resume: dict[str, Any] | None = None,
) -> list[TrainResult]:
    """Train ``build()`` once per seed, all seeds fused; one :class:`TrainResult` per seed.

    ``build`` is called after ``seed_everything(seed)`` for each seed in turn, on CPU (as the
    trainable builds before ``.to(device)``); the fused model then moves to ``data``'s device.
    ``settings.seed`` is ignored: ``seeds`` decide. ``on_epoch(reports, state)`` gets, each
    epoch, the :class:`EpochReport` of every seed that ran it (a seed that diverged is reported
    once, with ``diverged=True``, then drops out); returning a reason stops every seed.
    ``resume`` is a dict from :meth:`FusedLoopState.checkpoint`.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"train_fused: seeds must be distinct and not empty, got {seeds}")
    copies = []
    for seed in seeds:
        seed_everything(seed)
        copies.append(build())
    device = data.x_train.device
    model = fuse(copies).to(device)
    del copies

    def make_optimizer(params: Any) -> torch.optim.Optimizer:
        return OPTIMIZERS[settings.optimizer](
            params, settings.lr, settings.momentum, settings.weight_decay
        )

    n = data.x_train.shape[0]
    live = [_Seed(s, shuffle_generator(s)) for s in seeds]
    results: dict[int, TrainResult] = {}
    start_epoch = 0
    optimizer = make_optimizer(model.parameters())
    if resume is not None:
        start_epoch = int(resume["epoch"])
        by_seed = {s.seed: s for s in live}
        for seed, info in resume["finished"].items():
            results[int(seed)] = TrainResult(
                info["outcome"],
                info["epochs_run"],
                info["best_val_accuracy"],
                info["test_accuracy"],
                [],
                info["reason"],
            )
        live = [by_seed[int(s)] for s in resume["seeds"]]
        model.keep_([seeds.index(s.seed) for s in live])
        model.load_state_dict(resume["model"])
        optimizer = make_optimizer(model.parameters())
        # A copy: load_state_dict keeps the tensors it is given, and the run would then write
        # into the caller's checkpoint.
        optimizer.load_state_dict(copy.deepcopy(resume["optimizer"]))
        for s in live:
            s.best_val = float(resume["best_val_accuracy"][s.seed])
            restore_shuffle(
                s.shuffle, {"shuffle": resume["rng"]["shuffle"][s.seed]}, start_epoch, n
            )
        restore_rng_state(resume["rng"])

    def drop(out: list[int]) -> torch.optim.Optimizer:
        """Take copies ``out`` (positions in ``live``) out of the model and the optimizer."""
        keep = [i for i in range(len(live)) if i not in out]
        state = _keep_optimizer_state(optimizer.state_dict(), keep)
        model.keep_(keep)
        if probe is not None:
            probe.keep_(keep)
        live[:] = [live[i] for i in keep]
        if not live:
            return optimizer
        fresh = make_optimizer(model.parameters())
        fresh.load_state_dict(state)
        return fresh

    def finish(s: _Seed, outcome: Outcome, epoch: int, reason: str = "") -> None:
        results[s.seed] = TrainResult(
            outcome,
            epoch,
            s.best_val,
            s.test_accuracy,
            s.history,
            reason,
        )

    # Every seed measured in one batched pass; epoch 0 (the initialised nets) on a fresh run.
    probe = FusedGradientProbe(model, data, settings.probe_size) if settings.diagnostics else None
    initial = probe.measure() if probe is not None and resume is None else []

    for epoch in range(start_epoch + 1, settings.epochs + 1):
        if not live:
            break
        t0 = time.perf_counter()
        model.train()
        if probe is not None:
            probe.start_epoch()
        orders = torch.stack([torch.randperm(n, generator=s.shuffle) for s in live]).to(device)
        totals = [0.0] * len(live)
        seen = 0
        step_diverged: list[tuple[_Seed, dict[str, float]]] = []
        for start in range(0, n, settings.batch_size):
            idx = orders[:, start : start + settings.batch_size]
            if idx.shape[1] < 2 and start > 0:
                continue  # batch norm cannot train on a single sample
            logits = model(data.x_train[idx])
            k, b, classes = logits.shape
            losses = (
                F.cross_entropy(
                    logits.reshape(k * b, classes),
                    data.y_train[idx].reshape(k * b),
                    reduction="none",
                )
                .view(k, b)
                .mean(dim=1)
            )
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            values = losses.tolist()
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:  # as train(): no step for a non-finite loss; the others step without it
                step_diverged += [(live[i], fused_slopes(model, i)) for i in bad]
                totals = [t for i, t in enumerate(totals) if i not in bad]
                values = [v for i, v in enumerate(values) if i not in bad]
                orders = orders[[i for i in range(len(live)) if i not in bad]]
                optimizer = drop(bad)
                if not live:
                    break
            optimizer.step()
            totals = [t + v * b for t, v in zip(totals, values, strict=True)]
            seen += b

        reports: dict[int, EpochReport] = {}
        seconds = time.perf_counter() - t0
        for s, slopes in step_diverged:
            reports[s.seed] = EpochReport.nonfinite(epoch, s.best_val, seconds, slopes)
        val_diverged: list[int] = []
        if live:
            val = evaluate_fused(model, data.x_val, data.y_val)
            test = evaluate_fused(model, data.x_test, data.y_test)
            seconds = time.perf_counter() - t0
            measured = probe.measure() if probe is not None else [{} for _ in live]
            for i, s in enumerate(live):
                s.test_accuracy = test[i][1]
                s.best_val = max(s.best_val, val[i][1])
                reports[s.seed] = EpochReport.evaluated(
                    epoch,
                    totals[i] / max(seen, 1),
                    val[i],
                    s.test_accuracy,
                    s.best_val,
                    seconds,
                    {**measured[i], **fused_slopes(model, i)},
                )
                if reports[s.seed].diverged:
                    val_diverged.append(i)
        for s, _ in step_diverged:
            s.history.append(reports[s.seed])
            finish(s, "diverged", epoch, f"non-finite loss in epoch {epoch}")
        for i in val_diverged:
            live[i].history.append(reports[live[i].seed])
            finish(live[i], "diverged", epoch, f"non-finite loss in epoch {epoch}")
        if val_diverged:
            optimizer = drop(val_diverged)
        for s in live:
            s.history.append(reports[s.seed])
        if epoch == start_epoch + 1 and initial:
            for seed, figures in zip(seeds, initial, strict=True):
                if seed in reports:
                    reports[seed].initial = figures
        reports = {seed: reports[seed] for seed in seeds if seed in reports}
        if on_epoch is not None:
            state = FusedLoopState(
                model,
                optimizer,
                epoch,
                [s.seed for s in live],
                {s.seed: s.best_val for s in live},
                settings,
                {s.seed: s.shuffle for s in live},
                {
                    seed: {
                        "outcome": r.outcome,
                        "epochs_run": r.epochs_run,
                        "best_val_accuracy": r.best_val_accuracy,
                        "test_accuracy": r.test_accuracy,
                        "reason": r.reason,
                    }
                    for seed, r in results.items()
                },
            )
            reason = on_epoch(reports, state)
            if reason:
                for s in live:
                    finish(s, "stopped", epoch, reason)
                live.clear()

    for s in live:
        finish(s, "completed", settings.epochs)
    return [results[seed] for seed in seeds]
