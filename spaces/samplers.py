"""Sampler registry: searcher name -> the Optuna sampler class it makes, seeded from the config.

The names are the single source of ``searcher.name``'s allowed values. Classes are named, not
imported, so validating a config (in a trial worker, say) never loads Optuna.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

SAMPLERS: dict[str, str] = {
    "tpe": "optuna.samplers:TPESampler",
    "random": "optuna.samplers:RandomSampler",
    "grid": "spaces.grid:GridSearch",
    "cmaes": "optuna.samplers:CmaEsSampler",
    "qmc": "optuna.samplers:QMCSampler",
    "gp": "optuna.samplers:GPSampler",
}


def make_sampler(config: Any) -> optuna.samplers.BaseSampler:
    """The sampler ``config.searcher.name`` names, seeded with ``config.searcher.seed``."""
    module, name = SAMPLERS[config.searcher.name].split(":")
    return getattr(import_module(module), name)(seed=config.searcher.seed)
