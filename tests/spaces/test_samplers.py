"""Every registered sampler continues a study it picks up instead of drawing its first trials
again (what a resume does: a new sampler on the study's storage)."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from spaces import SAMPLERS, define_space, load_config, make_sampler
from spaces.samplers import continued_seed

FIRST, THEN = 4, 4


def _ask(study: optuna.Study, config: Any, sampler: optuna.samplers.BaseSampler, n: int) -> list:
    """``n`` trials as Ray Tune's OptunaSearch makes them: ask, run the define-by-run space."""
    study.sampler = sampler
    space = define_space(config)
    drawn = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        study.tell(trial, -abs(math.log10(trial.params["lr"]) + 2))  # best near lr = 0.01
        drawn.append(tuple(sorted(trial.params.items())))
    return drawn


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_resumed_sampler_draws_new_trials(name: str) -> None:
    config = load_config(
        {
            "name": "s",
            "search": {"activations": ["relu", "elu", "tanh"], "lr": {"low": 1e-3, "high": 1e-1}},
            "searcher": {"name": name, "seed": 3},
        }
    )
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    first = _ask(study, config, make_sampler(config), FIRST)
    resumed = _ask(study, config, make_sampler(config, len(study.trials)), THEN)
    assert not set(resumed) & set(first), f"{name} repeated trials after a resume"
    for key in {k for params in first for k, _ in params}:  # no parameter's draws start over
        before = [dict(p).get(key) for p in first]
        if len(set(before)) > 1:
            assert [dict(p).get(key) for p in resumed] != before[:THEN], f"{name}: {key}"


def test_a_fresh_study_keeps_the_configured_seed() -> None:
    assert continued_seed(7, 0) == 7
    assert len({continued_seed(7, n) for n in range(1, 50)} | {7}) == 50


def test_tpe_settings_reach_the_sampler_and_default_to_optunas() -> None:
    default = make_sampler(load_config({"name": "s"}))
    assert isinstance(default, optuna.samplers.TPESampler)
    reference = optuna.samplers.TPESampler()
    assert default._constant_liar == reference._constant_liar
    assert default._multivariate == reference._multivariate
    tuned = make_sampler(
        load_config({"name": "s", "searcher": {"multivariate": False, "constant_liar": False}})
    )
    assert tuned._constant_liar is False
    assert tuned._multivariate is False


@pytest.mark.parametrize(("key", "value"), [("constant_liar", False), ("history", 1000)])
def test_tpe_settings_are_refused_for_another_searcher(key: str, value: Any) -> None:
    from spaces import ConfigError

    with pytest.raises(ConfigError, match=rf"{key}: a TPE setting, but searcher\.name is"):
        load_config({"name": "s", "searcher": {"name": "random", key: value}})


@pytest.mark.parametrize("history", [0, 249])
def test_a_tpe_history_too_short_to_hold_the_good_set_is_refused(history: int) -> None:
    from spaces import ConfigError

    with pytest.raises(ConfigError, match=r"searcher\.history: at least 250 trials .*or unset"):
        load_config({"name": "s", "searcher": {"history": history}})
    assert load_config({"name": "s", "searcher": {"history": 250}}).searcher.history == 250
