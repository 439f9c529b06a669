"""Contract tests for gradient diagnostics: right figures, right flags, and no side effects."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from trainers import (
    ACTIVATIONS,
    BATCH_NORM_PLACEMENTS,
    FLAGS,
    FusedMLP,
    GradientProbe,
    Splits,
    TrainSettings,
    build_mlp,
    fuse,
    load_splits,
    seed_everything,
    summarize,
    train,
)
from trainers.diagnostics import (
    MIN_RATE_LAYERS,
    FusedGradientProbe,
    gradient_rate,
    saturation_fraction,
)

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


def geometric(rate: float, depth: int) -> list[float]:
    """Norms ``rate**(depth - l)`` for l = 1 .. depth: the mean-field picture with chi = rate."""
    return [rate ** (depth - layer) for layer in range(1, depth + 1)]


@pytest.mark.parametrize(
    ("norms", "flags"),
    [
        ([1.0] * 5, {"vanishing": 0.0, "exploding": 0.0}),
        (
            [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
            {"vanishing": 1.0, "exploding": 0.0},
        ),  # shrinks 10x a layer
        (geometric(1.3, 5), {"vanishing": 0.0, "exploding": 1.0}),  # grows 1.3x a layer
        ([2e3, 2e3, 2e3], {"vanishing": 0.0, "exploding": 1.0}),  # a norm above 1e3
        ([1.0, float("inf"), 1.0], {"vanishing": 0.0, "exploding": 1.0}),
        ([1.0, float("nan"), 1.0], {"vanishing": 0.0, "exploding": 1.0}),
    ],
)
def test_summarize_flags(norms: list[float], flags: dict[str, float]) -> None:
    summary = summarize(layer_norms(norms))
    assert summary["diag/grad_ratio_first_last"] == pytest.approx(norms[0] / norms[-1], nan_ok=True)
    for flag, value in flags.items():
        assert summary[f"diag/{flag}"] == value


@pytest.mark.parametrize(
    ("rate", "vanishing", "exploding"),
    [
        (0.14, 1.0, 0.0),
        (0.7, 1.0, 0.0),
        (0.8, 0.0, 0.0),
        (1.0, 0.0, 0.0),
        (1.05, 0.0, 0.0),
        (1.2, 0.0, 1.0),
    ],
)
@pytest.mark.parametrize("depth", [5, 20, 50])
def test_the_rate_means_the_same_at_any_depth(
    rate: float, vanishing: float, exploding: float, depth: int
) -> None:
    """chi**(L - l) norms give chi back and one verdict at depth 5, 20 and 50, while the
    first/last ratio (chi**(L - 1)) spans orders of magnitude between those depths."""
    summary = summarize(layer_norms(geometric(rate, depth)))
    assert summary["diag/grad_rate"] == pytest.approx(rate, rel=1e-9)
    assert summary["diag/grad_ratio_first_last"] == pytest.approx(rate ** (depth - 1))
    assert summary["diag/vanishing"] == vanishing
    assert summary["diag/exploding"] == exploding


def test_one_odd_layer_does_not_move_the_rate() -> None:
    """The first layer 100x off (it sees the raw input) leaves chi and the verdicts alone."""
    norms = geometric(1.0, 20)
    norms[0] = 100.0
    summary = summarize(layer_norms(norms))
    assert summary["diag/grad_rate"] == pytest.approx(1.0)
    assert summary["diag/exploding"] == 0.0
    assert gradient_rate([1e-2, *geometric(0.5, 19)]) == pytest.approx(0.5)


def test_norms_that_underflowed_to_zero_vanish() -> None:
    """A deep logistic net's input-side norms underflow to 0: no log, but chi says it all."""
    norms = [*[0.0] * 30, *geometric(0.15, 20)]
    assert gradient_rate(norms) == 0.0
    assert summarize(layer_norms(norms))["diag/vanishing"] == 1.0
    # A few zeros among many finite layers leave the fitted rate where the finite ones put it.
    assert gradient_rate([0.0, 0.0, *geometric(0.9, 20)]) == pytest.approx(0.9, rel=0.05)
    assert math.isnan(gradient_rate([0.0] * 6))


