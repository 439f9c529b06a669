"""The MLP: depth hidden blocks of Linear, optional batch norm, activation, optional dropout.

Each hidden block is an ``nn.Sequential`` whose module order *is* its execution order, so batch
norm placement can be read (and tested) from the model itself, and diagnostics can find every
hidden layer by name (``layer_01`` ... ``layer_NN``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, cast, get_args

from torch import nn

from trainers.activations import ACTIVATIONS, build_activation
from trainers.initializers import INITIALIZERS, initialize

#: Where batch norm goes in a hidden block (see :func:`build_mlp`); configs are checked against it.
BatchNorm = Literal["none", "before", "after"]
BATCH_NORM_PLACEMENTS: tuple[BatchNorm, ...] = get_args(BatchNorm)


class MLP(nn.Sequential):
    """``layer_01 .. layer_NN`` hidden blocks then a linear ``head`` producing class logits."""

    @property
    def hidden(self) -> list[nn.Sequential]:
        """The hidden blocks, input side first."""
        return [
            cast(nn.Sequential, m) for name, m in self.named_children() if name.startswith("layer_")
        ]


def learned_slopes(model: nn.Module) -> dict[str, float]:
    """Mean learned negative slope of every PReLU hidden layer, as ``prelu/slope/layer_NN``.

    PReLU's slope is a parameter, so whether it grows or shrinks is part of what a trial learned
    (Xu et al. 2015 saw learned slopes overfit on small data). Empty for models without PReLU.
    """
    return {
        f"prelu/slope/{name}": act.weight.detach().mean().item()
        for name, block in model.named_children()
        if name.startswith("layer_") and isinstance(act := getattr(block, "act", None), nn.PReLU)
    }


def layer_name(index: int) -> str:
    """Name of hidden block ``index`` (1-based), zero-padded so names sort by depth."""
    return f"layer_{index:02d}"


def build_mlp(
    in_features: int,
    n_classes: int,
    depth: int,
    width: int,
    activation: str,
    alpha: object = None,
    init: str = "pytorch_default",
    batch_norm: str = "none",
    dropout: float = 0.0,
    prelu_per_unit: bool = True,
) -> MLP:
    """Build the MLP a trial trains.

    ``batch_norm`` is ``"before"`` the activation (Ioffe & Szegedy's placement; the linear bias is
    dropped there because BN's shift replaces it), ``"after"`` it, or ``"none"``. SELU nets get
    ``AlphaDropout``, which keeps the self-normalising mean and variance; others plain dropout.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    if init not in INITIALIZERS:
        raise ValueError(f"unknown initializer {init!r}; allowed: {', '.join(INITIALIZERS)}")
    if batch_norm not in BATCH_NORM_PLACEMENTS:
        allowed = ", ".join(BATCH_NORM_PLACEMENTS)
        raise ValueError(f"unknown batch_norm {batch_norm!r}; allowed: {allowed}")
    if depth < 1 or width < 1:
        raise ValueError("depth and width must be >= 1")

    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    fan_in = in_features
    for i in range(1, depth + 1):
        linear = nn.Linear(fan_in, width, bias=batch_norm != "before")
        initialize(linear, init, activation, alpha)
        parts: OrderedDict[str, nn.Module] = OrderedDict(linear=linear)
        if batch_norm == "before":
            parts["bn"] = nn.BatchNorm1d(width)
        parts["act"] = (
            build_activation(activation, alpha, width, per_unit=prelu_per_unit)
            if (activation == "prelu")
            else build_activation(activation, alpha, width)
        )
        if batch_norm == "after":
            parts["bn"] = nn.BatchNorm1d(width)
        if dropout > 0:
            parts["dropout"] = (
                nn.AlphaDropout(dropout) if activation == "selu" else nn.Dropout(dropout)
            )
        blocks[layer_name(i)] = nn.Sequential(parts)
        fan_in = width
    head = nn.Linear(fan_in, n_classes)
    initialize(head, init, None)
    blocks["head"] = head
    return MLP(blocks)
