"""The searcher's storage reads the study once per ask, and changes nothing else: TPE (constant
liar, a conditional alpha sampled on its own) asks exactly what it asks over the bare storage;
every answer shows this process's own writes; another process's writes are seen at the next ask;
a claimed waiting trial is read again. Real Optuna storage, SQLite and PostgreSQL."""

from __future__ import annotations

import pickle
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from postgres import PG, admin_connection
from ray.tune.search.optuna import OptunaSearch

from search.ask_storage import AskStorage
from search.schema import OBJECTIVE
from search.searcher import HonestOptunaSearch
from search.stores import optuna_storage
from spaces import define_space, grid_size, load_config, make_sampler

SPACE = {
    "name": "t",
    "data": {"name": "digits"},
    "search": {
        "activations": {"relu": {}, "tanh": {}, "elu": {"alpha": {"low": 0.5, "high": 1.5}}},
        "initializers": ["pytorch_default", "he_normal"],
        "batch_norm": ["none", "before"],
        "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    },
    "training": {"epochs": 2},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    admin = admin_connection(PG)
    admin.autocommit = True
    name = f"gradsweep_test_{secrets.token_hex(4)}_ask"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _fill(storage: Any, names: list[str], trials: int) -> None:
    """The same ``trials`` COMPLETE trials, random over the space, in each study of ``names``."""
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    space = define_space(load_config(SPACE, []))
    for i in range(trials):
        trial = draw.ask()
        space(trial)
        draw.tell(trial, (i * 0.37) % 1.0)
    for name in names:
        optuna.create_study(storage=storage, study_name=name, direction="maximize").add_trials(
            draw.trials
        )


def _searcher(cls: type[OptunaSearch], storage: Any, name: str, **kwargs: Any) -> Any:
    return cls(
        space=define_space(load_config(SPACE, [])),
        metric=OBJECTIVE,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=3),  # Optuna 5's defaults: liar, multivariate
        study_name=name,
        storage=storage,
        **kwargs,
    )


def _reads(storage: AskStorage) -> list[int]:
    """Counts the whole-study reads that reach the wrapped storage."""
    counted = [0]
    read = storage._inner.get_all_trials

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return read(*args, **kwargs)

    storage._inner.get_all_trials = counting  # type: ignore[method-assign]
    return counted


def test_tpe_asks_the_same_as_over_the_bare_storage_with_one_read_per_ask(url: str) -> None:
    storage = optuna_storage(url)
    _fill(storage, ["bare", "kept"], 20)
    bare = _searcher(OptunaSearch, storage, "bare")
    kept = _searcher(HonestOptunaSearch, storage, "kept", epochs=2)
    reads = _reads(kept._ot_study._storage)
    running: deque[str] = deque()
    asked_alpha = False
    for i in range(16):
        if len(running) == 6:  # 6 running: the constant liar has trials to penalise
            done = running.popleft()
            for searcher in (bare, kept):
                searcher.on_trial_complete(done, {OBJECTIVE: (i * 0.61) % 1.0, "epoch": 2})
        running.append(f"t{i}")
        before = reads[0]
        params = [searcher.suggest(running[-1]) for searcher in (bare, kept)]
        assert params[0] == params[1]
        assert reads[0] - before == 1
        asked_alpha |= "elu_alpha" in params[1]
    assert asked_alpha  # the conditional alpha was sampled on its own, from the kept read too
    assert [t.params for t in kept._ot_study.trials] == [t.params for t in bare._ot_study.trials]


def test_answers_show_own_writes_and_others_writes_at_the_next_ask(url: str) -> None:
    storage = AskStorage(optuna_storage(url))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    other = optuna.load_study(study_name="s", storage=url)  # another process, say
    x = FloatDistribution(0.0, 1.0)
    with storage.one_read():
        first = study.ask()  # created here: in the kept read once read back
        assert [t.number for t in study.get_trials(deepcopy=False)] == [0]
        first.suggest_float("x", 0.0, 1.0)
        assert study.get_trials(deepcopy=False)[0].params == first.params  # own write shown
        done = optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": x}, value=1)
        other.add_trial(done)
        assert len(study.get_trials(deepcopy=False)) == 1  # another's: not within this ask
    with storage.one_read():
        assert len(study.get_trials(deepcopy=False)) == 2  # ... but at the next one
    study.enqueue_trial({"x": 0.25})
    with storage.one_read():
        states = [t.state for t in study.get_trials(deepcopy=False)]
        assert states[-1] == TrialState.WAITING
        claimed = study.ask()  # the waiting trial, claimed: the kept read is dropped
        assert claimed.number == 2
        assert study.get_trials(deepcopy=False)[-1].state == TrialState.RUNNING
        assert claimed.suggest_float("x", 0.0, 1.0) == 0.25


def test_a_kept_read_is_one_threads_and_one_asks(tmp_path: Path) -> None:
    storage = AskStorage(optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}"))
    study = optuna.create_study(storage=storage, study_name="s")
    seen: list[int] = []
    with storage.one_read():
        assert study.get_trials(deepcopy=False) == []
        study.tell(study.ask(), 1.0)  # a state change: read again
        assert len(study.get_trials(deepcopy=False)) == 1
        thread = threading.Thread(target=lambda: seen.append(len(study.get_trials())))
        thread.start()
        thread.join()
    assert seen == [1]
    again = pickle.loads(pickle.dumps(storage))  # Tune may pickle the searcher with it
    with again.one_read():
        assert len(optuna.load_study(study_name="s", storage=again).trials) == 1


def test_the_grid_searcher_finds_the_asked_trial_in_the_kept_read(tmp_path: Path) -> None:
    """Optuna's brute force looks for the trial being asked among the study's trials."""
    grid = {
        **SPACE,
        "searcher": {"name": "grid"},
        "search": {
            **SPACE["search"],
            "activations": {"relu": {}, "elu": {"alpha": {"low": 0.5, "high": 1.5, "grid": 2}}},
            "lr": {"low": 1e-3, "high": 1e-1, "log": True, "grid": 2},
        },
    }
    config = load_config(grid, [])
    searcher = HonestOptunaSearch(
        space=define_space(config),
        metric=OBJECTIVE,
        mode="max",
        sampler=make_sampler(config),
        study_name="s",
        storage=optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}"),
        epochs=2,
    )
    size = grid_size(config)
    asked = [searcher.suggest(f"t{i}") for i in range(size)]
    assert len({tuple(sorted(p.items())) for p in asked}) == size  # each configuration once
