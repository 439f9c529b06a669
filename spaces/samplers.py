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
    "nsga2": "optuna.samplers:NSGAIISampler",
    "random": "optuna.samplers:RandomSampler",
    "grid": "spaces.grid:GridSearch",
    "cmaes": "optuna.samplers:CmaEsSampler",
    "qmc": "optuna.samplers:QMCSampler",
    "gp": "optuna.samplers:GPSampler",
}

#: The smallest ``searcher.history``: from 250 trials on TPE's good set is its full 25, so a
#: capped TPE's good density is plain TPE's (one objective; see :mod:`spaces.tpe`).
MIN_TPE_HISTORY = 250


def continued_seed(seed: int, trials_so_far: int) -> int:
    """The seed of a sampler that picks up a study which already holds ``trials_so_far`` trials.

    A sampler seeded as at the study's start would draw its first points again: a resumed
    study would repeat its first trials exactly. A study's first run (0 trials) keeps ``seed``.
    """
    if trials_so_far == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


def make_sampler(config: Any, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler ``config.searcher.name`` names, for a study that holds ``trials_so_far``.

    Seeded with ``config.searcher.seed`` on a fresh study, else with :func:`continued_seed`, so a
    resume draws new points; grid and model-based samplers also read the study's history. QMC
    keeps its seed, because its sequence (scrambled by the seed) continues from the position it
    stored in the study; only its sampler of categorical parameters is seeded anew.
    """
    seed = config.searcher.seed
    module, name = SAMPLERS[config.searcher.name].split(":")
    cls = getattr(import_module(module), name)
    if config.searcher.name == "qmc":
        from optuna.samplers import RandomSampler

        independent = RandomSampler(seed=continued_seed(seed, trials_so_far))
        return cls(seed=seed, independent_sampler=independent)
    if config.searcher.name == "tpe":
        settings = {
            k: v
            for k in ("multivariate", "constant_liar", "history")
            if (v := getattr(config.searcher, k, None)) is not None
        }
        if "history" in settings:
            from spaces.tpe import CappedTPESampler

            cls = CappedTPESampler
        return cls(seed=continued_seed(seed, trials_so_far), **settings)
    return cls(seed=continued_seed(seed, trials_so_far))
