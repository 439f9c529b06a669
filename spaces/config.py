"""The study config: one validated pydantic model, loaded from YAML or a preset.

Every name a config may use (activation, initializer, data set, searcher) is checked against the
registry that defines it, and every error names its key path and what is allowed, so a user sees
one clear line instead of a traceback. Unknown keys are refused everywhere (``extra="forbid"``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from spaces.objectives import MULTI_OBJECTIVE_SAMPLERS, objective_pairs, parse_objectives
from spaces.samplers import MIN_TPE_HISTORY, SAMPLERS
from spaces.values import (
    SEARCH_DEFAULT,
    ActivationChoice,
    LearningRate,
    Range,
    Strict,
    check_alpha,
    one_of,
)
from trainers import (
    ACTIVATIONS,
    BATCH_NORM_PLACEMENTS,
    DATASETS,
    INITIALIZERS,
    OPTIMIZERS,
    Splits,
    load_splits,
)

PRESETS_DIR = Path(__file__).parent / "presets"


class DataConfig(Strict):
    name: str = "digits"
    options: dict[str, Any] = Field(default_factory=dict)
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: int = 0

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown data set {v!r}; allowed: {', '.join(DATASETS)}")
        return v

    def load(self) -> Splits:
        """This data set's standardised splits (cached per process by ``trainers``)."""
        return load_splits(
            self.name, self.options, self.val_fraction, self.test_fraction, self.split_seed
        )

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


def _shape_form(value: Any) -> str:
    return "list" if isinstance(value, list | tuple) else "number"


Depth = Annotated[int, Field(ge=1, le=256)]
Width = Annotated[int, Field(ge=1, le=65536)]
#: A number, or a list of numbers (a searched factor); an error names only the form written.
Depths = Annotated[
    Annotated[Depth, Tag("number")] | Annotated[list[Depth], Tag("list")],
    Discriminator(_shape_form),
]
Widths = Annotated[
    Annotated[Width, Tag("number")] | Annotated[list[Width], Tag("list")],
    Discriminator(_shape_form),
]


class ModelConfig(Strict):
    """The MLP's shape; ``depth`` and ``width`` may each be a list, searched as a factor."""

    depth: Depths = 4
    width: Widths = 64
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @field_validator("depth", "width")
    @classmethod
    def _levels(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, list):
            if not v:
                raise ValueError("name at least one value")
            v = list(dict.fromkeys(v))
            return v[0] if len(v) == 1 else v
        return v

    def choices(self, name: str) -> list[int]:
        """The values of ``depth`` or ``width`` a study uses (one when fixed)."""
        value = getattr(self, name)
        return value if isinstance(value, list) else [value]


