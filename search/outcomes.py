"""How a trial ended, decided once, and what that means for MLflow and for Optuna.

The tracker (MLflow status), the searcher (Optuna state) and resume (closing stale runs) all read
these tables, so a trial can never be FINISHED in one store and FAIL in the other.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

#: outcome -> (MLflow run status, Optuna trial state)
OUTCOMES: dict[str, tuple[str, TrialState]] = {
    "completed": ("FINISHED", TrialState.COMPLETE),  # ran every epoch
    "early_stopped": ("KILLED", TrialState.PRUNED),  # the scheduler (ASHA) stopped it
    "stopped": ("KILLED", TrialState.PRUNED),  # gradient-health stopping or the time budget
    "diverged": ("FAILED", TrialState.FAIL),  # non-finite loss: no score to learn from
    "error": ("FAILED", TrialState.FAIL),  # the trial raised
    "no_result": ("KILLED", TrialState.FAIL),  # ended before its first epoch was reported
}
#: What an Optuna trial's final state says about a run whose own final write was lost.
FROM_OPTUNA = {
    TrialState.COMPLETE: "completed",
    TrialState.PRUNED: "stopped",
    TrialState.FAIL: "error",
}


def outcome(result: dict[str, Any] | None, epochs: int, error: bool = False) -> str:
    """The outcome of a trial that ended with ``result`` as its last report."""
    if error:
        return "error"
    if not result:
        return "no_result"
    if result.get("diverged"):
        return "diverged"
    if result.get("stop_reason"):
        return "stopped"
    if int(result.get("epoch", 0)) < epochs:
        return "early_stopped"
    return "completed"
