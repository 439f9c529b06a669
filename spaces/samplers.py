"""Sampler registry: searcher name -> a seeded Optuna sampler for a study config."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from spaces.config import StudyConfig


class GridSearch(optuna.samplers.BruteForceSampler):
    """Every distinct configuration of the conditional space once (an activation's alpha points
    are only crossed with that activation), in seeded order.

    Optuna's ``GridSampler`` would cross every ``<activation>_alpha`` with every activation and
    run the same relu configuration once per ELU alpha. How many trials run is Tune's
    ``num_samples`` (capped at :func:`~spaces.space.grid_size`), so the sampler does not stop the
    study itself, which outside ``study.optimize`` would raise.
    """

    def after_trial(self, study, trial, state, values) -> None:
        return None


SAMPLERS: dict[str, Callable[[StudyConfig], optuna.samplers.BaseSampler]] = {
    "tpe": lambda c: optuna.samplers.TPESampler(seed=c.searcher.seed),
    "random": lambda c: optuna.samplers.RandomSampler(seed=c.searcher.seed),
    "grid": lambda c: GridSearch(seed=c.searcher.seed),
    "cmaes": lambda c: optuna.samplers.CmaEsSampler(seed=c.searcher.seed),
    "qmc": lambda c: optuna.samplers.QMCSampler(seed=c.searcher.seed),
    "gp": lambda c: optuna.samplers.GPSampler(seed=c.searcher.seed),
}


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The seeded sampler ``config.searcher.name`` names."""
    return SAMPLERS[config.searcher.name](config)
