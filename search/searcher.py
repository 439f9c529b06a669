"""Ray Tune's ``OptunaSearch``, telling Optuna honestly how each trial ended.

Stock ``OptunaSearch`` tells a trial that ASHA stopped early as COMPLETE with its last value,
which makes TPE treat a 2-epoch score as a finished one. Here:

- ran every epoch -> COMPLETE with the objective;
- stopped early (scheduler, or gradient-health stopping) -> PRUNED: Optuna keeps the
  intermediate values it was told per epoch, which is how its own pruners record the case;
- diverged (non-finite loss) or crashed -> FAIL: there is no meaningful value to learn from, and
  a FAIL trial is excluded from TPE's good/bad split instead of being ranked as a zero.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


def trial_state(result: dict[str, Any] | None, error: bool, epochs: int) -> TrialState:
    """The Optuna state a finished Tune trial deserves (see module docstring)."""
    if error or not result:
        return TrialState.FAIL
    if result.get("diverged"):
        return TrialState.FAIL
    if result.get("stop_reason") or int(result.get("epoch", 0)) < epochs:
        return TrialState.PRUNED
    return TrialState.COMPLETE


class HonestOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose completion tells COMPLETE, PRUNED or FAIL (see module docstring)."""

    def __init__(self, *args: Any, epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epochs = epochs

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state = trial_state(result, error, self._epochs)
        value = None
        if state is TrialState.COMPLETE:
            value = result.get(self.metric) if result else None
            if value is None or not math.isfinite(float(value)):
                state, value = TrialState.FAIL, None
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # never let bookkeeping end the search
            log.warning("could not tell Optuna trial %s: %s", ot_trial.number, exc)
        self._completed_trials.add(trial_id)
