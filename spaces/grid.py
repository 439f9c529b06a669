"""The grid searcher's sampler: every distinct configuration of the conditional space once."""

from __future__ import annotations

from typing import Any

import optuna


class GridSearch(optuna.samplers.BruteForceSampler):
    """Every distinct configuration of the conditional space once (an activation's alpha points
    are only crossed with that activation), in seeded order.

    Optuna's ``GridSampler`` would cross every ``<activation>_alpha`` with every activation and
    run the same relu configuration once per ELU alpha. How many trials run is Tune's
    ``num_samples`` (capped at :func:`~spaces.space.grid_size`), so the sampler does not stop the
    study itself, which outside ``study.optimize`` would raise.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None
