"""The benchmark study shared by the benchmark parts, and (a), the raw loop: the compute limit."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import optuna
import torch

from spaces import (
    StudyConfig,
    define_space,
    model_builder,
    resolve_trial,
    train_settings,
)
from trainers import TrainSettings, seed_everything, train

CONCURRENCY = 2


def quiet_libraries() -> None:
    """Only errors from Ray, Tune, MLflow and Alembic, warnings from Optuna: the figures stay
    readable. Call after importing mlflow and ray, which set their own loggers' levels."""
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_dict(trials: int, epochs: int, output_dir: str) -> dict[str, Any]:
    """The benchmark study: digits, 10x64 MLP, batch 32, FIFO, 2 trials at a time."""
    return {
        "name": "bench",
        "data": {"name": "digits"},
        "model": {"depth": 10, "width": 64},
        "search": {
            "activations": ["relu", "leaky_relu", "prelu", "elu", "selu", "tanh"],
            "initializers": ["pytorch_default", "glorot_uniform", "he_normal", "lecun_normal"],
            "batch_norm": ["none", "before"],
            "lr": {"low": 3e-4, "high": 3e-2, "log": True},
        },
        "training": {"epochs": epochs, "batch_size": 32, "optimizer": "adam"},
        # Random search with a fixed seed asks exactly the configurations draw_trials pre-draws.
        "searcher": {"name": "random", "seed": 0},
        "scheduler": {"name": "fifo"},
        "num_samples": trials,
        "max_concurrent": CONCURRENCY,
        "resources": {"cpu": 1},
        "output_dir": output_dir,
    }


def draw_trials(config: StudyConfig) -> list[dict[str, Any]]:
    """The study's trial parameters, in trial order, as its seeded random searcher asks them."""
    sampler = optuna.samplers.RandomSampler(seed=config.searcher.seed)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    space = define_space(config)
    trials = []
    for _ in range(config.num_samples):
        trial = study.ask()
        constants = space(trial)
        trials.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return trials


def settings_for(config: StudyConfig, params: dict[str, Any], diagnostics: bool) -> TrainSettings:
    """The trial's loop settings, as a study trains it (``spaces.train_settings``)."""
    settings = train_settings(config, resolve_trial(config, params))
    return dataclasses.replace(settings, diagnostics=diagnostics)


def build_for(config: StudyConfig, params: dict[str, Any]) -> Any:
    """The trial's model builder, as a study builds it (``spaces.model_builder``)."""
    data = config.data.load()
    return model_builder(config, resolve_trial(config, params), data.n_features, data.n_classes)


def run_raw(
    config: StudyConfig, trials: list[dict[str, Any]], diagnostics: bool, device: str = "cpu"
) -> float:
    """Seconds for every trial trained sequentially with ``trainers.train``, as a trial would
    (one torch thread: what each trial gets with ``resources.cpu = 1``)."""
    torch.set_num_threads(1)
    data = config.data.load().to(device)
    t0 = time.perf_counter()
    for params in trials:
        seed_everything(config.training.seed)
        model = build_for(config, params)().to(device)
        train(model, data, settings_for(config, params, diagnostics))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0
