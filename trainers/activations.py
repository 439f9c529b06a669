"""Activation registry: every nonlinearity a study may name, with what its alpha means.

One entry per activation. Config validation, the search space, the initializers' gains and
``gradsweep activations`` all read :data:`ACTIVATIONS`, so adding an activation is one entry here
plus the contract tests that parametrize over this dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

AlphaKind = Literal["none", "scalar", "range"]
#: A resolved alpha: a number, a (lower, upper) pair (rrelu), or None for the default.
AlphaValue = float | tuple[float, float] | None

#: SELU's fixed constants (Klambauer et al. 2017), also PyTorch's.
SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


@dataclass(frozen=True)
class Activation:
    """How to build one activation and what its ``alpha`` means.

    ``build(alpha, width)`` returns a fresh module. ``alpha`` is ``None`` for ``alpha_kind ==
    "none"``, a float for ``"scalar"`` and a ``(lower, upper)`` pair for ``"range"``; ``width`` is
    the layer width (PReLU needs it for one slope per unit). ``family`` decides the ``matched``
    initializer and whether a leaky gain applies; ``search_range`` is the default Optuna range
    for a scalar alpha (``log`` when it spans decades).
    """

    name: str
    build: Callable[..., nn.Module]
    family: Literal["sigmoid", "rectifier", "leaky", "exponential", "selu", "smooth"]
    alpha_kind: AlphaKind = "none"
    alpha_default: float | tuple[float, float] | None = None
    search_range: tuple[float, float, bool] | None = None  # (low, high, log)
    alpha_doc: str = "no alpha"
    closed_form: Callable[[torch.Tensor, Any], torch.Tensor] | None = None

    def leaky_slope(self, alpha: object) -> float:
        """Negative-side slope used by the He gain (0 for non-leaky activations).

        ``alpha=None`` means the literature default, exactly as :func:`build_activation` reads it,
        so the gain matches the slope of the module actually built.
        """
        if alpha is None:
            alpha = self.alpha_default
        if self.family != "leaky" or alpha is None:
            return 0.0
        if isinstance(alpha, tuple | list):
            return (float(alpha[0]) + float(alpha[1])) / 2.0
        return float(alpha)  # type: ignore[arg-type]  # a scalar alpha: validated by spaces


class PReLU(nn.PReLU):
    """PReLU whose slope count is chosen per layer: one shared, or one per unit."""

    def __init__(self, alpha: float, width: int, per_unit: bool = True) -> None:
        super().__init__(num_parameters=width if per_unit else 1, init=alpha)


def _softsign(z: torch.Tensor, _: object) -> torch.Tensor:
    return z / (1 + z.abs())


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation(
            "logistic",
            lambda alpha=None, width=0, **_: nn.Sigmoid(),
            "sigmoid",
            closed_form=lambda z, _: 1 / (1 + torch.exp(-z)),
        ),
        Activation(
            "tanh",
            lambda alpha=None, width=0, **_: nn.Tanh(),
            "sigmoid",
            closed_form=lambda z, _: (
                (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z))
            ),
        ),
        Activation(
            "softsign",
            lambda alpha=None, width=0, **_: nn.Softsign(),
            "sigmoid",
            closed_form=_softsign,
        ),
        Activation(
            "relu",
            lambda alpha=None, width=0, **_: nn.ReLU(),
            "rectifier",
            closed_form=lambda z, _: torch.clamp(z, min=0),
        ),
        Activation(
            "leaky_relu",
            lambda alpha=0.01, width=0, **_: nn.LeakyReLU(negative_slope=float(alpha)),
            "leaky",
            alpha_kind="scalar",
            alpha_default=0.01,
            search_range=(0.01, 0.3, True),
            alpha_doc="negative slope: 0.01 typical, 0.2 'very leaky' did better in the notes",
            closed_form=lambda z, a: torch.where(z > 0, z, float(a) * z),
        ),
        Activation(
            "rrelu",
            lambda alpha=(1 / 8, 1 / 3), width=0, **_: nn.RReLU(float(alpha[0]), float(alpha[1])),
            "leaky",
            alpha_kind="range",
            alpha_default=(1 / 8, 1 / 3),
            alpha_doc="[lower, upper] of the random slope in training; (lower+upper)/2 in eval",
            closed_form=lambda z, a: torch.where(z > 0, z, (float(a[0]) + float(a[1])) / 2 * z),
        ),
        Activation(
            "prelu",
            lambda alpha=0.25, width=1, per_unit=True, **_: PReLU(float(alpha), width, per_unit),
            "leaky",
            alpha_kind="scalar",
            alpha_default=0.25,
            search_range=(0.01, 0.5, True),
            alpha_doc="initial value of the learned slope (one per unit, or shared)",
            closed_form=lambda z, a: torch.where(z > 0, z, float(a) * z),
        ),
        Activation(
            "elu",
            lambda alpha=1.0, width=0, **_: nn.ELU(alpha=float(alpha)),
            "exponential",
            alpha_kind="scalar",
            alpha_default=1.0,
            search_range=(0.1, 2.0, False),
            alpha_doc="saturation value -alpha for z -> -inf; usually 1",
            closed_form=lambda z, a: torch.where(z > 0, z, float(a) * (torch.exp(z) - 1)),
        ),
        Activation(
            "selu",
            lambda alpha=None, width=0, **_: nn.SELU(),
            "selu",
            alpha_doc="none: lambda and alpha are fixed constants",
            closed_form=lambda z, _: (
                SELU_LAMBDA * torch.where(z > 0, z, SELU_ALPHA * (torch.exp(z) - 1))
            ),
        ),
        Activation(
            "gelu",
            lambda alpha=None, width=0, **_: nn.GELU(),
            "smooth",
            closed_form=lambda z, _: 0.5 * z * (1 + torch.erf(z / 2**0.5)),
        ),
        Activation(
            "silu",
            lambda alpha=None, width=0, **_: nn.SiLU(),
            "smooth",
            closed_form=lambda z, _: z / (1 + torch.exp(-z)),
        ),
    ]
}


def build_activation(
    name: str, alpha: object = None, width: int = 1, **options: object
) -> nn.Module:
    """Build activation ``name``; ``alpha=None`` takes the literature default."""
    spec = ACTIVATIONS[name]
    if spec.alpha_kind == "none":
        return spec.build(width=width, **options)
    return spec.build(alpha=spec.alpha_default if alpha is None else alpha, width=width, **options)
