"""Contract tests for gradient diagnostics: right figures, right flags, and no side effects."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainers import (
    ACTIVATIONS,
    BATCH_NORM_PLACEMENTS,
    GradientProbe,
    Splits,
    TrainSettings,
    build_mlp,
    load_splits,
    seed_everything,
    summarize,
    train,
)
from trainers.diagnostics import saturation_fraction

NAMES = list(ACTIVATIONS)
SIGMOIDS = [n for n, spec in ACTIVATIONS.items() if spec.family == "sigmoid"]


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits("digits")


def build(data: Splits, activation: str, **options: object) -> nn.Module:
    options = {"depth": 3, "width": 32, **options}
    return build_mlp(data.n_features, data.n_classes, activation=activation, **options)


@pytest.mark.parametrize(
    ("activation", "init", "vanishing"),
    [("logistic", "pytorch_default", 1.0), ("elu", "he_normal", 0.0)],
)
def test_vanishing_flag(digits: Splits, activation: str, init: str, vanishing: float) -> None:
    """20 logistic layers with the default init vanish; ELU with He init does not."""
    seed_everything(0)
    net = build(digits, activation, depth=20, width=64, init=init)
    result = train(net, digits, TrainSettings(epochs=1, diagnostics=True))
    figures = result.history[0].diagnostics
    assert figures["diag/vanishing"] == vanishing
    ratio = figures["diag/grad_norm/layer_01"] / figures["diag/grad_norm/layer_20"]
    assert figures["diag/grad_ratio_first_last"] == pytest.approx(ratio)


@pytest.mark.parametrize("batch_norm", BATCH_NORM_PLACEMENTS)
@pytest.mark.parametrize("activation", NAMES)
def test_gradient_norms_match_an_independent_computation(
    digits: Splits, activation: str, batch_norm: str
) -> None:
    """Logged norms equal a fresh train-mode forward/backward on the probe batch (1e-5 rel)."""
    seed_everything(0)
    net = build(digits, activation, batch_norm=batch_norm)
    train(net, digits, TrainSettings(epochs=1, lr=1e-2, diagnostics=False))  # a trained state
    probe = GradientProbe(net, digits, size=128)
    rng = torch.get_rng_state()  # RReLU draws: the probe must see what a fresh pass sees
    figures = probe.measure()

    twin = copy.deepcopy(net).train()
    torch.set_rng_state(rng)
    nn.functional.cross_entropy(twin(probe.x), probe.y).backward()
    for name, block in twin.named_children():
        if name.startswith("layer_"):
            want = block.linear.weight.grad.norm().item()
            assert figures[f"diag/grad_norm/{name}"] == pytest.approx(want, rel=1e-5)
    assert probe.x.shape[0] == 128


@pytest.mark.parametrize("activation", NAMES)
def test_measuring_has_no_side_effects(digits: Splits, activation: str) -> None:
    """Weights, BN buffers, gradients, the RNG and the train/eval mode are left as they were."""
    net = build(digits, activation, batch_norm="before", dropout=0.1)
    nn.functional.cross_entropy(net(digits.x_train[:64]), digits.y_train[:64]).backward()
    net.eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    rng = torch.get_rng_state()
    GradientProbe(net, digits).measure()
    assert not net.training
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    for key, p in net.named_parameters():
        assert torch.equal(p.grad, grads[key]), key


@pytest.mark.parametrize("activation", NAMES)
def test_probing_does_not_change_training(digits: Splits, activation: str) -> None:
    """Diagnostics on or off: the same weights and losses under the same seed."""
    settings = TrainSettings(epochs=2, lr=1e-2, diagnostics=False)
    runs = []
    for diagnostics in (False, True):
        seed_everything(0)
        net = build(digits, activation, batch_norm="before", dropout=0.1)
        result = train(
            net, digits, TrainSettings(**{**settings.__dict__, "diagnostics": diagnostics})
        )
        runs.append((result, net.state_dict()))
    (off, weights_off), (on, weights_on) = runs
    assert [(r.train_loss, r.val_loss, r.val_accuracy) for r in off.history] == [
        (r.train_loss, r.val_loss, r.val_accuracy) for r in on.history
    ]
    for key, value in weights_off.items():
        assert torch.equal(value, weights_on[key]), key
    assert "diag/grad_norm/layer_01" in on.history[-1].diagnostics


def test_dead_units_of_a_relu_layer(digits: Splits) -> None:
    """A bias of -100 keeps every pre-activation negative: all units dead, the run flagged dying."""
    seed_everything(0)
    net = build(digits, "relu")
    figures = GradientProbe(net, digits).measure()
    assert figures["diag/dead_frac/layer_02"] < 0.5
    assert figures["diag/dying"] == 0.0
    with torch.no_grad():
        net.layer_02.linear.bias.fill_(-100.0)
    figures = GradientProbe(net, digits).measure()
    assert figures["diag/dead_frac/layer_02"] == pytest.approx(1.0)
    assert figures["diag/dead_frac/layer_01"] < 0.5
    assert figures["diag/dying"] == 1.0


@pytest.mark.parametrize("activation", SIGMOIDS)
def test_saturation_of_a_sigmoid_layer(digits: Splits, activation: str) -> None:
    """Huge weights push a sigmoid-family layer onto its asymptotes."""
    seed_everything(0)
    net = build(digits, activation)
    figures = GradientProbe(net, digits).measure()
    assert figures["diag/saturation/layer_01"] < 0.5
    assert figures["diag/saturated"] == 0.0
    with torch.no_grad():
        net.layer_01.linear.weight.mul_(1e4)
    figures = GradientProbe(net, digits).measure()
    assert figures["diag/saturation/layer_01"] > 0.95
    assert figures["diag/saturated"] == 1.0


@pytest.mark.parametrize("activation", NAMES)
def test_each_layer_reports_saturation_or_dead_units(digits: Splits, activation: str) -> None:
    """Sigmoid-family layers report saturation, all others dead units; every figure is finite."""
    figures = GradientProbe(build(digits, activation), digits).measure()
    kind = "saturation" if activation in SIGMOIDS else "dead_frac"
    other = "dead_frac" if activation in SIGMOIDS else "saturation"
    for layer in ("layer_01", "layer_02", "layer_03"):
        assert 0.0 <= figures[f"diag/{kind}/{layer}"] <= 1.0
        assert f"diag/{other}/{layer}" not in figures
        for figure in ("grad_norm", "act_mean", "act_std"):
            assert math.isfinite(figures[f"diag/{figure}/{layer}"])
    for flag in ("vanishing", "exploding", "dying", "saturated"):
        assert figures[f"diag/{flag}"] in (0.0, 1.0)


def test_update_ratio_after_an_epoch(digits: Splits) -> None:
    """The probe remembers the weights at the epoch's start; the ratio is ||dW|| / ||W0||."""
    net = build(digits, "relu")
    probe = GradientProbe(net, digits)
    probe.start_epoch()
    w0 = net.layer_01.linear.weight.detach().clone()
    with torch.no_grad():
        net.layer_01.linear.weight.mul_(1.1)
    figures = probe.measure()
    assert figures["diag/update_ratio/layer_01"] == pytest.approx(0.1, rel=1e-4)
    assert figures["diag/update_ratio/layer_02"] == 0.0
    assert torch.equal(net.layer_01.linear.weight, w0 * 1.1)