@pytest.mark.parametrize("depth", [1, 2, MIN_RATE_LAYERS - 1])
def test_too_shallow_for_a_rate(depth: int) -> None:
    """Below MIN_RATE_LAYERS there is no rate: only the norm rules can flag."""
    summary = summarize(layer_norms(geometric(0.1, depth)))
    assert "diag/grad_rate" not in summary
    assert math.isnan(gradient_rate(geometric(0.1, depth)))
    assert summary["diag/vanishing"] == 0.0
    assert summary["diag/exploding"] == 0.0
    assert summarize(layer_norms([float("inf")] * depth))["diag/exploding"] == 1.0
    assert summarize(layer_norms([2e3] * depth))["diag/exploding"] == 1.0


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


# At initialisation (epoch 0), 64 hidden units, a 64-sample probe batch, seeds 0..4: the verdict
# mean-field theory expects for each architecture, the same at depth 5, 20 and 50.
AT_INIT = [
    ("logistic", "pytorch_default", "none", "vanishing"),
    ("relu", "he_normal", "before", "exploding"),  # Yang et al. 2019: BN explodes with depth
    ("relu", "he_normal", "none", None),
    ("elu", "he_normal", "none", None),
    ("selu", "lecun_normal", "none", None),
    ("tanh", "glorot_uniform", "none", None),
]


@pytest.mark.parametrize("depth", [5, 20, 50])
@pytest.mark.parametrize(("activation", "init", "batch_norm", "verdict"), AT_INIT)
def test_flags_at_initialisation(
    digits: Splits, activation: str, init: str, batch_norm: str, verdict: str | None, depth: int
) -> None:
    """A freshly built net, measured before any step, gets its expected verdict at every depth."""
    for seed in range(5):
        seed_everything(seed)
        net = build(digits, activation, depth=depth, width=64, init=init, batch_norm=batch_norm)
        figures = GradientProbe(net, digits, size=64).measure()
        assert math.isfinite(figures["diag/grad_rate"]), (seed, figures["diag/grad_rate"])
        for flag in ("vanishing", "exploding"):
            want = float(flag == verdict)
            assert figures[f"diag/{flag}"] == want, (seed, flag, figures["diag/grad_rate"])


def test_epoch_zero_has_every_figure_but_the_update_ratio(digits: Splits) -> None:
    """A model never stepped (no gradients yet, no ``start_epoch``) is measured as usual."""
    seed_everything(0)
    net = build(digits, "relu", depth=6, batch_norm="before")
    probe = GradientProbe(net, digits, size=64)
    figures = probe.measure()
    for figure in ("grad_norm", "act_std", "act_mean", "dead_frac"):
        assert math.isfinite(figures[f"diag/{figure}/layer_06"])
    assert not any(k.startswith("diag/update_ratio/") for k in figures)
    assert {f"diag/{flag}" for flag in FLAGS} <= figures.keys()
    assert "diag/grad_rate" in figures
    assert all(p.grad is None for p in net.parameters())
    probe.start_epoch()  # then one step: the epoch-1 figures have the update ratio
    torch.optim.SGD(net.parameters(), lr=0.1).zero_grad()
    nn.functional.cross_entropy(net(digits.x_train[:64]), digits.y_train[:64]).backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert probe.measure()["diag/update_ratio/layer_01"] > 0.0


def build_fused(
    data: Splits, seeds: list[int], activation: str, **options: object
) -> tuple[FusedMLP, Callable[[], nn.Module]]:
    """The copies of ``seeds`` fused as ``train_fused`` builds them, and their builder."""

    def make() -> nn.Module:
        return build(data, activation, **options)

    copies = []
    for seed in seeds:
        seed_everything(seed)
        copies.append(make())
    return fuse(copies), make


