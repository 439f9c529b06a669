"""Objectives: how a config names them, what it may not name, and that every sampler the
registry allows with several objectives really searches a multi-objective Optuna study."""

from __future__ import annotations

import optuna
import pytest

from spaces import SAMPLERS, ConfigError, StudyConfig, define_space, load_config, make_sampler
from spaces.objectives import MULTI_OBJECTIVE_SAMPLERS, OBJECTIVES, metrics_and_modes

TWO = "objectives=[val_accuracy: max, epoch_seconds: min]"


def test_no_objectives_is_the_single_objective_study() -> None:
    config = load_config("quick")
    assert not config.multi_objective
    assert metrics_and_modes(config.objectives) == (["best_val_accuracy"], ["max"])


@pytest.mark.parametrize(
    "written",
    [TWO, "objectives={val_accuracy: max, epoch_seconds: min}"],
    ids=["list-of-pairs", "mapping"],
)
def test_list_and_mapping_forms_are_the_same(written: str) -> None:
    config = load_config("quick", [written])
    assert config.objectives == [{"val_accuracy": "max"}, {"epoch_seconds": "min"}]
    assert metrics_and_modes(config.objectives) == (
        ["best_val_accuracy", "mean_epoch_seconds"],
        ["max", "min"],
    )
    # what a trial worker gets (the resolved config as JSON) validates to the same
    again = StudyConfig.model_validate(config.model_dump(mode="json"))
    assert again.objectives == config.objectives


def test_parameter_count_is_an_objective() -> None:
    config = load_config(
        "quick", ["objectives=[val_accuracy: max, params: min, epoch_seconds: min]"]
    )
    assert metrics_and_modes(config.objectives)[0] == [
        "best_val_accuracy",
        "n_params",
        "mean_epoch_seconds",
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["objectives=[val_accuracy: max, speed: min]"],
            "objectives.1: unknown objective 'speed'; allowed: val_accuracy, epoch_seconds, params",
        ),
        (
            ["objectives=[val_accuracy: max, params: smaller]"],
            "objectives.1.params: direction 'smaller'; allowed: max, min",
        ),
        (
            ["objectives=[val_accuracy: max, val_accuracy: min]"],
            "objectives.1: val_accuracy is named twice",
        ),
        (["objectives=[val_accuracy: max]"], "objectives: name two or more"),
        (
            ["objectives=[{val_accuracy: max, params: min}]"],
            "objectives.0: write one objective as {name: max|min}",
        ),
        (["objectives=fast"], "objectives: write a list of {name: max|min}"),
        ([TWO, "searcher.name=cmaes"], "searcher.name: cmaes searches one objective only"),
        (
            ["objectives=[epoch_seconds: min, val_accuracy: max]", "scheduler.name=asha"],
            "scheduler.name: asha stops trials on the primary (first) objective only",
        ),
    ],
    ids=["name", "direction", "twice", "one", "two-in-one", "not-a-list", "cmaes", "asha-primary"],
)
def test_bad_objectives_are_one_line(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("quick", overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_asha_with_accuracy_first_is_allowed() -> None:
    config = load_config("quick", [TWO, "scheduler.name=asha"])
    assert config.scheduler.name == "asha" and config.multi_objective


def test_only_cmaes_is_single_objective() -> None:
    assert set(SAMPLERS) - set(MULTI_OBJECTIVE_SAMPLERS) == {"cmaes"}
    assert set(MULTI_OBJECTIVE_SAMPLERS) <= set(SAMPLERS)


@pytest.mark.parametrize("name", MULTI_OBJECTIVE_SAMPLERS)
def test_every_multi_objective_sampler_searches_two_directions(name: str) -> None:
    """Ask and tell as OptunaSearch does with metric/mode lists; the front is Optuna's own."""
    config = load_config(
        "quick", [TWO, f"searcher.name={name}", "search.activations=[relu, elu, tanh]"]
    )
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(config))
    space = define_space(config)
    for _ in range(12):  # past TPE's and GP's 10 random start-up trials
        trial = study.ask()
        space(trial)
        lr = trial.params["lr"]
        study.tell(trial, [1 - abs(lr - 0.01), lr])
    assert all(len(t.values) == 2 for t in study.trials)
    assert study.best_trials


def test_objective_metrics_are_the_schemas() -> None:
    from search import schema

    assert OBJECTIVES["val_accuracy"].metric == schema.OBJECTIVE
    assert {schema.MEAN_EPOCH_SECONDS, schema.N_PARAMS} <= set(schema.FINAL_METRICS)
