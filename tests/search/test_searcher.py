"""The searcher's bookkeeping with Optuna: a failed ``tell`` is retried, else closed FAIL with a
reason, and not told again when the failed try's write got through; only a stopped trial's last
epoch value is written; after Ctrl+C the handed-out trials go back to WAITING; with several
objectives, both values on COMPLETE, FAIL when one is missing or not finite, PRUNED with none
when stopped early, and no intermediate values (Optuna refuses them). Real Optuna storage
(SQLite); the only fake is the database hiccup, injected into that real storage."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from search.schema import INTERRUPTED_ATTR, OBJECTIVE, REASON_TAG
from search.searcher import HonestOptunaSearch, ResumingOptunaSearch
from spaces import define_space, load_config


class Hiccups(RDBStorage):
    """SQLite storage whose first ``fails`` writes of a final state COMPLETE raise, as a
    dropped database connection does (``fails`` < 0: every one)."""

    def __init__(self, url: str, fails: int) -> None:
        super().__init__(url)
        self.fails = fails
        self.refused = 0

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state == TrialState.COMPLETE and (self.fails < 0 or self.refused < self.fails):
            self.refused += 1
            raise OperationalError("UPDATE trials", {}, Exception("connection lost"))
        return super().set_trial_state_values(trial_id, state, values)


def _searcher(storage: RDBStorage) -> HonestOptunaSearch:
    return HonestOptunaSearch(
        space=lambda trial: {"x": trial.suggest_float("x", 0.0, 1.0)},
        metric=OBJECTIVE,
        mode="max",
        storage=storage,
        study_name="s",
        epochs=2,
        tell_retries_s=(0.01, 0.01),
    )


def _states(url: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name="s", storage=url).trials]


@pytest.mark.parametrize("fails", [1, 2])
def test_a_failed_tell_is_retried(tmp_path: Path, fails: int) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = Hiccups(url, fails)
    searcher = _searcher(storage)
    assert searcher.suggest("a") is not None
    searcher.on_trial_complete("a", {OBJECTIVE: 0.7, "epoch": 2})
    assert storage.refused == fails
    study = optuna.load_study(study_name="s", storage=url)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.7)]


def test_a_tell_that_keeps_failing_closes_the_trial_fail_with_the_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = Hiccups(url, fails=-1)
    searcher = _searcher(storage)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {OBJECTIVE: 0.7, "epoch": 2})  # does not raise
    assert storage.refused == 3, "the first try and two retries"
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    assert trial.state == TrialState.FAIL, "never left RUNNING, which resume would re-run"
    assert trial.user_attrs[REASON_TAG].startswith("Optuna refused COMPLETE: OperationalError")


class LostReply(RDBStorage):
    """SQLite storage whose first write of COMPLETE commits and then raises, as a connection
    dropped after the database's commit but before its reply does."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        written = super().set_trial_state_values(trial_id, state, values)
        if state == TrialState.COMPLETE:
            raise OperationalError("UPDATE trials", {}, Exception("connection lost after commit"))
        return written


def test_a_tell_whose_write_got_through_is_not_told_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The failed tell's write landed: the searcher sees the trial finished and stops there,
    rather than retrying a tell Optuna refuses and then trying to close the trial FAIL."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(LostReply(url))
    searcher.suggest("a")
    study = searcher._ot_study
    tells: list[Any] = []

    def tell(*args: Any, **kwargs: Any) -> Any:
        tells.append(kwargs.get("state"))
        return optuna.Study.tell(study, *args, **kwargs)

    monkeypatch.setattr(study, "tell", tell)
    with caplog.at_level("WARNING", logger="search.searcher"):
        searcher.on_trial_complete("a", {OBJECTIVE: 0.7, "epoch": 2})
    assert tells == [TrialState.COMPLETE], "told once, not retried"
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.7)
    assert REASON_TAG not in trial.user_attrs
    warned = [r.getMessage() for r in caplog.records if r.name == "search.searcher"]
    assert warned == [], "nothing to warn about: the trial was told"


