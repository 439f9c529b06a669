"""Ray Tune's ``OptunaSearch``, telling Optuna honestly how each trial ended.

Stock ``OptunaSearch`` tells a trial that ASHA stopped early as COMPLETE with its last value,
which makes TPE treat a 2-epoch score as a finished one. Here:

- ran every epoch -> COMPLETE with the objective;
- stopped early (scheduler, or gradient-health stopping) -> PRUNED: Optuna keeps the
  last intermediate value it was told, which is how its own pruners record the case;
- diverged (non-finite loss) or crashed -> FAIL: there is no meaningful value to learn from, and
  a FAIL trial is excluded from TPE's good/bad split instead of being ranked as a zero.

No trial is left RUNNING by this process: a ``tell`` that fails is retried and then closed FAIL
with a reason, and after Ctrl+C the unfinished trials go back to WAITING, which resume claims.

Per-epoch values stay in the driver's memory: neither Tune scheduler reads them from Optuna (ASHA
is Tune's own), and TPE ranks a PRUNED trial by its last intermediate value, so only that one is
written, when the trial ends PRUNED. Writing every epoch cost one storage round trip per epoch
per trial on the driver's event loop (benchmarks/scale.py); the epoch curves are in MLflow.

The storage is wrapped in :class:`~search.ask_storage.AskStorage` and each ask reads the study
once (TPE's constant liar would read it again for every parameter it samples).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.ask_storage import AskStorage
from search.schema import INTERRUPTED_ATTR, OUTCOMES, REASON_TAG, outcome

log = logging.getLogger(__name__)
#: Pauses before the retries of a failed ``tell`` (a database hiccup, a dropped connection).
TELL_RETRIES_S = (0.2, 1.0, 3.0)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Ctrl+C inside the block is raised when it ends. A ``KeyboardInterrupt`` between Optuna
    creating a trial (RUNNING in storage) and this searcher recording it would leave a trial that
    ``interrupt`` never sees, RUNNING for good. Only the main thread can hold signals; elsewhere
    the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not caught:
        return
    if previous is signal.default_int_handler:  # Ctrl+C as usual
        raise KeyboardInterrupt
    if callable(previous):  # someone else's handler gets it
        previous(signal.SIGINT, None)
    elif previous == signal.SIG_DFL:  # the default: end the process, as it would have
        signal.raise_signal(signal.SIGINT)
    # SIG_IGN (started in the background): ignored, as it would have been


class HonestOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose completion tells COMPLETE, PRUNED or FAIL (see module docstring)."""

    def __init__(
        self,
        *args: Any,
        epochs: int,
        tell_retries_s: Sequence[float] = TELL_RETRIES_S,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("storage") is not None:  # one read of the study per ask (AskStorage)
            kwargs["storage"] = AskStorage(kwargs["storage"])
        super().__init__(*args, **kwargs)
        self._epochs = epochs
        self._tell_retries_s = tuple(tell_retries_s)
        self._latest: dict[str, tuple[float, int]] = {}  # trial id -> (value, epoch), unwritten
        self._told_and_dropped = 0  # told trials no longer held in ``_ot_trials``

    def suggest(self, trial_id: str) -> dict | None:
        with sigint_deferred(), self._one_read():  # recorded before Ctrl+C can land
            return super().suggest(trial_id)

    def _one_read(self) -> AbstractContextManager[None]:
        storage = self._ot_study._storage if self._ot_study is not None else None
        return storage.one_read() if isinstance(storage, AskStorage) else nullcontext()

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        with sigint_deferred():  # told and recorded as one step
            self._complete(trial_id, result, error)

    def _complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state = OUTCOMES[outcome(result, self._epochs, error)][1]
        value: float | list[float] | None = None
        if state is TrialState.COMPLETE:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [(result or {}).get(m) for m in metrics]
            if any(v is None or not math.isfinite(float(v)) for v in values):
                state = TrialState.FAIL
            else:
                numbers = [float(v) for v in values]
                value = numbers if isinstance(self.metric, list) else numbers[0]
        self._write_latest(trial_id, ot_trial, state)
        self._tell(ot_trial, value, state)
        self._completed_trials.add(trial_id)
        self._drop(trial_id)

    def _drop(self, trial_id: str) -> None:
        """A told trial's Optuna handle is not needed again: a study of many trials (and Tune's
        snapshots of this searcher, which pickle it) holds only the running ones."""
        if self._ot_trials.pop(trial_id, None) is not None:
            self._told_and_dropped += 1

    def _write_latest(self, trial_id: str, ot_trial: Any, state: TrialState) -> None:
        """A PRUNED trial's last intermediate value, which TPE ranks it by."""
        latest = self._latest.pop(trial_id, None)
        if state is TrialState.PRUNED and latest is not None:
            try:
                ot_trial.report(*latest)
            except Exception as exc:  # the tell that follows still closes the trial
                log.warning(
                    "could not record Optuna trial %s's last value: %s", ot_trial.number, exc
                )

    def _tell(self, ot_trial: Any, value: float | list[float] | None, state: TrialState) -> None:
        """``tell``, retried; failing that, the trial is closed FAIL with the reason (a trial
        left RUNNING would be run again by ``resume``). Never raises: bookkeeping must not end
        the search."""
        problem: Exception | None = None
        for pause in (*self._tell_retries_s, None):
            try:
                self._ot_study.tell(ot_trial, value, state=state)
                return
            except Exception as exc:
                problem = exc
                if self._finished(ot_trial):  # told already (an earlier try got through)
                    return
            if pause is not None:
                time.sleep(pause)
        reason = f"Optuna refused {state.name}: {problem.__class__.__name__}: {problem}"
        storage = self._ot_study._storage
        try:
            storage.set_trial_user_attr(ot_trial._trial_id, REASON_TAG, reason[:500])
            storage.set_trial_state_values(ot_trial._trial_id, TrialState.FAIL)
            log.warning("Optuna trial %s closed FAIL: %s", ot_trial.number, reason)
        except Exception as exc:  # the storage is gone: resume finds it RUNNING and re-runs it
            log.warning("could not tell Optuna trial %s: %s (%s)", ot_trial.number, reason, exc)

    def _finished(self, ot_trial: Any) -> bool:
        try:
            frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        except Exception:
            return False
        return frozen.state.is_finished()

    def close_unfinished(self) -> None:
        """Tell PRUNED every trial Tune stopped without completing it (the time budget)."""
        for trial_id, ot_trial in list(self._ot_trials.items()):
            if trial_id not in self._completed_trials:
                self._write_latest(trial_id, ot_trial, TrialState.PRUNED)
                self._tell(ot_trial, None, TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                self._drop(trial_id)

    def release(self, trial_id: str) -> None:
        """A trial asked but never handed to Tune (asked ahead, :mod:`search.ask_ahead`) goes
        back to WAITING, unmarked: the study's next ask hands it out again, as it does an
        enqueued trial, with the parameters it has. It no longer counts as asked."""
        ot_trial = self._ot_trials.pop(trial_id)
        self._ot_study._storage.set_trial_state_values(ot_trial._trial_id, TrialState.WAITING)

    @property
    def told(self) -> set[str]:
        """Tune trial ids whose end this searcher has told Optuna (or closed)."""
        return set(self._completed_trials)

    @property
    def asked(self) -> int:
        """How many trials this searcher has handed out."""
        return len(self._ot_trials) + self._told_and_dropped

    def interrupt(self, retry: bool = True) -> list[int]:
        """After Ctrl+C: every trial this searcher handed out and nobody finished goes back to
        WAITING (``retry``), which resume claims and continues from its checkpoint; else FAIL
        with a reason. Returns their Optuna numbers."""
        storage = self._ot_study._storage if self._ot_study is not None else None
        stopped = []
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id in self._completed_trials or storage is None:
                continue
            try:
                if retry:  # marked: an enqueued trial never asked also waits, as new
                    storage.set_trial_user_attr(ot_trial._trial_id, INTERRUPTED_ATTR, True)
                    storage.set_trial_state_values(ot_trial._trial_id, TrialState.WAITING)
                else:
                    storage.set_trial_user_attr(ot_trial._trial_id, REASON_TAG, "interrupted")
                    storage.set_trial_state_values(ot_trial._trial_id, TrialState.FAIL)
                stopped.append(ot_trial.number)
            except Exception as exc:  # finished meanwhile, or the storage is gone
                log.warning("could not close Optuna trial %s: %s", ot_trial.number, exc)
            self._completed_trials.add(trial_id)
        return sorted(stopped)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """The latest value at step = epoch (a resumed trial's Tune iteration restarts at 1),
        kept until the trial ends (see module docstring). A multi-objective study has none
        (Optuna refuses them)."""
        if isinstance(self.metric, list):
            return
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
        with sigint_deferred():  # claimed and recorded before Ctrl+C can land
            return self._claim(trial_id)

    def _claim(self, trial_id: str) -> dict | None:
        if self._resume and trial_id not in self._ot_trials:
            from optuna.trial import Trial

            number, extra = self._resume.popitem()
            study = self._ot_study
            storage = study._storage  # that trial alone, not the study: one claim per trial
            found = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            if storage.get_trial(found).state == TrialState.WAITING:  # put back after a Ctrl+C
                storage.set_trial_state_values(found, TrialState.RUNNING)
            ot_trial = Trial(study, found)
            self._ot_trials[trial_id] = ot_trial
            return {**self._suggest_from_define_by_run_func(self._space, ot_trial), **extra}
        return super().suggest(trial_id)
