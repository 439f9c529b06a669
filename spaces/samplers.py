"""Sampler registry: searcher name -> a seeded Optuna sampler for a study config.

The names are the single source of ``searcher.name``'s allowed values; each factory imports
Optuna when called, so validating a config (in a trial worker, say) never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed)


def _random(seed: int) -> optuna.samplers.BaseSampler:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _grid(seed: int) -> optuna.samplers.BaseSampler:
    from spaces.grid import GridSearch

    return GridSearch(seed=seed)


def _cmaes(seed: int) -> optuna.samplers.BaseSampler:
    from optuna.samplers import CmaEsSampler

    return CmaEsSampler(seed=seed)


def _qmc(seed: int) -> optuna.samplers.BaseSampler:
    from optuna.samplers import QMCSampler

    return QMCSampler(seed=seed)


def _gp(seed: int) -> optuna.samplers.BaseSampler:
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int], Any]] = {
    "tpe": _tpe,
    "random": _random,
    "grid": _grid,
    "cmaes": _cmaes,
    "qmc": _qmc,
    "gp": _gp,
}


def make_sampler(config: Any) -> optuna.samplers.BaseSampler:
    """The sampler ``config.searcher.name`` names, seeded with ``config.searcher.seed``."""
    return SAMPLERS[config.searcher.name](config.searcher.seed)
