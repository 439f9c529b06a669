"""What can be searched: validated study configs, presets, the define-by-run Optuna space.

Sits above ``trainers`` (whose registries it reads to validate names) and below ``search``.
The sampler registry loads Optuna on first use: a trial worker only needs the config.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from spaces.config import (
    PRESETS_DIR,
    SEARCHERS,
    ActivationChoice,
    ConfigError,
    Range,
    StudyConfig,
    load_config,
    presets,
)
from spaces.space import (
    TRIAL_NUMBER_KEY,
    TrialSpec,
    alpha_param,
    define_space,
    enqueued_points,
    grid_size,
    resolve_trial,
)

if TYPE_CHECKING:
    from spaces.samplers import SAMPLERS, make_sampler

__all__ = [
    "PRESETS_DIR",
    "SAMPLERS",
    "SEARCHERS",
    "TRIAL_NUMBER_KEY",
    "ActivationChoice",
    "ConfigError",
    "Range",
    "StudyConfig",
    "TrialSpec",
    "alpha_param",
    "define_space",
    "enqueued_points",
    "grid_size",
    "load_config",
    "make_sampler",
    "presets",
    "resolve_trial",
]


def __getattr__(name: str) -> Any:
    if name in ("SAMPLERS", "make_sampler"):
        return getattr(import_module("spaces.samplers"), name)
    raise AttributeError(f"module 'spaces' has no attribute {name!r}")
