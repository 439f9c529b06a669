"""The Tuner's parts that can be checked without running it: the scheduler registry."""

from __future__ import annotations

import types
import typing

import pytest
from ray.tune.schedulers import ASHAScheduler

from search.tuner import SCHEDULERS, trial_dirname
from spaces import TRIAL_NUMBER_KEY, load_config
from spaces.config import SchedulerConfig


def test_every_scheduler_name_a_config_allows_has_a_scheduler() -> None:
    allowed = typing.get_args(SchedulerConfig.model_fields["name"].annotation)
    assert set(allowed) == set(SCHEDULERS)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_each_scheduler_builds_from_a_config(name: str) -> None:
    config = load_config(
        {"scheduler": {"name": name, "grace_period": 5}, "training": {"epochs": 3}}
    )
    scheduler = SCHEDULERS[name](config)
    if name == "asha":
        assert isinstance(scheduler, ASHAScheduler)


def test_trial_directories_carry_the_optuna_number() -> None:
    trial = types.SimpleNamespace(config={TRIAL_NUMBER_KEY: 7}, trial_id="abc")
    assert trial_dirname(trial) == "t007_abc"
