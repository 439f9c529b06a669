"""Study configs: presets, shorthand, overrides, and the define-by-run space they produce."""

from __future__ import annotations

import optuna
import pytest

from spaces import (
    ConfigError,
    Range,
    define_space,
    enqueued_points,
    grid_size,
    load_config,
    make_sampler,
    presets,
    resolve_trial,
)
from spaces.samplers import SAMPLERS
from trainers import ACTIVATIONS, BATCH_NORM_PLACEMENTS


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_preset_loads_and_describes_itself(name: str) -> None:
    config = load_config(name)
    assert config.name == name
    assert presets()[name]


def test_activation_list_shorthand_and_overrides() -> None:
    config = load_config(
        {"search": {"activations": ["relu", "elu"]}}, ["training.epochs=3", "model.depth=7"]
    )
    assert list(config.search.activations) == ["relu", "elu"]
    assert config.training.epochs == 3 and config.model.depth == 7


def test_overrides_do_not_touch_the_callers_dict() -> None:
    raw = {"model": {"depth": 2}}
    load_config(raw, ["model.depth=9"])
    assert raw == {"model": {"depth": 2}}


def test_every_registered_activation_is_a_valid_config_value() -> None:
    config = load_config({"search": {"activations": list(ACTIVATIONS)}})
    assert set(config.search.activations) == set(ACTIVATIONS)


def _ask(config, study: optuna.Study) -> tuple[optuna.Trial, dict]:
    trial = study.ask()
    constants = define_space(config)(trial)
    return trial, {**trial.params, **constants}


def test_alpha_is_suggested_only_for_its_own_activation() -> None:
    config = load_config(
        {
            "search": {
                "activations": {
                    "relu": {},
                    "leaky_relu": {"alpha": {"low": 0.01, "high": 0.3, "log": True}},
                    "elu": {"alpha": {"low": 0.5, "high": 1.5}},
                    "prelu": {"alpha": 0.2},
                }
            }
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial, params = _ask(config, study)
        activation = params["activation"]
        seen.add(activation)
        alpha_params = {k for k in trial.params if k.endswith("_alpha")}
        assert alpha_params == (
            {f"{activation}_alpha"} if activation in ("leaky_relu", "elu") else set()
        )
        spec = resolve_trial(config, params)
        if activation == "relu":
            assert spec.alpha is None
        elif activation == "prelu":
            assert spec.alpha == 0.2 and "alpha" not in trial.params
        else:
            assert spec.alpha == trial.params[f"{activation}_alpha"]
        study.tell(trial, 0.5)
    assert seen == {"relu", "leaky_relu", "elu", "prelu"}


def test_grid_enumerates_each_distinct_configuration_once() -> None:
    config = load_config(
        {
            "searcher": {"name": "grid"},
            "search": {
                "activations": {"relu": {}, "elu": {"alpha": {"low": 0.5, "high": 1.5, "grid": 2}}},
                "initializers": ["he_normal", "glorot_uniform"],
                "lr": {"low": 0.001, "high": 0.1, "log": True, "grid": 3},
            },
        }
    )
    # relu: 1, elu: 2 alpha points -> 3, x 2 inits x 1 bn x 3 lr points
    assert grid_size(config) == 18
    study = optuna.create_study(sampler=make_sampler(config))
    seen = set()
    for _ in range(grid_size(config)):
        trial, params = _ask(config, study)
        seen.add(resolve_trial(config, params))
        study.tell(trial, 0.5)
    assert len({(s.activation, s.alpha, s.init, s.lr) for s in seen}) == 18
    assert sorted({s.lr for s in seen}) == pytest.approx([0.001, 0.01, 0.1])


def test_enqueue_fills_defaults() -> None:
    config = load_config(
        {"search": {"activations": ["relu", "elu"], "enqueue": [{"activation": "elu"}]}}
    )
    assert enqueued_points(config) == [
        {"activation": "elu", "init": "matched", "bn": "none", "lr": 0.0001}
    ]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_searcher_suggests_a_valid_trial(name: str) -> None:
    config = load_config(
        {"searcher": {"name": name, "seed": 1}, "search": {"activations": ["relu", "tanh"]}}
    )
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config))
    for _ in range(3):
        trial, params = _ask(config, study)
        spec = resolve_trial(config, params)
        assert spec.activation in ("relu", "tanh") and spec.lr > 0
        study.tell(trial, 0.5)


def test_config_error_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"model": {"depth": 0, "width": 0}, "foo": 1})
    assert "\n" not in str(info.value)
    assert "model.depth" in str(info.value) and "foo: unknown key" in str(info.value)


@pytest.mark.parametrize(
    "name", [n for n, spec in ACTIVATIONS.items() if spec.search_range is not None]
)
def test_alpha_search_takes_the_registry_range(name: str) -> None:
    """``alpha: search`` is the registry's range: presets and users share one source."""
    config = load_config({"search": {"activations": {name: {"alpha": "search"}}}})
    low, high, log = ACTIVATIONS[name].search_range
    assert config.search.activations[name].alpha == Range(low=low, high=high, log=log)


@pytest.mark.parametrize(
    ("name", "message"),
    [("relu", "relu has no alpha"), ("rrelu", "rrelu has no default alpha range")],
)
def test_alpha_search_without_a_range_is_one_line(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config({"search": {"activations": {name: {"alpha": "search"}}}})
    assert "\n" not in str(info.value)


def test_allowed_names_come_from_the_registries() -> None:
    """Searcher names and BN placements are validated against their registries."""
    for bad, allowed_names in (
        ({"searcher": {"name": "nope"}}, SAMPLERS),
        ({"search": {"batch_norm": ["nope"]}}, BATCH_NORM_PLACEMENTS),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        assert all(repr(n) in str(info.value) for n in allowed_names)


def test_width_as_a_list_is_a_searched_factor() -> None:
    config = load_config({"model": {"depth": 3, "width": [16, 64]}})
    assert config.model.choices("width") == [16, 64] and config.model.choices("depth") == [3]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    widths = set()
    for _ in range(20):
        trial, params = _ask(config, study)
        assert "depth" not in trial.params  # fixed: a constant, not a factor
        widths.add(params["width"])
        spec = resolve_trial(config, params)
        assert spec.width == params["width"] and spec.depth == 3
    assert widths == {16, 64}
