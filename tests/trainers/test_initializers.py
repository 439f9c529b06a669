"""Contract tests for the initializer registry: every entry draws the scale its formula promises.

The expected scales are written out here from the papers' formulas (see science.md), not read
from ``trainers.initializers``, so a wrong gain or a swapped fan shows up as a failing case.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainers import ACTIVATIONS, INITIALIZERS, initialize

SQRT2 = math.sqrt(2.0)
#: Shapes as (fan_in, fan_out): the square case, and a non-square one that tells fan_in from
#: fan_out and from their average.
SQUARE, WIDE = (512, 512), (256, 1024)
#: Every activation at its default alpha, non-default alphas for the leaky ones, and ``None``
#: (the output head, which no activation follows).
ACTIVATION_CASES: list[tuple[str | None, object]] = [
    *((name, None) for name in ACTIVATIONS),
    ("leaky_relu", 0.2),
    ("rrelu", (0.1, 0.3)),
    ("prelu", 0.05),
    (None, None),
]
#: ``nn.init.calculate_gain`` per activation family, as ``orthogonal`` should use it; tanh is the
#: one sigmoid with its own gain, SELU uses "linear" as PyTorch's docs advise.
TORCH_GAIN_BY_FAMILY = {"sigmoid": 1.0, "rectifier": SQRT2, "exponential": SQRT2, "smooth": SQRT2}
TORCH_GAIN_BY_NAME = {"tanh": 5.0 / 3.0, "selu": 1.0}
#: The notes' rule that ``matched`` follows.
MATCHED_BY_FAMILY = {"sigmoid": "glorot_uniform", "selu": "lecun_normal"}


def slope(activation: str | None, alpha: object) -> float:
    """Negative-side slope of the activation actually built (the default when alpha is None)."""
    if activation is None or ACTIVATIONS[activation].family != "leaky":
        return 0.0
    value = ACTIVATIONS[activation].alpha_default if alpha is None else alpha
    return sum(value) / 2 if isinstance(value, tuple) else float(value)


def he_gain(activation: str | None, alpha: object) -> float:
    return math.sqrt(2.0 / (1.0 + slope(activation, alpha) ** 2))


def torch_gain(activation: str | None, alpha: object) -> float:
    if activation is None:
        return 1.0
    family = ACTIVATIONS[activation].family
    if family == "leaky":
        return he_gain(activation, alpha)
    return TORCH_GAIN_BY_NAME.get(activation, TORCH_GAIN_BY_FAMILY.get(family, 1.0))


def expected(
    init: str, activation: str | None, alpha: object, fan_in: int, fan_out: int
) -> tuple[str, float]:
    """(distribution, scale): the bound for ``"uniform"``, the std for ``"normal"``."""
    if init == "matched":
        family = "sigmoid" if activation is None else ACTIVATIONS[activation].family
        return expected(
            MATCHED_BY_FAMILY.get(family, "he_normal"), activation, alpha, fan_in, fan_out
        )
    formulas = {
        "pytorch_default": ("uniform", 1.0 / math.sqrt(fan_in)),
        "glorot_uniform": ("uniform", math.sqrt(6.0 / (fan_in + fan_out))),
        "glorot_normal": ("normal", math.sqrt(2.0 / (fan_in + fan_out))),
        "he_uniform": ("uniform", he_gain(activation, alpha) * math.sqrt(3.0 / fan_in)),
        "he_normal": ("normal", he_gain(activation, alpha) / math.sqrt(fan_in)),
        "lecun_normal": ("normal", 1.0 / math.sqrt(fan_in)),
        "lecun_uniform": ("uniform", math.sqrt(3.0 / fan_in)),
        # A (semi-)orthogonal matrix has sum of squares min(fan_in, fan_out) over its
        # fan_in * fan_out entries: std = gain / sqrt(max(fan_in, fan_out)).
        "orthogonal": ("normal", torch_gain(activation, alpha) / math.sqrt(max(fan_in, fan_out))),
    }
    assert init in formulas, f"write the expected formula of initializer {init!r} in this test"
    return formulas[init]


def initialized(
    init: str, activation: str | None, alpha: object, shape: tuple[int, int]
) -> nn.Linear:
    linear = nn.Linear(*shape)
    initialize(linear, init, activation, alpha)
    return linear


def scale_cases() -> list[tuple[str | None, object, tuple[int, int]]]:
    """Every activation case on 512x512; one activation per family (and none) on the non-square."""
    square = [(act, alpha, SQUARE) for act, alpha in ACTIVATION_CASES]
    one_per_family = {spec.family: name for name, spec in reversed(ACTIVATIONS.items())}
    return square + [(act, None, WIDE) for act in [*sorted(one_per_family.values()), "tanh", None]]


@pytest.mark.parametrize(("activation", "alpha", "shape"), scale_cases(), ids=str)
@pytest.mark.parametrize("init", list(INITIALIZERS))
def test_weight_scale_matches_formula(
    init: str, activation: str | None, alpha: object, shape: tuple[int, int]
) -> None:
    """Empirical std (and a uniform's max |w|) within 2% of the formula."""
    fan_in, fan_out = shape
    weight = initialized(init, activation, alpha, shape).weight.detach().double()
    kind, scale = expected(init, activation, alpha, fan_in, fan_out)
    std = scale / math.sqrt(3.0) if kind == "uniform" else scale
    assert weight.std().item() == pytest.approx(std, rel=0.02)
    assert abs(weight.mean().item()) < 0.02 * std
    if kind == "uniform":
        largest = weight.abs().max().item()
        assert largest <= scale * (1 + 1e-6)
        assert largest == pytest.approx(scale, rel=0.02)


@pytest.mark.parametrize(("activation", "alpha"), ACTIVATION_CASES, ids=str)
@pytest.mark.parametrize("init", list(INITIALIZERS))
def test_bias_zero_except_pytorch_default(init: str, activation: str | None, alpha: object) -> None:
    bias = initialized(init, activation, alpha, (64, 256)).bias.detach()
    if init == "pytorch_default":
        bound = 1.0 / math.sqrt(64)
        assert bias.abs().max().item() <= bound
        assert bias.abs().max().item() > 0.9 * bound
    else:
        assert torch.count_nonzero(bias) == 0


@pytest.mark.parametrize("init", list(INITIALIZERS))
def test_same_seed_same_weights(init: str) -> None:
    torch.manual_seed(7)
    first = initialized(init, "relu", None, (64, 32)).weight.detach().clone()
    torch.manual_seed(7)
    second = initialized(init, "relu", None, (64, 32)).weight.detach()
    assert torch.equal(first, second)


@pytest.mark.parametrize("init", ["he_normal", "he_uniform"])
def test_he_uses_the_leaky_gain(init: str) -> None:
    """leaky_relu with alpha 0.2: gain sqrt(2 / (1 + 0.2^2)), not ReLU's sqrt(2)."""
    weight = initialized(init, "leaky_relu", 0.2, (512, 512)).weight.detach().double()
    std = math.sqrt(2.0 / 1.04) / math.sqrt(512)
    assert weight.std().item() == pytest.approx(std, rel=0.02)
    assert weight.std().item() < 0.99 * SQRT2 / math.sqrt(512)