class SearchSpaceConfig(Strict):
    """The searched factors. ``activations`` may be a list of names or a name -> choice map."""

    activations: dict[str, ActivationChoice] = Field(
        default_factory=lambda: {"relu": ActivationChoice(), "elu": ActivationChoice()}
    )
    initializers: list[str] = Field(default_factory=lambda: ["matched"], min_length=1)
    batch_norm: list[Annotated[str, one_of(BATCH_NORM_PLACEMENTS)]] = Field(
        default_factory=lambda: ["none"], min_length=1
    )
    lr: LearningRate = Range(low=1e-4, high=1e-1, log=True)
    #: Configurations to try first (Optuna ``enqueue_trial``), e.g. a known baseline:
    #: ``{activation: relu, init: he_normal, bn: none, lr: 0.01}``; alpha as ``<activation>_alpha``.
    enqueue: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("activations", mode="before")
    @classmethod
    def _list_to_map(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return {str(name): {} for name in v}
        return v

    @field_validator("activations")
    @classmethod
    def _known_activations(cls, v: dict[str, ActivationChoice]) -> dict[str, ActivationChoice]:
        if not v:
            raise ValueError("name at least one activation")
        out = {}
        for name, choice in v.items():
            spec = ACTIVATIONS.get(name)
            if spec is None:
                raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
            if choice.alpha == SEARCH_DEFAULT and spec.alpha_kind != "none":
                if spec.search_range is None:
                    form = "[lower, upper] pair" if spec.alpha_kind == "range" else "number"
                    raise ValueError(
                        f"{name} has no default alpha range to search; give a fixed {form}"
                    )
                low, high, log = spec.search_range
                choice = choice.model_copy(update={"alpha": Range(low=low, high=high, log=log)})
            check_alpha(name, spec.alpha_kind, choice.alpha)
            out[name] = choice
        return out

    @field_validator("initializers")
    @classmethod
    def _known_inits(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in INITIALIZERS:
                raise ValueError(
                    f"unknown initializer {name!r}; allowed: {', '.join(INITIALIZERS)}"
                )
        return list(dict.fromkeys(v))

    @field_validator("batch_norm")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _positive_lr(self) -> SearchSpaceConfig:
        low = self.lr.low if isinstance(self.lr, Range) else self.lr
        if low <= 0:
            raise ValueError(f"lr: learning rates must be > 0, got low = {low}")
        return self

    @model_validator(mode="after")
    def _enqueued_points_fit(self) -> SearchSpaceConfig:
        for i, point in enumerate(self.enqueue):
            self.check_point(f"enqueue.{i}", point)
        return self

    def check_point(self, where: str, point: dict[str, Any]) -> None:
        """A configuration to run (``search.enqueue``, ``design``) names only searched values."""
        activation = point.get("activation")
        if activation not in self.activations:
            raise ValueError(
                f"{where}.activation: {activation!r} is not among the searched activations "
                f"({', '.join(self.activations)})"
            )
        allowed = {"activation", "init", "bn", "lr", "depth", "width", f"{activation}_alpha"}
        for key in point:
            if key not in allowed:
                raise ValueError(f"{where}.{key}: unknown; allowed: {', '.join(sorted(allowed))}")
        if point.get("init", self.initializers[0]) not in self.initializers:
            raise ValueError(
                f"{where}.init: {point['init']!r} is not among the searched initializers"
            )
        if point.get("bn", self.batch_norm[0]) not in self.batch_norm:
            raise ValueError(f"{where}.bn: {point['bn']!r} is not among the searched placements")
        alpha_key = f"{activation}_alpha"
        if alpha_key in point and not isinstance(self.activations[activation].alpha, Range):
            raise ValueError(f"{where}.{alpha_key}: {activation}'s alpha is not searched")
        if "lr" in point and not isinstance(self.lr, Range):
            raise ValueError(f"{where}.lr: the learning rate is fixed at {self.lr}")
        for key in ("lr", alpha_key):
            value = point.get(key, 1.0)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or value < 0 or (key == "lr" and value == 0):
                raise ValueError(f"{where}.{key}: {value!r} must be a positive number")


class TrainingConfig(Strict):
    epochs: Annotated[int, Field(ge=1, le=100000)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    optimizer: str = "adam"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    seed: int = 0
    #: Seeds per trial, trained fused as one batched model; Optuna sees their mean (1 = plain).
    seeds: Annotated[int, Field(ge=1, le=64)] = 1
    checkpoint_every: Annotated[int, Field(ge=0)] = 1  # epochs between checkpoints; 0 = never
    #: A checkpoint that ``checkpoint_every`` calls for is skipped while the trial's last one is
    #: younger than this: on short epochs writing one each epoch costs more than it can save.
    #: A trial's last epoch is always checkpointed (its model stays loadable). 0 = every time.
    checkpoint_min_seconds: Annotated[float, Field(ge=0)] = 30.0

    @field_validator("optimizer")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {v!r}; allowed: {', '.join(OPTIMIZERS)}")
        return v


class DiagnosticsConfig(Strict):
    """Gradient-flow diagnostics per epoch, their pictures, and optional gradient-health stopping.

    Stopping ends a trial (Optuna: PRUNED, MLflow: KILLED with a reason) when its first-layer
    gradient norm stays below ``stop_vanishing_below`` for ``stop_patience`` epochs, or, with
    ``stop_exploding``, as soon as the exploding flag is raised.
    """

    enabled: bool = True
    probe_size: Annotated[int, Field(ge=2)] = 64
    plots_top: Annotated[int, Field(ge=0)] = 5
    plots_diverged: bool = True
    stop_vanishing_below: Annotated[float, Field(gt=0)] | None = None
    stop_patience: Annotated[int, Field(ge=1)] = 3
    stop_exploding: bool = False


class SearcherConfig(Strict):
    name: Annotated[str, one_of(SAMPLERS)] = "tpe"
    seed: int = 0
    #: TPE only; None keeps Optuna's default (both on). Off: a model of each parameter alone
    #: (multivariate), or one ignoring the running trials (liar). Neither saves time (README).
    multivariate: bool | None = None
    constant_liar: bool | None = None
    #: TPE only: the most finished trials it models (the best ones and the most recent; see
    #: :mod:`spaces.tpe`), so an ask stops growing with the study; None = all, as Optuna does.
    history: int | None = None
    #: Trials asked ahead by each of ``processes`` searcher processes (search/ask_ahead.py).
    ask_ahead: Annotated[int, Field(ge=0, le=64)] = 0
    processes: Annotated[int, Field(ge=1, le=16)] = 1

    @field_validator("history")
    @classmethod
    def _history_floor(cls, v: int | None) -> int | None:
        if v is not None and v < MIN_TPE_HISTORY:
            raise ValueError(
                f"at least {MIN_TPE_HISTORY} trials (below that TPE's good set, a tenth of "
                f"what it models up to 25, shrinks), or unset to model them all; got {v}"
            )
        return v

    @model_validator(mode="after")
    def _tpe_settings(self) -> SearcherConfig:
        for key in ("multivariate", "constant_liar", "history"):
            if getattr(self, key) is not None and self.name != "tpe":
                raise ValueError(f"{key}: a TPE setting, but searcher.name is {self.name!r}")
        if self.processes > 1 and (not self.ask_ahead or self.name == "grid"):
            raise ValueError(
                f"processes: {self.processes} needs ask_ahead >= 1 and a sampler other than grid "
                "(a grid hands out each point once, from one process)"
            )
        return self


class SchedulerConfig(Strict):
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0


class ResourcesConfig(Strict):
    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0


class TrackingConfig(Strict):
    uri: str | None = None  # default: sqlite:///<output_dir>/mlflow.db
    experiment: Annotated[str, Field(min_length=1)] = "gradsweep"


class ConfirmConfig(Strict):
    """Confirmation runs at the end of the study (``gradsweep confirm`` does the same later)."""

    seeds: Annotated[int, Field(ge=2, le=64)] = 5
    factor: Literal["activation", "bn", "init_applied", "depth", "width"] = "activation"


class StudyConfig(Strict):
    """A whole study: what to search, how to train each trial, how to schedule and record."""

    name: Annotated[str, Field(min_length=1, max_length=100)] = "study"
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    search: SearchSpaceConfig = SearchSpaceConfig()
    training: TrainingConfig = TrainingConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    searcher: SearcherConfig = SearcherConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    num_samples: Annotated[int, Field(ge=1, le=100000)] = 16
    #: Wall-clock budget of the whole search: no trial starts after it, running ones are stopped.
    budget_minutes: Annotated[float, Field(gt=0)] | None = None
    max_concurrent: Annotated[int, Field(ge=1)] = 2
    max_failures: Annotated[int, Field(ge=0)] = 2
    #: Trials per Ray Tune run (a round), all the driver holds; default max(5000, 50 per slot).
    trials_per_round: Annotated[int, Field(ge=1)] | None = None
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    optuna_storage: str | None = None  # default: sqlite:///<output_dir>/optuna.db
    output_dir: str = "gradsweep-runs"
    #: A designed experiment: its cells in order, each once (replicates: ``training.seeds``).
    design: list[dict[str, Any]] = Field(default_factory=list)
    #: Retrain each level's best configuration with fresh seeds once the search is done.
    confirm: ConfirmConfig | None = None
    #: Several objectives, e.g. ``[{val_accuracy: max}, {epoch_seconds: min}]`` (see
    #: :mod:`spaces.objectives`); empty: ``val_accuracy`` alone.
    objectives: list[dict[str, str]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _parse_objectives(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("objectives") is not None:
            return {**raw, "objectives": parse_objectives(raw["objectives"])}
        return raw

    @model_validator(mode="after")
    def _objectives_fit(self) -> StudyConfig:
        if not self.objectives:
            return self
        if self.searcher.name not in MULTI_OBJECTIVE_SAMPLERS:
            raise ValueError(
                f"searcher.name: {self.searcher.name} searches one objective only; with "
                f"objectives use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}"
            )
        first = objective_pairs(self.objectives)[0]
        if self.scheduler.name == "asha" and first != ("val_accuracy", "max"):
            raise ValueError(
                "scheduler.name: asha stops trials on the primary (first) objective only, which "
                f"must be val_accuracy: max (got {first[0]}: {first[1]}); put it first or use fifo"
            )
        return self

    @property
    def multi_objective(self) -> bool:
        return bool(self.objectives)

    @model_validator(mode="before")
    @classmethod
    def _design_sets_num_samples(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("design") and "num_samples" not in raw:
            return {**raw, "num_samples": len(raw["design"])}
        return raw

    @model_validator(mode="after")
    def _shapes_enqueued_fit(self) -> StudyConfig:
        points = [(f"design.{i}", p) for i, p in enumerate(self.design)]
        for where, point in points:
            self.search.check_point(where, point)
        points += [(f"search.enqueue.{i}", p) for i, p in enumerate(self.search.enqueue)]
        for where, point in points:
            for key in ("depth", "width"):
                if key not in point:
                    continue
                choices = self.model.choices(key)
                if len(choices) == 1:
                    raise ValueError(f"{where}.{key}: model.{key} is fixed at {choices[0]}")
                if point[key] not in choices:
                    raise ValueError(
                        f"{where}.{key}: {point[key]!r} is not one of model.{key} "
                        f"({', '.join(map(str, choices))})"
                    )
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '.' and '-' (starting with a letter/digit)")
        return v