FUSED_CASES = [
    ("relu", {"init": "he_normal", "batch_norm": "before"}),
    ("prelu", {"init": "he_normal", "batch_norm": "after"}),
    ("tanh", {"init": "glorot_uniform"}),
    ("logistic", {"batch_norm": "before"}),
    ("selu", {"init": "lecun_normal"}),
]


@pytest.mark.parametrize(("activation", "options"), FUSED_CASES)
def test_fused_probe_equals_a_plain_probe_on_each_copy(
    digits: Splits, activation: str, options: dict[str, object]
) -> None:
    """Per copy, the fused probe's figures are a plain probe's on that copy unfused (1e-5 rel).

    Measured after one step, so the update ratio is compared as well.
    """
    fused, make = build_fused(digits, [0, 1, 2], activation, depth=6, **options)
    starts = [fused.state_dict_of(i) for i in range(fused.k)]
    probe = FusedGradientProbe(fused, digits, size=64)
    probe.start_epoch()
    optimizer = torch.optim.SGD(fused.parameters(), lr=0.05)
    logits = fused(digits.x_train[:128])
    k, b, classes = logits.shape
    losses = nn.functional.cross_entropy(
        logits.reshape(k * b, classes), digits.y_train[:128].repeat(k), reduction="none"
    )
    losses.view(k, b).mean(dim=1).sum().backward()
    optimizer.step()
    per_copy = probe.measure()

    assert len(per_copy) == 3
    for i, figures in enumerate(per_copy):
        plain = make()
        plain.load_state_dict(starts[i])
        reference = GradientProbe(plain, digits, size=64)
        reference.start_epoch()
        plain.load_state_dict(fused.state_dict_of(i))
        want = reference.measure()
        assert figures.keys() == want.keys()
        for key, value in want.items():
            if key.startswith("diag/act_mean/"):  # a mean near 0: rounding is absolute
                assert figures[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (i, key)
            else:
                assert figures[key] == pytest.approx(value, rel=1e-5), (i, key)
    # The copies are different nets: their figures differ.
    assert per_copy[0]["diag/grad_norm/layer_01"] != per_copy[1]["diag/grad_norm/layer_01"]


@pytest.mark.parametrize("activation", ["relu", "prelu", "rrelu", "selu"])
def test_fused_measuring_has_no_side_effects(digits: Splits, activation: str) -> None:
    """As for the plain probe: weights, BN buffers, gradients, RNG and mode left as they were,
    also after copies left the fused model (``keep_`` replaces its tensors)."""
    fused, _ = build_fused(digits, [0, 1, 2], activation, batch_norm="before", dropout=0.1)
    probe = FusedGradientProbe(fused, digits)
    probe.start_epoch()
    fused(digits.x_train[:64]).sum().backward()
    fused.keep_([0, 2])
    probe.keep_([0, 2])
    fused.eval()
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in fused.named_parameters()}
    rng = torch.get_rng_state()
    per_copy = probe.measure()
    assert len(per_copy) == 2
    assert per_copy[1]["diag/update_ratio/layer_01"] == 0.0
    assert not fused.training
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in fused.state_dict().items():
        assert torch.equal(value, state[key]), key
    for key, p in fused.named_parameters():
        assert torch.equal(p.grad, grads[key]), key


def test_fused_epoch_zero_and_wrong_kinds_of_model(digits: Splits) -> None:
    """A fresh fused model is measured without ``start_epoch``; each probe takes its own kind."""
    fused, make = build_fused(digits, [0, 1], "elu", depth=5)
    per_copy = FusedGradientProbe(fused, digits, size=64).measure()
    assert [set(f) for f in per_copy] == [set(GradientProbe(make(), digits).measure())] * 2
    assert not any(k.startswith("diag/update_ratio/") for k in per_copy[0])
    assert all(p.grad is None for p in fused.parameters())
    with pytest.raises(TypeError, match="FusedGradientProbe"):
        GradientProbe(fused, digits)
    with pytest.raises(TypeError, match="GradientProbe"):
        FusedGradientProbe(make(), digits)