@pytest.mark.parametrize(
    ("module", "outputs"),
    [
        (nn.Sigmoid(), [0.005, 0.995, 0.5, 0.98]),
        (nn.Tanh(), [-0.995, 0.995, 0.0, 0.98]),
        (nn.Softsign(), [-0.995, 0.995, 0.0, -0.98]),
    ],
)
def test_saturation_fraction_counts_outputs_near_an_asymptote(
    module: nn.Module, outputs: list[float]
) -> None:
    """Within 0.01 of an asymptote counts (the first two of each case), 0.02 away does not."""
    assert saturation_fraction(module, torch.tensor(outputs)) == pytest.approx(0.5)


def test_saturation_fraction_is_none_for_non_saturating_modules() -> None:
    assert saturation_fraction(nn.ReLU(), torch.ones(3)) is None


def layer_norms(norms: list[float]) -> dict[str, float]:
    return {f"diag/grad_norm/layer_{i:02d}": v for i, v in enumerate(norms, start=1)}


@pytest.mark.parametrize(
    ("norms", "flags"),
    [
        ([1.0, 1.0, 1.0], {"vanishing": 0.0, "exploding": 0.0}),
        ([1e-4, 1e-2, 1.0], {"vanishing": 1.0, "exploding": 0.0}),
        ([1.0, 1.0, 1e-3], {"vanishing": 0.0, "exploding": 1.0}),  # ratio above 1 / 1e-2
        ([2e3, 2e3, 2e3], {"vanishing": 0.0, "exploding": 1.0}),  # a norm above 1e3
        ([1.0, float("inf"), 1.0], {"vanishing": 0.0, "exploding": 1.0}),
    ],
)
def test_summarize_flags(norms: list[float], flags: dict[str, float]) -> None:
    summary = summarize(layer_norms(norms))
    assert summary["diag/grad_ratio_first_last"] == pytest.approx(norms[0] / norms[-1])
    for flag, value in flags.items():
        assert summary[f"diag/{flag}"] == value


def test_summarize_orders_layers_by_depth() -> None:
    """layer_10 comes after layer_09 (zero-padded names), whatever the dict order."""
    metrics = dict(reversed(list(layer_norms([1e-3] + [1.0] * 9).items())))
    assert summarize(metrics)["diag/grad_ratio_first_last"] == pytest.approx(1e-3)


def test_summarize_dying_and_saturated() -> None:
    metrics = {
        **layer_norms([1.0, 1.0]),
        "diag/dead_frac/layer_01": 0.1,
        "diag/dead_frac/layer_02": 0.6,
    }
    assert summarize(metrics)["diag/dying"] == 1.0
    assert summarize(metrics)["diag/saturated"] == 0.0
    metrics = {**layer_norms([1.0, 1.0]), "diag/saturation/layer_01": 0.4}
    assert summarize(metrics)["diag/saturated"] == 0.0
    assert summarize({}) == {}
