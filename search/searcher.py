"""Ray Tune's ``OptunaSearch``, telling Optuna honestly how each trial ended.

Stock ``OptunaSearch`` tells a trial that ASHA stopped early as COMPLETE with its last value,
which makes TPE treat a 2-epoch score as a finished one. Here:

- ran every epoch -> COMPLETE with the objective;
- stopped early (scheduler, or gradient-health stopping) -> PRUNED: Optuna keeps the
  last intermediate value it was told, which is how its own pruners record the case;
- diverged (non-finite loss) or crashed -> FAIL: there is no meaningful value to learn from, and
  a FAIL trial is excluded from TPE's good/bad split instead of being ranked as a zero.

Per-epoch values stay in the driver's memory: neither Tune scheduler reads them from Optuna (ASHA
is Tune's own), and TPE ranks a PRUNED trial by its last intermediate value, so only that one is
written, when the trial ends PRUNED. Writing every epoch cost one storage round trip per epoch
per trial on the driver's event loop (benchmarks/scale.py); the epoch curves are in MLflow.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.schema import OUTCOMES, outcome

log = logging.getLogger(__name__)


class HonestOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose completion tells COMPLETE, PRUNED or FAIL (see module docstring)."""

    def __init__(self, *args: Any, epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epochs = epochs
        self._latest: dict[str, tuple[float, int]] = {}  # trial id -> (value, epoch), unwritten

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state = OUTCOMES[outcome(result, self._epochs, error)][1]
        value = None
        if state is TrialState.COMPLETE:
            value = result.get(self.metric) if result else None
            if value is None or not math.isfinite(float(value)):
                state, value = TrialState.FAIL, None
        latest = self._latest.pop(trial_id, None)
        try:
            if state is TrialState.PRUNED and latest is not None:
                ot_trial.report(*latest)
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # never let bookkeeping end the search
            log.warning("could not tell Optuna trial %s: %s", ot_trial.number, exc)
        self._completed_trials.add(trial_id)

    def close_unfinished(self) -> None:
        """Tell PRUNED every trial Tune stopped without completing it (the time budget)."""
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id not in self._completed_trials:
                latest = self._latest.pop(trial_id, None)
                try:
                    if latest is not None:
                        ot_trial.report(*latest)
                    self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
                except Exception as exc:
                    log.warning("could not close Optuna trial %s: %s", ot_trial.number, exc)
                self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """The latest value at step = epoch (a resumed trial's Tune iteration restarts at 1),
        kept until the trial ends (see module docstring)."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = result.get(self.metric)
        if value is not None:
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            self._latest[trial_id] = (float(value), step)


class ResumingOptunaSearch(HonestOptunaSearch):
    """Hands out interrupted Optuna trials again before asking Optuna for new ones.

    ``resume`` maps an interrupted trial's number to extra constants for its config (the
    checkpoint to continue from). Re-running the define-by-run function on the *existing* Optuna
    trial returns the values it already has, so the trial keeps its number and parameters and no
    duplicate appears in the study.
    """

    def __init__(self, *args: Any, resume: dict[int, dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume = dict(resume)

    def suggest(self, trial_id: str) -> dict | None:
        if self._resume and trial_id not in self._ot_trials:
            from optuna.trial import Trial

            number, extra = self._resume.popitem()
            frozen = next(
                t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number
            )
            ot_trial = Trial(self._ot_study, frozen._trial_id)
            self._ot_trials[trial_id] = ot_trial
            return {**self._suggest_from_define_by_run_func(self._space, ot_trial), **extra}
        return super().suggest(trial_id)
