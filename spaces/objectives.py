"""The objectives a study may optimise, by name: what the trainable reports for each.

A study optimises ``val_accuracy`` alone unless its config names ``objectives``, two or more of
this registry's names each with a direction, e.g. ``[{val_accuracy: max}, {epoch_seconds: min}]``.
The first is the primary objective: the one a scheduler (ASHA) stops trials on. The registry is
the single source of the allowed names; the metric each maps to is what a trial reports to Tune
and what MLflow records when the trial ends.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

Direction = Literal["max", "min"]
DIRECTIONS: tuple[Direction, ...] = ("max", "min")


class Objective(NamedTuple):
    metric: str  # the key a trial reports (search.schema re-exports these names)
    about: str


OBJECTIVES: dict[str, Objective] = {
    "val_accuracy": Objective("best_val_accuracy", "best validation accuracy (seeds' mean)"),
    "epoch_seconds": Objective("mean_epoch_seconds", "mean wall-clock seconds per epoch"),
    "params": Objective("n_params", "trainable parameters of one model"),
}
#: A study that names no objectives: what Optuna and the scheduler maximise.
DEFAULT = (("val_accuracy", "max"),)
#: Samplers that search several objectives at once (``cmaes`` is single-objective only).
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsga2", "random", "grid", "qmc", "gp")


def parse_objectives(raw: Any) -> list[dict[str, str]]:
    """``objectives`` as written (a list of ``{name: direction}`` or one mapping), checked:
    every name known, every direction ``max`` or ``min``, none twice, two or more in all.

    Raises ``ValueError`` with one line naming the bad entry and what is allowed.
    """
    if isinstance(raw, dict):
        raw = [{name: direction} for name, direction in raw.items()]
    if not isinstance(raw, list | tuple):
        raise ValueError(
            "objectives: write a list of {name: max|min}, e.g. [val_accuracy: max, params: min]"
        )
    out: list[dict[str, str]] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(
                f"objectives.{i}: write one objective as {{name: max|min}}, got {entry!r}"
            )
        ((name, direction),) = entry.items()
        if name not in OBJECTIVES:
            raise ValueError(
                f"objectives.{i}: unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}"
            )
        if direction not in DIRECTIONS:
            raise ValueError(f"objectives.{i}.{name}: direction {direction!r}; allowed: max, min")
        if any(name in seen for seen in out):
            raise ValueError(f"objectives.{i}: {name} is named twice")
        out.append({name: direction})
    if len(out) == 1:
        raise ValueError(
            "objectives: name two or more for a multi-objective search; leave objectives out "
            "to maximise val_accuracy alone"
        )
    return out


def objective_pairs(objectives: list[dict[str, str]]) -> list[tuple[str, str]]:
    """``(name, direction)`` of each objective, the default when none are named."""
    if not objectives:
        return list(DEFAULT)
    return [next(iter(entry.items())) for entry in objectives]


def metrics_and_modes(objectives: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    """The reported metric and the Tune mode of each objective, in order."""
    pairs = objective_pairs(objectives)
    return [OBJECTIVES[name].metric for name, _ in pairs], [mode for _, mode in pairs]
