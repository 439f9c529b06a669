"""Initializer registry: how a linear layer's weights and bias start.

Each entry is ``init(linear, activation, alpha)``; it sees the activation that follows the layer
so that He can use the leaky gain and ``matched`` can apply the notes' rule. Biases start at zero,
except under ``pytorch_default``, which is ``nn.Linear``'s own reset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from trainers.activations import ACTIVATIONS, Activation

Initializer = Callable[[nn.Linear, Activation | None, object], None]


def _fans(linear: nn.Linear) -> tuple[int, int]:
    fan_out, fan_in = linear.weight.shape
    return fan_in, fan_out


def he_gain(activation: Activation | None, alpha: object) -> float:
    """He et al.'s gain sqrt(2 / (1 + a^2)), a = the leaky slope (0 for a plain rectifier)."""
    slope = activation.leaky_slope(alpha) if activation is not None else 0.0
    return math.sqrt(2.0 / (1.0 + slope**2))


def torch_gain(activation: Activation | None, alpha: object) -> float:
    """``nn.init.calculate_gain`` for the activation (used by ``orthogonal``)."""
    if activation is None:
        return 1.0
    if activation.family == "leaky":
        return nn.init.calculate_gain("leaky_relu", activation.leaky_slope(alpha))
    name = {"logistic": "sigmoid", "tanh": "tanh", "selu": "linear"}.get(activation.name)
    if name is not None:
        return nn.init.calculate_gain(name)  # type: ignore[arg-type]  # one of the three above
    if activation.family in ("rectifier", "exponential", "smooth"):
        return nn.init.calculate_gain("relu")
    return 1.0


def _zero_bias(linear: nn.Linear) -> None:
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def pytorch_default(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """``nn.Linear``'s reset: U(+-1/sqrt(fan_in)) for weight and bias (Glorot's 'standard')."""
    linear.reset_parameters()


def glorot_uniform(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """U(+-sqrt(6 / (fan_in + fan_out))): keeps forward and backward variance (Glorot 2010)."""
    nn.init.xavier_uniform_(linear.weight)
    _zero_bias(linear)


def glorot_normal(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """N(0, 2 / (fan_in + fan_out))."""
    nn.init.xavier_normal_(linear.weight)
    _zero_bias(linear)


def he_normal(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """N(0, gain^2 / fan_in) with the (leaky) rectifier gain (He et al. 2015)."""
    fan_in, _ = _fans(linear)
    nn.init.normal_(linear.weight, 0.0, he_gain(activation, alpha) / math.sqrt(fan_in))
    _zero_bias(linear)


def he_uniform(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """U(+-gain * sqrt(3 / fan_in))."""
    fan_in, _ = _fans(linear)
    bound = he_gain(activation, alpha) * math.sqrt(3.0 / fan_in)
    nn.init.uniform_(linear.weight, -bound, bound)
    _zero_bias(linear)


def lecun_normal(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """N(0, 1 / fan_in): the init SELU's self-normalisation assumes."""
    fan_in, _ = _fans(linear)
    nn.init.normal_(linear.weight, 0.0, 1.0 / math.sqrt(fan_in))
    _zero_bias(linear)


def lecun_uniform(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """U(+-sqrt(3 / fan_in))."""
    fan_in, _ = _fans(linear)
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(linear.weight, -bound, bound)
    _zero_bias(linear)


def orthogonal(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """A (semi-)orthogonal matrix scaled by the activation's gain (Saxe et al. 2014)."""
    nn.init.orthogonal_(linear.weight, gain=torch_gain(activation, alpha))
    _zero_bias(linear)


#: The notes' rule: fan average for the sigmoids, fan_in for rectifiers, LeCun for SELU.
MATCHED_BY_FAMILY: dict[str, Initializer] = {
    "sigmoid": glorot_uniform,
    "rectifier": he_normal,
    "leaky": he_normal,
    "exponential": he_normal,
    "smooth": he_normal,
    "selu": lecun_normal,
}


def matched(linear: nn.Linear, activation: Activation | None, alpha: object) -> None:
    """Glorot for logistic/tanh/softsign, He for the ReLU family and ELU, LeCun for SELU."""
    if activation is None:
        glorot_uniform(linear, activation, alpha)
        return
    MATCHED_BY_FAMILY[activation.family](linear, activation, alpha)


INITIALIZERS: dict[str, Initializer] = {
    "pytorch_default": pytorch_default,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "orthogonal": orthogonal,
    "matched": matched,
}


def concrete_init(name: str, activation: str | None) -> str:
    """The initializer ``name`` applies before ``activation``, with ``matched`` resolved: two
    trials that initialise identically are the same configuration."""
    if name != "matched":
        return name
    if activation is None:
        return glorot_uniform.__name__
    return MATCHED_BY_FAMILY[ACTIVATIONS[activation].family].__name__


def initialize(linear: nn.Linear, name: str, activation: str | None, alpha: object = None) -> None:
    """Initialise ``linear`` with initializer ``name`` for the activation that follows it."""
    INITIALIZERS[name](linear, ACTIVATIONS[activation] if activation else None, alpha)
