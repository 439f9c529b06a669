"""One trial's configuration, resolved: what the trainer builds and how it trains.

The single mapping from a study config plus a trial's parameters to a model and its
:class:`~trainers.TrainSettings`; the trainable, the benchmarks and any script use it, so they
train exactly what a study trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from spaces.config import StudyConfig
from spaces.space import TRIAL_NUMBER_KEY, alpha_param
from trainers import TrainSettings, build_mlp, concrete_init


@dataclass(frozen=True)
class TrialSpec:
    """One configuration, resolved from a trial's parameters: what the trainer builds."""

    number: int
    activation: str
    alpha: float | tuple[float, float] | None
    init: str
    bn: str
    lr: float
    depth: int
    width: int
    per_unit: bool = True

    @property
    def concrete_init(self) -> str:
        """The initializer actually applied (``matched`` resolved for this activation)."""
        return concrete_init(self.init, self.activation)

    @property
    def init_is_matched(self) -> bool:
        """Whether the layers got the notes' rule for this activation (Glorot / He / LeCun)."""
        return self.concrete_init == concrete_init("matched", self.activation)

    def label(self, shape: bool = False) -> str:
        """Human-readable run name, e.g. ``t007 elu α=1.0 he_normal bn=before`` (with
        ``shape``, when the study searches depth or width, also ``20x64``)."""
        alpha = ""
        if isinstance(self.alpha, tuple):
            alpha = f" α=[{self.alpha[0]:.3g},{self.alpha[1]:.3g}]"
        elif self.alpha is not None:
            alpha = f" α={self.alpha:.3g}"
        size = f" {self.depth}x{self.width}" if shape else ""
        return f"t{self.number:03d} {self.activation}{alpha} {self.init} bn={self.bn}{size}"


def resolve_trial(config: StudyConfig, params: dict[str, Any]) -> TrialSpec:
    """Map a trial's parameters (Optuna's plus the constants) to a :class:`TrialSpec`.

    ``alpha`` is the searched ``<activation>_alpha``, else the fixed one from the config, else
    ``None`` (the trainer then uses the activation's literature default).
    """
    activation = params["activation"]
    alpha = params.get(alpha_param(activation), params.get("alpha"))
    if isinstance(alpha, list):
        alpha = (float(alpha[0]), float(alpha[1]))
    choice = config.search.activations.get(activation)
    return TrialSpec(
        number=int(params.get(TRIAL_NUMBER_KEY, 0)),
        activation=activation,
        alpha=alpha,
        init=params["init"],
        bn=params["bn"],
        lr=float(params["lr"]),
        depth=int(params.get("depth", config.model.choices("depth")[0])),
        width=int(params.get("width", config.model.choices("width")[0])),
        per_unit=choice.per_unit if choice is not None else True,
    )


def model_builder(
    config: StudyConfig, spec: TrialSpec, n_features: int, n_classes: int
) -> Callable[[], nn.Module]:
    """A function that builds ``spec``'s MLP afresh (seed the global generator first: the
    initial weights come from it)."""

    def build() -> nn.Module:
        return build_mlp(
            n_features,
            n_classes,
            spec.depth,
            spec.width,
            spec.activation,
            spec.alpha,
            spec.init,
            spec.bn,
            config.model.dropout,
            prelu_per_unit=spec.per_unit,
        )

    return build


def train_settings(config: StudyConfig, spec: TrialSpec) -> TrainSettings:
    """The loop's settings for ``spec`` under ``config``."""
    training = config.training
    return TrainSettings(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=spec.lr,
        optimizer=training.optimizer,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        seed=training.seed,
        diagnostics=config.diagnostics.enabled,
        probe_size=config.diagnostics.probe_size,
    )
