"""TPE with a cap on the history it models (``searcher.history``), for studies of many trials.

Optuna's TPE builds its two densities from every finished trial on every ask, so an ask costs
O(trials), and on a study of thousands the model is most of the driver's ask (figures:
benchmarks/README.md, "A capped TPE history"). With a cap, TPE sees a view of the study that
holds every running trial (the constant liar penalises them) and, of the finished ones, at most
``history``:

- the best ones: as many as TPE puts in its "good" set for ``history`` trials (a tenth, at most
  25 with one objective), ranked by Optuna's own split (values, then pruned trials by their last
  intermediate value, then constraint violations; with several objectives its non-dominated
  sort and hypervolume tie-break) over the whole history;
- the most recent of the rest (by trial number), up to the cap.

What it keeps: with one objective and a cap of at least 250, the good density ``l(x)`` is built
from exactly the trials plain TPE would use (its good set is the best 25 at any size from 250).
What it loses: the "bad" density ``g(x)`` sees only the recent trials, so a region the search
left long ago is no longer marked as bad and may be proposed again. With several objectives
the good set is a tenth of the cap rather than a tenth of the whole study, and only close to
the whole history's: it is kept incrementally (the best of the previous good set and the newly
finished trials), which is exact for one objective's total order, but a trial once left out is
never ranked again, even when later trials push the kept ones down the non-dominated ranks.

Only the reads TPE makes of the study's trials are capped; its search space and the storage
are the study's own. The view relies on TPE reading trials through ``Study._get_trials``, as
Optuna 5 does (``tests/spaces/test_tpe.py`` checks that the cap reaches the model).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers._tpe.sampler import (
    _split_trials,
    default_gamma,
    default_gamma_multiobjective,
)
from optuna.trial import FrozenTrial, TrialState

#: The finished trials TPE models (FAIL ones it never reads).
_MODELLED = (TrialState.COMPLETE, TrialState.PRUNED)
_Keep = Callable[[list[FrozenTrial], Container[TrialState] | None], list[FrozenTrial]]


class _HistoryView(optuna.Study):
    """The study as the capped TPE reads it: the same storage, directions and per-ask cache
    (shared, not copied), with ``_get_trials`` answered through ``keep``."""

    def __init__(self, study: optuna.Study, keep: _Keep) -> None:
        # Not Study.__init__, which would read the study from storage again.
        self.__dict__.update(study.__dict__)
        self._keep = keep

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = super()._get_trials(False, states, use_cache)
        if states is None or all(s in states for s in _MODELLED):  # TPE's reads: always both
            trials = self._keep(trials, states)
        return copy.deepcopy(trials) if deepcopy else trials


class CappedTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE modelling at most ``history`` finished trials (see the module docstring).

    Other arguments are TPESampler's. The best trials are kept across asks (finished trials
    never change), so each ask ranks only the trials that finished since the last one.
    """

    def __init__(self, *, history: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if history < self._n_startup_trials:
            raise ValueError(f"history must be >= n_startup_trials ({self._n_startup_trials})")
        self._history = history
        self._ranked: set[int] = set()  # numbers of the finished trials ranked so far
        self._best: list[FrozenTrial] = []  # the best of them, as many as the good set holds

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        view = self._view(study)
        return super().sample_independent(view, trial, param_name, param_distribution)

    def _view(self, study: optuna.Study) -> optuna.Study:
        return _HistoryView(study, lambda trials, states: self._modelled(study, trials, states))

    def _modelled(
        self,
        study: optuna.Study,
        trials: list[FrozenTrial],
        states: Container[TrialState] | None,
    ) -> list[FrozenTrial]:
        """``trials`` (all finished ones of the study, in number order) less the finished ones
        beyond the cap; O(trials) only in one pass over their states, the rest O(cap)."""
        finished: list[FrozenTrial] = []
        others: list[FrozenTrial] = []
        for t in trials:
            (finished if t.state in _MODELLED else others).append(t)
        if len(finished) <= self._history:
            return trials
        self._rank(study, finished)
        best = {t.number for t in self._best}
        kept = [t for t in self._best if states is None or t.state in states]
        recent = self._history - len(kept)
        for t in reversed(finished):
            if recent == 0:
                break
            if t.number not in best:
                kept.append(t)
                recent -= 1
        return sorted(kept + others, key=lambda t: t.number)

    def _rank(self, study: optuna.Study, finished: list[FrozenTrial]) -> None:
        """The best trials of the previous ones and those in ``finished`` not ranked yet (found
        from the end: most have just finished), by TPE's own split."""
        missing = len(finished) - len(self._ranked)
        new = []
        for t in reversed(finished):
            if missing == 0:
                break
            if t.number not in self._ranked:
                new.append(t)
                missing -= 1
        if not new:
            return
        self._ranked.update(t.number for t in new)
        gamma = self._gamma or (
            default_gamma if len(study.directions) <= 1 else default_gamma_multiobjective
        )
        pool = {t.number: t for t in self._best + new}  # a trial once, should asks overlap
        self._best, _ = _split_trials(study, list(pool.values()), gamma(self._history))
