"""What can be searched: validated study configs, presets, the define-by-run Optuna space.

Sits above ``trainers`` (whose registries it reads to validate names) and below ``search``.
"""

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
from spaces.samplers import SAMPLERS, make_sampler
from spaces.space import (
    TRIAL_NUMBER_KEY,
    TrialSpec,
    alpha_param,
    define_space,
    enqueued_points,
    grid_space,
    resolve_trial,
)

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
    "grid_space",
    "load_config",
    "make_sampler",
    "presets",
    "resolve_trial",
]
