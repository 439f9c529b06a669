"""TPE with a capped history: what it models, that it still searches, and that under the cap it
is Optuna's TPE."""

from __future__ import annotations

import random
from typing import Any

import optuna
import pytest
from optuna.samplers._tpe.sampler import _split_trials
from optuna.trial import FrozenTrial, TrialState

from spaces import load_config, make_sampler
from spaces.tpe import CappedTPESampler

X = optuna.distributions.FloatDistribution(0.0, 1.0)
Y = optuna.distributions.FloatDistribution(0.0, 1.0)
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _study(n: int, directions: list[str], pruned_every: int = 0, running: int = 0) -> optuna.Study:
    """``n`` finished trials at random points (every ``pruned_every``-th PRUNED with one
    intermediate value), then ``running`` RUNNING ones."""
    rng = random.Random(1)
    trials = []
    for i in range(n):
        params = {"x": rng.random(), "y": rng.random()}
        dists = {"x": X, "y": Y}
        if pruned_every and i % pruned_every == 0:
            trial = optuna.trial.create_trial(
                params=params,
                distributions=dists,
                state=TrialState.PRUNED,
                intermediate_values={1: rng.random()},
            )
        else:
            values = [rng.random() for _ in directions]
            trial = optuna.trial.create_trial(params=params, distributions=dists, values=values)
        trials.append(trial)
    study = optuna.create_study(directions=directions)
    study.add_trials(trials)
    for _ in range(running):
        study.ask({"x": X, "y": Y})
    return study


def _seen(sampler: CappedTPESampler, study: optuna.Study) -> list[FrozenTrial]:
    """The trials the sampler's TPE reads when it samples (constant liar: running ones too)."""
    return sampler._view(study)._get_trials(deepcopy=False, states=STATES, use_cache=False)


def _below(study: optuna.Study, trials: list[FrozenTrial], n: int) -> set[int]:
    finished = [t for t in trials if t.state != TrialState.RUNNING]
    return {t.number for t in _split_trials(study, finished, n)[0]}


def test_the_view_holds_the_cap_the_best_the_recent_and_every_running_trial() -> None:
    study = _study(600, ["maximize"], pruned_every=7, running=5)
    sampler = CappedTPESampler(history=300, seed=0)
    seen = _seen(sampler, study)
    everything = study.get_trials(deepcopy=False)
    finished = [t for t in seen if t.state != TrialState.RUNNING]
    assert len(finished) == 300
    assert [t.number for t in seen] == sorted(t.number for t in seen)  # TPE weighs by order
    assert {t.number for t in seen if t.state == TrialState.RUNNING} == {600, 601, 602, 603, 604}
    best = _below(study, everything, 25)  # what plain TPE calls good at 600 trials
    assert best <= {t.number for t in finished}
    rest = sorted(set(range(600)) - best)
    assert {t.number for t in finished} - best == set(rest[-(300 - 25) :])  # the most recent
    assert any(t.state == TrialState.PRUNED for t in finished)  # pruned ones are modelled too


def test_the_best_kept_across_asks_are_the_best_of_the_whole_history() -> None:
    study = _study(300, ["minimize"], pruned_every=5)
    sampler = CappedTPESampler(history=100, seed=0)
    study.sampler = sampler
    for _ in range(60):
        trial = study.ask()
        value = trial.suggest_float("x", 0, 1) + trial.suggest_float("y", 0, 1)
        study.tell(trial, value)
        seen = _seen(sampler, study)
        assert sum(t.state != TrialState.RUNNING for t in seen) == 100
        assert {t.number for t in sampler._best} == _below(study, study.trials, 10)


def test_the_cap_reaches_the_model_and_its_good_set_is_plain_tpes(monkeypatch: Any) -> None:
    """With one objective and a cap >= 250, TPE's good density is built from the same trials as
    plain TPE's; its bad density from the cap's other trials only."""
    study = _study(700, ["maximize"], pruned_every=9)
    modelled: dict[str, dict[bool, set[int]]] = {}
    for name, sampler in [
        ("plain", optuna.samplers.TPESampler(seed=0)),
        ("capped", CappedTPESampler(history=300, seed=0)),
    ]:
        modelled[name] = {}
        build = sampler._build_parzen_estimator

        def spy(study: Any, space: Any, trials: Any, handle_below: bool, _b: Any = build) -> Any:
            modelled[name][handle_below] = {t.number for t in trials}  # noqa: B023
            return _b(study, space, trials, handle_below)

        monkeypatch.setattr(sampler, "_build_parzen_estimator", spy)
        study.sampler = sampler
        trial = study.ask({"x": X, "y": Y})
        study.tell(trial, state=TrialState.FAIL)  # not modelled: the next ask sees the same
    assert modelled["capped"][True] == modelled["plain"][True]
    assert len(modelled["capped"][True]) == 25
    assert len(modelled["capped"][False]) == 300 - 25
    assert len(modelled["plain"][False]) == 700 - 25


def test_several_objectives_keep_the_front() -> None:
    study = _study(400, ["maximize", "minimize"], running=3)
    sampler = CappedTPESampler(history=100, seed=0)
    seen = {t.number for t in _seen(sampler, study)}
    front = {t.number for t in study.best_trials}
    assert len(front) <= 10  # a tenth of the cap: the whole front fits the good set
    assert front <= seen
    assert len(seen) == 100 + 3


def _search(sampler: optuna.samplers.BaseSampler, n: int) -> list[float]:
    study = optuna.create_study(sampler=sampler)
    study.optimize(
        lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2 + (t.suggest_float("y", 0, 1) - 0.7) ** 2,
        n_trials=n,
    )
    return [t.value for t in study.trials if t.value is not None]


def test_a_capped_tpe_still_searches() -> None:
    """Past its cap it keeps homing in where random search does not."""
    capped = _search(CappedTPESampler(history=60, seed=0), 240)
    plain = _search(optuna.samplers.RandomSampler(seed=0), 240)
    late = slice(180, 240)  # well past the cap
    assert sum(capped[late]) < sum(plain[late]) / 3


def test_under_the_cap_it_draws_what_plain_tpe_draws() -> None:
    assert _search(CappedTPESampler(history=100, seed=5), 40) == _search(
        optuna.samplers.TPESampler(seed=5), 40
    )


def test_history_unset_is_optunas_tpe_and_set_is_capped() -> None:
    plain = make_sampler(load_config({"name": "s", "searcher": {"seed": 5}}))
    assert type(plain) is optuna.samplers.TPESampler
    assert _search(plain, 30) == _search(optuna.samplers.TPESampler(seed=5), 30)
    capped = make_sampler(
        load_config({"name": "s", "searcher": {"history": 1000, "constant_liar": False}})
    )
    assert isinstance(capped, CappedTPESampler)
    assert capped._history == 1000 and capped._constant_liar is False


def test_a_cap_below_the_startup_trials_is_refused() -> None:
    with pytest.raises(ValueError, match="n_startup_trials"):
        CappedTPESampler(history=5)
