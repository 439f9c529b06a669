"""The Optuna storage the searcher asks through: the study is read once per ask, not per sampler
look.

One ask reads the whole study several times: the waiting-trial queue, the search space, then
TPE's constant liar once more for every parameter it samples (it skips Optuna's per-ask cache,
to see the running trials' latest parameters). On an RDB storage each read sends seven queries
and rebuilds every running trial, so on a large study most of the driver's ask is these reads
(benchmarks/ask_cost.py). Inside :meth:`AskStorage.one_read` the first read of the study is kept
and later reads are answered from it, with this process's own writes since then applied:

- a trial created here is added when first read back (``get_trial``, as ``Trial`` does);
- a trial given a parameter or attribute here is read again (that trial alone) before the next
  answer, so every answer shows what this process wrote;
- a change of a trial's state (a waiting trial claimed) drops the kept read altogether.

What other processes write during one ask is seen at the next ask, as with Optuna's own cache
(``Study._get_trials(use_cache=True)``, also renewed once per ask). Outside ``one_read``, and in
other threads, every call goes straight to the storage; writes always do. The storage stays the
shared truth: nothing is written later than it would be without this class.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class _Read:
    """One ask's kept read of one study: trials by id, in number order."""

    def __init__(self, trials: list[FrozenTrial]) -> None:
        self.trials = {t._trial_id: t for t in trials}
        self.stale: set[int] = set()  # written here since: read again before answering


class AskStorage(optuna.storages.BaseStorage):
    """Wraps the storage a study opens (see module docstring); ``one_read`` scopes an ask."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        # An RDBStorage gets the cache of finished trials a study would give it (create_study
        # wraps it the same way); so a read fetches only unfinished and new trials.
        self._inner = optuna.storages.get_storage(storage)
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"_inner": self._inner}  # a kept read belongs to one thread's ask

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._inner = state["_inner"]
        self._local = threading.local()

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """Reads of trials inside the block share the first one (see module docstring)."""
        self._local.reads = {}
        self._local.created = {}
        try:
            yield
        finally:
            self._local.reads = self._local.created = None

    def _reads(self) -> dict[int, _Read] | None:
        return getattr(self._local, "reads", None)

    def _written(self, trial_id: int) -> None:
        for read in (self._reads() or {}).values():
            if trial_id in read.trials:
                read.stale.add(trial_id)

    # -- reads of trials: answered from the ask's read ---------------------------------------

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        reads = self._reads()
        if reads is None:
            return self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        read = reads.get(study_id)
        if read is None:
            read = reads[study_id] = _Read(self._inner.get_all_trials(study_id, deepcopy=False))
        for trial_id in read.stale:
            read.trials[trial_id] = self._inner.get_trial(trial_id)
        read.stale.clear()
        trials = [t for t in read.trials.values() if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trial(self, trial_id: int) -> FrozenTrial:
        reads = self._reads()
        read = reads.get(self._local.created.get(trial_id, -1)) if reads is not None else None
        if read is None:  # not created in this ask, or the study's read is not kept
            return self._inner.get_trial(trial_id)
        if trial_id not in read.trials or trial_id in read.stale:
            read.trials[trial_id] = self._inner.get_trial(trial_id)
            read.stale.discard(trial_id)
        return copy.deepcopy(read.trials[trial_id])  # ``Trial`` changes its copy as it samples

    # -- writes: straight through, and noted ---------------------------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = self._inner.create_new_trial(study_id, template_trial)
        if self._reads() is not None:
            self._local.created[trial_id] = study_id
        return trial_id

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if self._reads() is not None:
            self._local.reads = {}  # which trials run or wait changed: read again
        return self._inner.set_trial_state_values(trial_id, state, values)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self._inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self._written(trial_id)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._inner.set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._written(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._inner.set_trial_user_attr(trial_id, key, value)
        self._written(trial_id)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._inner.set_trial_system_attr(trial_id, key, value)
        self._written(trial_id)

    # -- everything else: straight through ---------------------------------------------------

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self._inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._inner.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:  # FrozenStudy, not exported
        return self._inner.get_all_studies()

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._inner.get_best_trial(study_id)

    def remove_session(self) -> None:
        self._inner.remove_session()
