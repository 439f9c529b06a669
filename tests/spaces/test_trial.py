"""The one mapping from a study config and a trial's parameters to the model and the loop's
settings: every field comes from the config or the trial, none from a default."""

from __future__ import annotations

import torch
from torch import nn

from spaces import load_config, model_builder, resolve_trial, train_settings
from trainers import TrainSettings

CONFIG = {
    "model": {"depth": [2, 3], "width": 12, "dropout": 0.25},
    "search": {
        "activations": {"elu": {"alpha": {"low": 0.5, "high": 1.5}}, "prelu": {"per_unit": False}},
        "batch_norm": ["before", "after"],
    },
    "training": {
        "epochs": 7,
        "batch_size": 16,
        "optimizer": "sgd",
        "momentum": 0.8,
        "weight_decay": 1e-4,
        "seed": 3,
    },
    "diagnostics": {"enabled": False, "probe_size": 32},
}


def test_train_settings_take_the_trials_lr_and_the_configs_training() -> None:
    config = load_config(CONFIG)
    params = {"activation": "elu", "elu_alpha": 0.7, "init": "he_normal", "bn": "before"}
    spec = resolve_trial(config, {**params, "lr": 0.02, "depth": 3})
    assert train_settings(config, spec) == TrainSettings(
        epochs=7,
        batch_size=16,
        lr=0.02,
        optimizer="sgd",
        momentum=0.8,
        weight_decay=1e-4,
        seed=3,
        diagnostics=False,
        probe_size=32,
    )


def test_the_builder_makes_the_trials_shape_placement_alpha_and_dropout() -> None:
    config = load_config(CONFIG)
    params = {"activation": "elu", "elu_alpha": 0.7, "init": "he_normal", "bn": "before"}
    spec = resolve_trial(config, {**params, "lr": 0.02, "depth": 3})
    build = model_builder(config, spec, n_features=5, n_classes=4)
    model = build()
    assert len(model.hidden) == 3
    first = model.hidden[0]
    assert list(dict(first.named_children())) == ["linear", "bn", "act", "dropout"]
    assert (first.linear.in_features, first.linear.out_features, first.linear.bias) == (5, 12, None)
    assert isinstance(first.act, nn.ELU) and first.act.alpha == 0.7
    assert first.dropout.p == 0.25
    assert model.head.out_features == 4
    torch.manual_seed(0)
    a = build()
    torch.manual_seed(0)
    b = build()
    assert a is not b  # afresh each call, the weights from the global generator
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_the_builder_keeps_a_shared_prelu_slope_and_bn_after() -> None:
    config = load_config(CONFIG)
    params = {"activation": "prelu", "init": "pytorch_default", "bn": "after", "lr": 0.01}
    spec = resolve_trial(config, params)  # depth not searched here: the first choice
    model = model_builder(config, spec, n_features=5, n_classes=4)()
    assert len(model.hidden) == 2
    block = model.hidden[0]
    assert list(dict(block.named_children())) == ["linear", "act", "bn", "dropout"]
    assert block.act.num_parameters == 1
