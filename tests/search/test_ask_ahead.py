"""The searcher in processes of its own (``searcher.ask_ahead``, ``searcher.processes``): it
hands out trials asked ahead, tells their ends as the in-driver searcher does (a stopped trial
PRUNED at its last epoch), puts trials never handed out back to WAITING unmarked (the next ask
hands them out with their parameters) and, after Ctrl+C, the unfinished ones back to WAITING
marked for resume; several processes take turns, each with its own seed and share. A child
that cannot start or dies says so in one error. Real child processes, real Optuna storage
(SQLite), and a real local Ray for whole studies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import run_study
from search.ask_ahead import AskAheadSearch, SearcherProcessError, _share
from search.schema import INTERRUPTED_ATTR, OBJECTIVE
from search.stores import optuna_storage
from search.tuner import make_searcher
from spaces import StudyConfig, load_config


def _config(tmp_path: Path, **more: object) -> StudyConfig:
    return load_config(
        {
            "name": "ahead",
            "search": {"activations": ["relu", "tanh"], "initializers": ["he_normal"]},
            "model": {"depth": 2, "width": 8},
            "training": {"epochs": 2},
            "searcher": {"name": "tpe", "ask_ahead": 2},
            "output_dir": str(tmp_path),
            **more,
        }
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _trials(url: str, study: str = "ahead") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def _asked_ahead(url: str, handed_out: int, ahead: int = 2) -> None:
    """Waits until the idle child has asked its trials ahead (it does between requests)."""
    deadline = time.monotonic() + 60
    while len(_trials(url)) < handed_out + ahead:
        assert time.monotonic() < deadline, "the child never asked ahead"
        time.sleep(0.05)


def _searcher(config: StudyConfig, url: str, limit: int = 10) -> AskAheadSearch:
    return AskAheadSearch(config, study_name="ahead", storage_url=url, resume=None, limit=limit)


def test_trials_are_asked_ahead_told_and_the_unused_put_back(tmp_path: Path, url: str) -> None:
    searcher = _searcher(_config(tmp_path), url)
    try:
        first, second = searcher.suggest("t1"), searcher.suggest("t2")
        assert isinstance(first, dict) and isinstance(second, dict)
        searcher.on_trial_result("t1", {OBJECTIVE: 0.4, "epoch": 1})
        searcher.on_trial_complete("t1", {OBJECTIVE: 0.5, "epoch": 2})
        searcher.on_trial_result("t2", {OBJECTIVE: 0.3, "epoch": 1})
        searcher.on_trial_complete("t2", {OBJECTIVE: 0.3, "epoch": 1})  # stopped early
        assert searcher.told == {"t1", "t2"}, "waits for the tells sent before it"
        assert searcher.asked == 2
        _asked_ahead(url, handed_out=2)
        searcher.close_unfinished()
    finally:
        searcher.close()
    trials = _trials(url)
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[0].value == 0.5 and trials[1].intermediate_values == {1: 0.3}
    assert trials[0].params["activation"] == first["activation"]
    ahead = trials[2:]
    assert len(ahead) == 2, "two asked ahead, never handed out"
    assert all(t.state == TrialState.WAITING for t in ahead)
    assert not any(INTERRUPTED_ATTR in t.user_attrs for t in ahead), "never started: not resumed"
    study = optuna.load_study(study_name="ahead", storage=url)
    again = make_searcher(_config(tmp_path), study_name="ahead", storage=optuna_storage(url))
    handed = again.suggest("next")
    assert handed is not None
    assert study.trials[2].number == ahead[0].number
    assert handed["activation"] == ahead[0].params["activation"], "its parameters, handed out"


def test_ctrl_c_puts_handed_out_trials_back_marked_and_asked_ahead_ones_unmarked(
    tmp_path: Path, url: str
) -> None:
    """Ctrl+C reaches the whole process group: the child ignores it and keeps answering; the
    driver then has it put the trials back."""
    searcher = _searcher(_config(tmp_path), url)
    try:
        searcher.suggest("t1")
        pid = searcher._children[0].process.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        searcher.suggest("t2")
        searcher.on_trial_complete("t1", {OBJECTIVE: 0.5, "epoch": 2})
        _asked_ahead(url, handed_out=2)
        stopped = searcher.interrupt(retry=True)
    finally:
        searcher.close()
    trials = _trials(url)
    assert stopped == [1]
    assert trials[0].state == TrialState.COMPLETE
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs[INTERRUPTED_ATTR]
    assert [t.state for t in trials[2:]] == [TrialState.WAITING] * 2
    assert not any(INTERRUPTED_ATTR in t.user_attrs for t in trials[2:])


def test_several_objectives_are_told_both_values_and_no_trial_beyond_the_limit(
    tmp_path: Path, url: str
) -> None:
    config = _config(tmp_path, objectives=[{"val_accuracy": "max"}, {"epoch_seconds": "min"}])
    searcher = _searcher(config, url, limit=1)
    try:
        searcher.suggest("t1")
        with pytest.raises(SearcherProcessError, match="more trials than the study holds"):
            searcher.suggest("t2")
        searcher.on_trial_result("t1", {OBJECTIVE: 0.4, "epoch": 1})  # none kept: Optuna's rule
        ended = {OBJECTIVE: 0.5, "mean_epoch_seconds": 0.2, "epoch": 2, "config": {"x": 1}}
        searcher.on_trial_complete("t1", ended)
        assert searcher.told == {"t1"}
    finally:
        searcher.close()
    (trial,) = _trials(url)
    assert (trial.state, trial.values) == (TrialState.COMPLETE, [0.5, 0.2])


def test_processes_take_turns_enqueued_points_first_and_each_tells_its_own(
    tmp_path: Path, url: str
) -> None:
    """Two processes, one trial ahead each: the study's enqueued points are asked before any
    other trial (whichever process asks them), trials come from each in turn with their own
    draws (each child its own sampler seed), each trial's end reaches the one that asked it;
    four trials is two each, so only their two asked ahead are left to put back."""
    points = [{"activation": "tanh", "lr": 0.01}, {"activation": "relu", "lr": 0.002}]
    search = {"activations": ["relu", "tanh"], "initializers": ["he_normal"], "enqueue": points}
    processes = {"ask_ahead": 1, "processes": 2}
    searcher = _searcher(_config(tmp_path, search=search, searcher=processes), url, 6)
    try:
        handed = [searcher.suggest(f"t{i}") for i in range(4)]
        for i in range(4):
            searcher.on_trial_complete(f"t{i}", {OBJECTIVE: 0.1 * i, "epoch": 2})
        assert searcher.told == {f"t{i}" for i in range(4)}
        assert searcher.asked == 4
        _asked_ahead(url, handed_out=4)
        searcher.close_unfinished()
    finally:
        searcher.close()
    trials = _trials(url)
    assert [(t.params["activation"], t.params["lr"]) for t in trials[:2]] == [
        ("tanh", 0.01),
        ("relu", 0.002),
    ]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.value for t in done) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert len({t.params["lr"] for t in done}) == 4, "no two processes drew the same trial"
    assert sorted(p["lr"] for p in handed if p) == sorted(t.params["lr"] for t in done)
    assert [t.state for t in trials if t not in done] == [TrialState.WAITING] * 2


def test_each_process_gets_its_share_of_the_trials_to_resume() -> None:
    config = load_config({"name": "s", "searcher": {"ask_ahead": 1, "processes": 2, "seed": 3}})
    resume = {3: {"ckpt": "a"}, 5: {}, 7: {"ckpt": "c"}}
    (first, mine), (second, theirs) = _share(config, resume, 0, 2), _share(config, resume, 1, 2)
    assert (mine, theirs) == ({3: {"ckpt": "a"}, 7: {"ckpt": "c"}}, {5: {}})
    assert first.searcher.seed == 3 and second.searcher.seed != 3
    assert _share(config, None, 0, 2)[1] is None, "the first one enqueues the study's points"
    assert _share(config, None, 1, 2)[1] == {}, "the others never enqueue them again"


def test_a_searcher_that_cannot_start_says_why(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'optuna.db'}"
    searcher = _searcher(_config(tmp_path), missing)
    try:
        with pytest.raises(SearcherProcessError, match="could not start: OperationalError"):
            searcher.suggest("t1")
    finally:
        searcher.close()


def test_a_searcher_process_that_dies_ends_the_study_with_one_error(
    tmp_path: Path, url: str
) -> None:
    searcher = _searcher(_config(tmp_path), url)
    try:
        searcher.suggest("t1")
        pid = searcher._children[0].process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SearcherProcessError, match=r"exit code -9.*'gradsweep resume'"):
            searcher.suggest("t2")
    finally:
        searcher.close()
    assert _trials(url)[0].state == TrialState.RUNNING, "left for resume, as a killed driver"


def test_a_study_asked_ahead_runs_every_trial_in_rounds(tmp_path: Path) -> None:
    """Three trials in rounds of two, two asked ahead: one child serves both rounds, every
    trial is told and on the leaderboard, and nothing is left asked."""
    result = run_study(_config(tmp_path, num_samples=3, trials_per_round=2))
    trials = _trials(result.optuna_storage, result.study_name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len(result.leaderboard) == 3
    told = sorted(t.params["activation"] for t in trials)
    assert sorted(result.leaderboard["activation"]) == told, "each run as its trial was asked"
