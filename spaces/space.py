"""The conditional, define-by-run search space handed to Optuna, and its inverse.

Alpha is suggested only for an activation that has a searched alpha, under a name of its own
(``leaky_relu_alpha``, ``elu_alpha``, ...): in a define-by-run space one parameter name keeps one
distribution for the whole study, and leaky ReLU's log range and ELU's linear one differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from spaces.config import StudyConfig
from spaces.values import Range

TRIAL_NUMBER_KEY = "optuna_trial_number"


class SuggestTrial(Protocol):
    """The part of ``optuna.Trial`` the space uses (Ray wraps the real trial in a captor)."""

    number: int

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


def alpha_param(activation: str) -> str:
    """Optuna parameter name of ``activation``'s searched alpha."""
    return f"{activation}_alpha"


class DefineByRun:
    """The define-by-run function for a config's search space (a class, so Tune can pickle it).

    Calling it suggests ``activation``, the activation's own ``<activation>_alpha`` when that is
    searched, ``init``, ``bn`` and ``lr`` (when a range), and returns the constants a trial also
    needs: the Optuna trial number (to name and link runs) and any fixed alpha or learning rate.
    For the grid searcher a searched range is its ``grid`` points, as a categorical.
    """

    def __init__(self, config: StudyConfig) -> None:
        self.space = config.search
        self.shapes = {name: config.model.choices(name) for name in ("depth", "width")}
        self.grid = config.searcher.name == "grid"

    def _range(self, trial: SuggestTrial, name: str, values: Range) -> None:
        if self.grid:
            trial.suggest_categorical(name, values.points())
        else:
            trial.suggest_float(name, values.low, values.high, log=values.log)

    def __call__(self, trial: SuggestTrial) -> dict[str, Any]:
        space = self.space
        activation = trial.suggest_categorical("activation", list(space.activations))
        constants: dict[str, Any] = {TRIAL_NUMBER_KEY: trial.number}
        alpha = space.activations[activation].alpha
        if isinstance(alpha, Range):
            self._range(trial, alpha_param(activation), alpha)
        elif alpha is not None:
            constants["alpha"] = list(alpha) if isinstance(alpha, tuple) else alpha
        trial.suggest_categorical("init", list(space.initializers))
        trial.suggest_categorical("bn", list(space.batch_norm))
        if isinstance(space.lr, Range):
            self._range(trial, "lr", space.lr)
        else:
            constants["lr"] = space.lr
        for name, choices in self.shapes.items():  # depth, width: factors when listed
            if len(choices) > 1:
                trial.suggest_categorical(name, choices)
        return constants


def define_space(config: StudyConfig) -> Callable[[SuggestTrial], dict[str, Any]]:
    """The define-by-run search space of ``config`` (see :class:`DefineByRun`)."""
    return DefineByRun(config)


def enqueued_points(config: StudyConfig) -> list[dict[str, Any]]:
    """``design`` then ``search.enqueue``, completed with the first choice of any factor a point
    leaves out."""
    space = config.search
    points = []
    for point in [*config.design, *space.enqueue]:
        full = {"init": space.initializers[0], "bn": space.batch_norm[0], **point}
        if isinstance(space.lr, Range):
            full.setdefault("lr", space.lr.low)
        else:
            full.pop("lr", None)
        for name in ("depth", "width"):
            choices = config.model.choices(name)
            if len(choices) > 1:
                full.setdefault(name, choices[0])
        points.append(full)
    return points


def grid_size(config: StudyConfig) -> int:
    """How many distinct configurations the grid searcher has: each activation with its own
    alpha points (not every other activation's), times inits, BN placements and lr points."""
    space = config.search
    per_activation = sum(
        len(choice.alpha.points()) if isinstance(choice.alpha, Range) else 1
        for choice in space.activations.values()
    )
    lr_points = len(space.lr.points()) if isinstance(space.lr, Range) else 1
    shapes = len(config.model.choices("depth")) * len(config.model.choices("width"))
    return per_activation * len(space.initializers) * len(space.batch_norm) * lr_points * shapes
