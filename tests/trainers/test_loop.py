"""Contract tests for the training loop: determinism, resume, stop, divergence, epoch reports."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch

from trainers import (
    ACTIVATIONS,
    BATCH_NORM_PLACEMENTS,
    INITIALIZERS,
    OPTIMIZERS,
    EpochReport,
    LoopState,
    Splits,
    TrainResult,
    TrainSettings,
    build_mlp,
    load_splits,
    seed_everything,
    train,
)

FAST = TrainSettings(epochs=1, batch_size=64, diagnostics=False)


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits("digits")


def build(data: Splits, activation: str = "relu", **options: Any) -> torch.nn.Module:
    options = {"depth": 2, "width": 16, **options}
    return build_mlp(data.n_features, data.n_classes, activation=activation, **options)


def seeded_run(
    data: Splits, settings: TrainSettings, seed: int = 0, **model: Any
) -> tuple[TrainResult, dict[str, torch.Tensor]]:
    seed_everything(seed)
    net = build(data, **model)
    return train(net, data, settings), net.state_dict()


def assert_same_run(first: TrainResult, second: TrainResult) -> None:
    assert first.outcome == second.outcome
    assert len(first.history) == len(second.history)
    for a, b in zip(first.history, second.history, strict=True):
        assert (a.epoch, a.train_loss, a.val_loss, a.val_accuracy, a.test_accuracy) == (
            b.epoch,
            b.train_loss,
            b.val_loss,
            b.val_accuracy,
            b.test_accuracy,
        )
        assert a.diagnostics == b.diagnostics


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


@pytest.mark.parametrize("batch_norm", BATCH_NORM_PLACEMENTS)
@pytest.mark.parametrize("init", list(INITIALIZERS))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_combination_trains_and_repeats(
    digits: Splits, activation: str, init: str, batch_norm: str
) -> None:
    """Builds, trains one epoch to finite figures, and gives identical results twice."""
    model = {"activation": activation, "init": init, "batch_norm": batch_norm}
    first, weights = seeded_run(digits, FAST, **model)
    second, weights_again = seeded_run(digits, FAST, **model)
    assert first.outcome == "completed"
    report = first.history[-1]
    assert math.isfinite(report.train_loss)
    assert math.isfinite(report.val_loss)
    assert 0.0 <= report.val_accuracy <= 1.0
    assert_same_run(first, second)
    assert_same_weights(weights, weights_again)


@pytest.mark.parametrize(
    "model",
    [
        {"activation": "relu", "batch_norm": "before"},
        {"activation": "rrelu", "dropout": 0.2},  # both draw from the global RNG in training
        {"activation": "selu", "init": "lecun_normal", "dropout": 0.1},
        {"activation": "prelu", "batch_norm": "after"},
    ],
    ids=lambda m: "-".join(map(str, m.values())),
)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_resume_reproduces_the_uninterrupted_run(
    digits: Splits, optimizer: str, model: dict[str, Any]
) -> None:
    """Checkpoint after epoch 2 of 4, resume in a fresh model: epochs 3-4 match to 1e-6."""
    settings = TrainSettings(epochs=4, lr=1e-2, optimizer=optimizer, diagnostics=True)
    saved: dict[str, Any] = {}

    def keep(report: EpochReport, state: LoopState) -> None:
        if report.epoch == 2:
            saved["checkpoint"] = state.checkpoint()

    seed_everything(0)
    full = train(build(digits, **model), digits, settings, keep)
    seed_everything(123)  # a different init: everything must come from the checkpoint
    resumed = train(build(digits, **model), digits, settings, resume=saved["checkpoint"])
    assert [r.epoch for r in resumed.history] == [3, 4]
    for want, got in zip(full.history[2:], resumed.history, strict=True):
        assert got.val_loss == pytest.approx(want.val_loss, rel=1e-6, abs=1e-6)
        assert got.val_accuracy == pytest.approx(want.val_accuracy, abs=1e-6)
        assert got.train_loss == pytest.approx(want.train_loss, rel=1e-6, abs=1e-6)
    assert resumed.best_val_accuracy == full.best_val_accuracy
    assert resumed.outcome == "completed"


def test_checkpoint_is_a_snapshot(digits: Splits) -> None:
    """A checkpoint kept in memory does not follow the live model as training goes on."""
    saved: dict[str, Any] = {}

    def keep(report: EpochReport, state: LoopState) -> None:
        if report.epoch == 1:
            saved["checkpoint"] = state.checkpoint()
            saved["weights"] = {k: v.clone() for k, v in state.model.state_dict().items()}
            saved["moments"] = [
                {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
                for s in state.optimizer.state_dict()["state"].values()
            ]

    train(build(digits), digits, TrainSettings(epochs=3, diagnostics=False), keep)
    checkpoint = saved["checkpoint"]
    assert checkpoint["epoch"] == 1
    assert_same_weights(checkpoint["model"], saved["weights"])
    for got, want in zip(checkpoint["optimizer"]["state"].values(), saved["moments"], strict=True):
        assert_same_weights({k: got[k] for k in want}, want)


def test_on_epoch_stops_training(digits: Splits) -> None:
    seen: list[int] = []

    def stop_at_two(report: EpochReport, state: LoopState) -> str | None:
        seen.append(report.epoch)
        assert state.epoch == report.epoch
        return "plateau" if report.epoch == 2 else None

    result = train(build(digits), digits, TrainSettings(epochs=5, diagnostics=False), stop_at_two)
    assert result.outcome == "stopped"
    assert result.reason == "plateau"
    assert result.epochs_run == 2
    assert seen == [1, 2]
    assert [r.epoch for r in result.history] == [1, 2]


def test_completed_run_reports_every_epoch(digits: Splits) -> None:
    result = train(build(digits), digits, TrainSettings(epochs=3, lr=1e-2, diagnostics=False))
    assert result.outcome == "completed"
    assert result.epochs_run == 3
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.best_val_accuracy == max(r.val_accuracy for r in result.history)
    assert [r.best_val_accuracy for r in result.history] == [
        max(r.val_accuracy for r in result.history[: i + 1]) for i in range(3)
    ]
    assert result.test_accuracy == result.history[-1].test_accuracy
    assert result.history[-1].val_accuracy > 0.5  # it learns: 10 classes, chance is 0.1


def test_nan_config_ends_diverged_naming_the_epoch(digits: Splits) -> None:
    settings = TrainSettings(epochs=5, lr=1e4, optimizer="sgd", diagnostics=True)
    result = train(build(digits), digits, settings)
    assert result.outcome == "diverged"
    match = re.search(r"epoch (\d+)", result.reason)
    assert match is not None, result.reason
    assert int(match.group(1)) == result.epochs_run == result.history[-1].epoch
    assert result.history[-1].diverged
    assert result.history[-1].metrics()["diverged"] == 1.0


def test_train_loss_is_the_mean_over_trained_samples(digits: Splits) -> None:
    """Uniform logits give every sample loss ln(10), also when a 1-sample batch is skipped."""
    n = digits.x_train.shape[0]
    batch_size = next(b for b in range(2, n) if n % b == 1)
    net = build(digits)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
    settings = TrainSettings(
        epochs=1, batch_size=batch_size, lr=0.0, optimizer="sgd", momentum=0.0, diagnostics=False
    )
    result = train(net, digits, settings)
    assert result.history[0].train_loss == pytest.approx(math.log(10), rel=1e-6)


def test_metrics_are_flat_and_include_diagnostics(digits: Splits) -> None:
    result = train(build(digits), digits, TrainSettings(epochs=1, diagnostics=True))
    metrics = result.history[0].metrics()
    for key in (
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "test_accuracy",
        "best_val_accuracy",
        "epoch_seconds",
        "diverged",
    ):
        assert key in metrics
    assert metrics["diverged"] == 0.0
    assert "diag/grad_norm/layer_01" in metrics
    assert "diag/vanishing" in metrics
    assert all(isinstance(v, int | float) for v in metrics.values())


@pytest.mark.parametrize("diagnostics", [False, True])
@pytest.mark.parametrize("per_unit", [True, False])
def test_prelu_slopes_in_every_report(digits: Splits, diagnostics: bool, per_unit: bool) -> None:
    net = build(digits, "prelu", depth=3, alpha=0.25, prelu_per_unit=per_unit)
    result = train(net, digits, TrainSettings(epochs=2, lr=1e-2, diagnostics=diagnostics))
    keys = {f"prelu/slope/layer_0{i}" for i in (1, 2, 3)}
    for report in result.history:
        assert keys <= report.diagnostics.keys()
        assert keys <= report.metrics().keys()
        assert ("diag/vanishing" in report.diagnostics) == diagnostics
    last = result.history[-1].diagnostics
    assert any(last[k] != pytest.approx(0.25, abs=1e-6) for k in keys)  # they were learned
    assert last["prelu/slope/layer_02"] == pytest.approx(net.layer_02.act.weight.mean().item())


@pytest.mark.parametrize("activation", [n for n in ACTIVATIONS if n != "prelu"])
def test_no_slopes_without_prelu(digits: Splits, activation: str) -> None:
    result = train(build(digits, activation), digits, FAST)
    assert not any(k.startswith("prelu/") for k in result.history[0].diagnostics)