def test_ctrl_c_puts_unfinished_trials_back_to_waiting(tmp_path: Path) -> None:
    """WAITING keeps the trial's number and parameters, and only a claim moves it on."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = RDBStorage(url)
    searcher = _searcher(storage)
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {OBJECTIVE: 0.5, "epoch": 2})
    assert searcher.interrupt() == [1, 2]
    assert _states(url) == [TrialState.COMPLETE, TrialState.WAITING, TrialState.WAITING]
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert all("x" in t.params for t in trials)
    marked = [t.number for t in trials if t.user_attrs.get(INTERRUPTED_ATTR)]
    assert marked == [1, 2], "told apart from enqueued trials, which also wait"
    trial_id = optuna.load_study(study_name="s", storage=url).trials[1]._trial_id
    assert storage.set_trial_state_values(trial_id, TrialState.RUNNING), "claimed once"
    assert not storage.set_trial_state_values(trial_id, TrialState.RUNNING), "and only once"


def test_a_resume_claims_the_waiting_trials_with_their_numbers_and_parameters(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = _searcher(RDBStorage(url))
    asked = {trial_id: first.suggest(trial_id) for trial_id in ("a", "b")}
    assert first.interrupt() == [0, 1]
    again = ResumingOptunaSearch(
        space=lambda trial: {"x": trial.suggest_float("x", 0.0, 1.0)},
        metric=OBJECTIVE,
        mode="max",
        storage=RDBStorage(url),
        study_name="s",
        epochs=2,
        resume={0: {"checkpoint": "a"}, 1: {"checkpoint": "b"}},
    )
    assert again.suggest("b2") == {**asked["b"], "checkpoint": "b"}  # claims last first
    assert _states(url) == [TrialState.WAITING, TrialState.RUNNING], "claimed, not asked anew"
    assert again.suggest("a2") == {**asked["a"], "checkpoint": "a"}
    again.suggest("new")
    assert _states(url) == [TrialState.RUNNING] * 3, "then a new trial"


class CtrlCOnCreate(RDBStorage):
    """SQLite storage that gets Ctrl+C just after it created a trial (RUNNING in the database),
    before the searcher could record it: the moment the CI run of stop 22 caught."""

    def _create_new_trial(self, study_id: int, template_trial: Any = None) -> Any:
        trial = super()._create_new_trial(study_id, template_trial)  # what Optuna's cache calls
        os.kill(os.getpid(), signal.SIGINT)
        return trial


def test_ctrl_c_while_a_trial_is_asked_leaves_it_known_and_waiting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(CtrlCOnCreate(url))
    with pytest.raises(KeyboardInterrupt):
        searcher.suggest("a")
    assert searcher.interrupt() == [0], "the trial Optuna created is the searcher's to put back"
    assert _states(url) == [TrialState.WAITING]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl+C handler restored"


def test_an_ignored_ctrl_c_stays_ignored_while_a_trial_is_asked(tmp_path: Path) -> None:
    """A process started in the background ignores SIGINT: holding it must not turn it into a
    KeyboardInterrupt."""
    searcher = _searcher(CtrlCOnCreate(f"sqlite:///{tmp_path / 'optuna.db'}"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert searcher.suggest("a") is not None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert searcher.asked == 1


def test_an_interrupted_confirmation_closes_its_trials_fail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(RDBStorage(url))
    searcher.suggest("a")
    assert searcher.interrupt(retry=False) == [0]
    (trial,) = optuna.load_study(study_name="s", storage=url).trials
    assert (trial.state, trial.user_attrs[REASON_TAG]) == (TrialState.FAIL, "interrupted")


# ---------------------------------------------------------------------------------------------
# Several objectives

EPOCHS = 3


@pytest.fixture
def searcher() -> HonestOptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    config = load_config("quick", ["objectives=[val_accuracy: max, epoch_seconds: min]"])
    return HonestOptunaSearch(
        space=define_space(config),
        metric=["best_val_accuracy", "mean_epoch_seconds"],
        mode=["max", "min"],
        epochs=EPOCHS,
    )


def _result(epoch: int = EPOCHS, **values: float) -> dict[str, float]:
    return {"epoch": epoch, "best_val_accuracy": 0.8, "mean_epoch_seconds": 0.5, **values}


def test_completed_trial_tells_both_values(searcher: HonestOptunaSearch) -> None:
    searcher.suggest("a")
    searcher.on_trial_result("a", _result(epoch=1))  # no intermediate value, no error
    searcher.on_trial_complete("a", _result())
    (trial,) = searcher._ot_study.trials
    assert trial.state == TrialState.COMPLETE and trial.values == [0.8, 0.5]
    assert trial.intermediate_values == {}
    assert searcher._ot_study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]


@pytest.mark.parametrize(
    ("result", "state"),
    [
        (_result(mean_epoch_seconds=math.nan), TrialState.FAIL),
        ({"epoch": EPOCHS, "best_val_accuracy": 0.8}, TrialState.FAIL),
        (_result(epoch=1), TrialState.PRUNED),  # stopped early by the scheduler
    ],
    ids=["nan-objective", "missing-objective", "early-stopped"],
)
def test_no_values_unless_every_objective_is_there(
    searcher: HonestOptunaSearch, result: dict[str, float], state: TrialState
) -> None:
    searcher.suggest("a")
    searcher.on_trial_complete("a", result)
    (trial,) = searcher._ot_study.trials
    assert trial.state == state and trial.values is None


# ---------------------------------------------------------------------------------------------
# What is written: a stopped trial's last value only

FULL = 4  # epochs of a full trial below


@pytest.fixture
def single(tmp_path: Path) -> HonestOptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return HonestOptunaSearch(
        space=lambda trial: trial.suggest_float("lr", 1e-3, 1e-1, log=True) and None,
        metric=OBJECTIVE,
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"),
        epochs=FULL,
    )


def _run(single: HonestOptunaSearch, trial_id: str, epochs: int) -> dict:
    """Suggest, report ``epochs`` epochs (value 0.1 * epoch) and return the last result."""
    single.suggest(trial_id)
    result: dict = {}
    for epoch in range(1, epochs + 1):
        result = {OBJECTIVE: 0.1 * epoch, "epoch": epoch}
        single.on_trial_result(trial_id, result)
    return result


def _trials(single: HonestOptunaSearch) -> list[optuna.trial.FrozenTrial]:
    return single._ot_study.get_trials(deepcopy=False)


def test_a_completed_trial_is_told_its_value_and_no_epoch_values(
    single: HonestOptunaSearch,
) -> None:
    single.on_trial_complete("a", _run(single, "a", FULL))
    (trial,) = _trials(single)
    assert trial.state is TrialState.COMPLETE
    assert trial.value == pytest.approx(0.1 * FULL)
    assert trial.intermediate_values == {}


def test_an_early_stopped_trial_keeps_its_last_value_at_its_epoch(
    single: HonestOptunaSearch,
) -> None:
    single.on_trial_complete("a", _run(single, "a", 2))
    (trial,) = _trials(single)
    assert trial.state is TrialState.PRUNED
    assert trial.intermediate_values == {2: pytest.approx(0.2)}


def test_a_trial_stopped_by_the_budget_keeps_its_last_value(single: HonestOptunaSearch) -> None:
    _run(single, "a", 3)
    single.close_unfinished()
    (trial,) = _trials(single)
    assert trial.state is TrialState.PRUNED
    assert trial.intermediate_values == {3: pytest.approx(0.3)}


def test_told_trials_are_not_held_but_still_counted(tmp_path: Path) -> None:
    """A study of many trials (and Tune's snapshots, which pickle the searcher) holds only the
    running trials' Optuna handles; ``asked`` and ``told`` still cover every trial, and Ctrl+C
    puts back only the running one."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(RDBStorage(url))
    for key in "abc":
        searcher.suggest(key)
    searcher.on_trial_complete("a", {OBJECTIVE: 0.5, "epoch": 2})
    searcher.on_trial_complete("b", {OBJECTIVE: 0.7, "epoch": 1})  # stopped early
    assert set(searcher._ot_trials) == {"c"}
    assert (searcher.asked, searcher.told) == (3, {"a", "b"})
    searcher.on_trial_complete("a", None, error=True)  # Tune's late error of a told trial
    assert searcher.interrupt() == [2]
    assert _states(url) == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING]
