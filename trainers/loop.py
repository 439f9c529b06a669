"""The training loop: one configuration, in-memory tensors, one report per epoch.

Read it top to bottom: seed, optimizer, then for each epoch shuffle, step through mini-batches by
slicing the tensors (no per-sample DataLoader), evaluate, and hand an :class:`EpochReport` to the
caller's ``on_epoch`` callback. The loop knows nothing of Ray, Optuna or MLflow: whoever calls it
decides where reports go and may stop it by returning a reason from ``on_epoch``.

The shuffle order comes from a generator of its own, seeded from ``settings.seed`` (see
:func:`shuffle_generator`), not from the global RNG: the order of seed ``s`` is then the same
whatever else draws random numbers (RReLU, dropout, a fused run of several seeds, the device), and
a fused run (:mod:`trainers.fused`) can shuffle each seed exactly as :func:`train` does.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from trainers.datasets import Splits
from trainers.diagnostics import GradientProbe
from trainers.model import learned_slopes

Outcome = Literal["completed", "diverged", "stopped"]
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, momentum, weight_decay: torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay
    ),
    "adam": lambda params, lr, momentum, weight_decay: torch.optim.Adam(
        params, lr=lr, weight_decay=weight_decay
    ),
    "adamw": lambda params, lr, momentum, weight_decay: torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay
    ),
}


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs besides the model and the data."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    diagnostics: bool = True
    probe_size: int = 64


@dataclass
class EpochReport:
    """What one epoch produced. ``diagnostics`` holds per-layer gradient-flow figures after the
    epoch; ``initial`` the same figures measured before the first update (epoch 0), on the first
    epoch of a run that did not resume from a checkpoint, else empty."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    test_accuracy: float
    best_val_accuracy: float
    epoch_seconds: float
    diverged: bool = False
    diagnostics: dict[str, float] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)

    @classmethod
    def nonfinite(
        cls, epoch: int, best_val: float, seconds: float, diagnostics: dict[str, float]
    ) -> EpochReport:
        """An epoch whose training loss went non-finite: it has no losses or accuracies."""
        return cls(epoch, math.nan, math.nan, 0.0, 0.0, best_val, seconds, True, diagnostics)

    @classmethod
    def evaluated(
        cls,
        epoch: int,
        train_loss: float,
        val: tuple[float, float],
        test_accuracy: float,
        best_val: float,
        seconds: float,
        diagnostics: dict[str, float],
    ) -> EpochReport:
        """An epoch that trained and was evaluated (``val`` = loss, accuracy); diverged when
        the validation loss is not finite."""
        val_loss, val_accuracy = val
        diverged = not math.isfinite(val_loss)
        return cls(
            epoch,
            train_loss,
            val_loss,
            val_accuracy,
            test_accuracy,
            best_val,
            seconds,
            diverged,
            diagnostics,
        )

    def metrics(self) -> dict[str, float]:
        """Flat metric dict, diagnostics included (``diag/...`` keys)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("diagnostics", "initial")}
        out["diverged"] = float(self.diverged)
        return {**out, **self.diagnostics}


@dataclass
class TrainResult:
    """How training ended and the figures a leaderboard needs."""

    outcome: Outcome
    epochs_run: int
    best_val_accuracy: float
    test_accuracy: float
    history: list[EpochReport]
    reason: str = ""


#: Mixed into the shuffle seed so the shuffle stream differs from the one that initialised the
#: weights (``seed_everything`` seeds the global generator with the same ``seed``).
SHUFFLE_STREAM = 0x5EED_54FF_1E


def shuffle_generator(seed: int) -> torch.Generator:
    """The CPU generator whose ``randperm`` gives :func:`train`'s shuffle order for ``seed``."""
    entropy = np.random.SeedSequence([seed % 2**64, SHUFFLE_STREAM])
    return torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0]))


def restore_shuffle(
    generator: torch.Generator, rng: dict[str, Any], epochs_done: int, n: int
) -> None:
    """Put ``generator`` where it was after ``epochs_done`` epochs of ``n`` samples.

    From the checkpoint's ``rng["shuffle"]`` when it has one; a checkpoint written before the
    shuffle had its own generator has none, and the state is then replayed: one ``randperm(n)``
    per epoch is all that generator ever draws.
    """
    state = rng.get("shuffle")
    if state is not None:
        generator.set_state(state)
        return
    for _ in range(epochs_done):
        torch.randperm(n, generator=generator)


