"""The building blocks of a study config: strict models, searched values and their errors.

A searched value is fixed (a number), a range (``{low, high, log}``), or ``search`` (the
activation registry's own range); discriminated unions keep a bad value's error to the one form
the user wrote, and :data:`FORM_TAGS` are the union tags an error message leaves out.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from trainers import ACTIVATIONS

#: ``alpha: search`` searches the activation's registry range (``Activation.search_range``).
SEARCH_DEFAULT = "search"


class ConfigError(ValueError):
    """A config (file, preset, override) is invalid; ``str()`` is the one line to show a user."""


class Strict(BaseModel):
    """Every config section: unknown keys refused, values frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def allowed(names: object) -> str:
    """``'a', 'b' or 'c'``: how an error lists the allowed values."""
    quoted = [repr(str(n)) for n in names]  # type: ignore[attr-defined]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def one_of(names: tuple[str, ...] | dict[str, object]) -> AfterValidator:
    """A validator admitting only ``names`` (a registry's keys), with pydantic's wording."""

    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"allowed: {allowed(names)}")
        return value

    return AfterValidator(check)


class Range(Strict):
    """A searched float: ``low``..``high``, log-uniform when ``log``; ``grid`` points for grid."""

    low: float
    high: float
    log: bool = False
    grid: Annotated[int, Field(ge=1, le=50)] = 3

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    def points(self) -> list[float]:
        """``grid`` evenly spaced points (geometric when ``log``), for the grid searcher."""
        if self.grid == 1 or self.low == self.high:
            return [self.low]
        if self.log:
            ratio = (self.high / self.low) ** (1 / (self.grid - 1))
            return [self.low * ratio**i for i in range(self.grid)]
        step = (self.high - self.low) / (self.grid - 1)
        return [self.low + step * i for i in range(self.grid)]


def _alpha_form(value: Any) -> str:
    if isinstance(value, dict | Range):
        return "range"
    if value == SEARCH_DEFAULT:
        return "default"
    return "pair" if isinstance(value, list | tuple) else "number"


#: A fixed number, a fixed [lower, upper] pair (rrelu), a searched range, or ``search`` (the
#: registry's range); the discriminator keeps a bad value's error to the one form the user wrote.
Alpha = Annotated[
    Annotated[float, Tag("number")]
    | Annotated[tuple[float, float], Tag("pair")]
    | Annotated[Range, Tag("range")]
    | Annotated[Literal["search"], Tag("default")],
    Discriminator(_alpha_form),
]
FORM_TAGS = {"number", "pair", "range", "default", "list"}
#: A fixed positive learning rate, or a searched range.
LearningRate = Annotated[
    Annotated[Annotated[float, Field(gt=0)], Tag("number")] | Annotated[Range, Tag("range")],
    Discriminator(_alpha_form),
]


class ActivationChoice(Strict):
    """One searched activation. ``alpha``: omitted = literature default, a number (or a
    ``[lower, upper]`` pair for rrelu) = fixed, ``{low, high, log}`` = searched by Optuna,
    ``search`` = searched over the activation's registry range."""

    alpha: Alpha | None = None
    per_unit: bool = True  # prelu: one learned slope per unit (True) or one shared (False)


def check_alpha(
    name: str, kind: str, alpha: float | tuple[float, float] | Range | str | None
) -> None:
    where = f"alpha of {name}"
    if alpha is None:
        return
    if kind == "none":
        raise ValueError(
            f"{name} has no alpha; remove 'alpha' (activations with one: "
            f"{', '.join(n for n, a in ACTIVATIONS.items() if a.alpha_kind != 'none')})"
        )
    if kind == "range":
        if not isinstance(alpha, tuple):
            raise ValueError(f"{where} is a fixed [lower, upper] pair, e.g. [0.125, 0.333]")
        lo, hi = alpha
        if not (0 <= lo <= hi):
            raise ValueError(f"{where} must satisfy 0 <= lower <= upper, got [{lo}, {hi}]")
        return
    if isinstance(alpha, tuple):
        raise ValueError(f"{where} is one number or a range {{low, high, log}}, not a pair")
    low = alpha.low if isinstance(alpha, Range) else float(alpha)
    if low < 0:
        raise ValueError(f"{where} must be >= 0, got {low}")
