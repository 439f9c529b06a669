"""What can be searched: validated study configs, presets, the define-by-run Optuna space.

Sits above ``trainers`` (whose registries it reads to validate names) and below ``search``.
The samplers load Optuna when one is made: a trial worker only needs the config.
"""

from __future__ import annotations

from spaces.config import PRESETS_DIR, StudyConfig
from spaces.loading import load_config, presets
from spaces.samplers import SAMPLERS, make_sampler
from spaces.space import TRIAL_NUMBER_KEY, alpha_param, define_space, enqueued_points, grid_size
from spaces.trial import TrialSpec, model_builder, resolve_trial, train_settings
from spaces.values import ActivationChoice, ConfigError, Range

__all__ = [
    "PRESETS_DIR",
    "SAMPLERS",
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
    "model_builder",
    "presets",
    "resolve_trial",
    "train_settings",
]