@dataclass
class LoopState:
    """Live objects the ``on_epoch`` callback may use, e.g. to write a checkpoint.

    ``shuffle`` is the loop's shuffle generator (see :func:`shuffle_generator`).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int
    best_val_accuracy: float
    settings: TrainSettings
    shuffle: torch.Generator | None = None

    def checkpoint(self) -> dict[str, Any]:
        """A plain dict (nanoGPT style) from which :func:`train` resumes bit-for-bit.

        A deep copy: ``state_dict()`` shares storage with the live parameters and optimizer
        moments, so a checkpoint kept in memory would otherwise drift as training goes on.
        """
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch,
                "best_val_accuracy": self.best_val_accuracy,
                "settings": self.settings.__dict__,
                "rng": {
                    **rng_state(),
                    **({"shuffle": self.shuffle.get_state()} if self.shuffle is not None else {}),
                },
            }
        )


OnEpoch = Callable[[EpochReport, LoopState], "str | None"]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (BN uses running stats)."""
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


def rng_state() -> dict[str, Any]:
    """The global generators a checkpoint must carry (torch, numpy, python; CUDA on a GPU, where
    dropout and RReLU draw from it)."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python so a configuration trains identically twice."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train(
    model: nn.Module,
    data: Splits,
    settings: TrainSettings,
    on_epoch: OnEpoch | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data``; ``resume`` is a dict from :meth:`LoopState.checkpoint`.

    Mini-batch order: ``randperm`` of :func:`shuffle_generator` ``(settings.seed)``, one per epoch.
    """
    optimizer = OPTIMIZERS[settings.optimizer](
        model.parameters(), settings.lr, settings.momentum, settings.weight_decay
    )
    n = data.x_train.shape[0]
    shuffle = shuffle_generator(settings.seed)
    start_epoch, best_val = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch, best_val = int(resume["epoch"]), float(resume["best_val_accuracy"])
        restore_rng_state(resume["rng"])
        restore_shuffle(shuffle, resume["rng"], start_epoch, n)
    probe = GradientProbe(model, data, settings.probe_size) if settings.diagnostics else None
    # Epoch 0: the initialised net, where Glorot & Bengio's and He et al.'s analyses live.
    initial = probe.measure() if probe is not None and resume is None else {}
    history: list[EpochReport] = []
    test_accuracy = 0.0

    for epoch in range(start_epoch + 1, settings.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        if probe is not None:
            probe.start_epoch()
        order = torch.randperm(n, generator=shuffle).to(data.x_train.device)
        total, seen, diverged = 0.0, 0, False
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if idx.numel() < 2 and start > 0:
                continue  # batch norm cannot train on a single sample
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            value = loss.item()
            if not math.isfinite(value):
                diverged = True
                break
            optimizer.step()
            total += value * idx.numel()
            seen += idx.numel()

        if diverged:
            seconds = time.perf_counter() - t0
            report = EpochReport.nonfinite(epoch, best_val, seconds, learned_slopes(model))
        else:
            val = evaluate(model, data.x_val, data.y_val)
            _, test_accuracy = evaluate(model, data.x_test, data.y_test)
            best_val = max(best_val, val[1])
            seconds = time.perf_counter() - t0
            diagnostics = probe.measure() if probe is not None and math.isfinite(val[0]) else {}
            diagnostics.update(learned_slopes(model))
            # Mean over the samples trained on: a skipped single-sample batch is not counted.
            train_loss = total / max(seen, 1)
            report = EpochReport.evaluated(
                epoch, train_loss, val, test_accuracy, best_val, seconds, diagnostics
            )
        if epoch == start_epoch + 1:
            report.initial = initial
        history.append(report)
        state = LoopState(model, optimizer, epoch, best_val, settings, shuffle)
        reason = on_epoch(report, state) if on_epoch is not None else None
        if report.diverged:
            return TrainResult(
                "diverged",
                epoch,
                best_val,
                test_accuracy,
                history,
                f"non-finite loss in epoch {epoch}",
            )
        if reason:
            return TrainResult("stopped", epoch, best_val, test_accuracy, history, reason)

    return TrainResult("completed", settings.epochs, best_val, test_accuracy, history)
