"""Sampler registry: searcher name -> a seeded Optuna sampler for a study config."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from spaces.config import StudyConfig
from spaces.space import grid_space

SAMPLERS: dict[str, Callable[[StudyConfig], optuna.samplers.BaseSampler]] = {
    "tpe": lambda c: optuna.samplers.TPESampler(seed=c.searcher.seed),
    "random": lambda c: optuna.samplers.RandomSampler(seed=c.searcher.seed),
    "grid": lambda c: optuna.samplers.GridSampler(grid_space(c), seed=c.searcher.seed),
    "cmaes": lambda c: optuna.samplers.CmaEsSampler(seed=c.searcher.seed),
    "qmc": lambda c: optuna.samplers.QMCSampler(seed=c.searcher.seed),
    "gp": lambda c: optuna.samplers.GPSampler(seed=c.searcher.seed),
}


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The seeded sampler ``config.searcher.name`` names."""
    return SAMPLERS[config.searcher.name](config)
