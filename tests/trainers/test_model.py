"""Contract tests for the MLP: block layout, batch norm placement, self-normalisation, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers import (
    ACTIVATIONS,
    BATCH_NORM_PLACEMENTS,
    INITIALIZERS,
    build_mlp,
    learned_slopes,
    load_splits,
    seed_everything,
)

NAMES = list(ACTIVATIONS)
#: Module types expected in each hidden block, in execution order, per BN placement.
BLOCK_ORDER = {
    "none": [nn.Linear, "act"],
    "before": [nn.Linear, nn.BatchNorm1d, "act"],
    "after": [nn.Linear, "act", nn.BatchNorm1d],
}


def hidden_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Output of the last hidden block (the head left out)."""
    for block in model.hidden:
        x = block(x)
    return x


@pytest.mark.parametrize("activation", NAMES)
@pytest.mark.parametrize("batch_norm", BATCH_NORM_PLACEMENTS)
def test_block_order_follows_batch_norm_placement(batch_norm: str, activation: str) -> None:
    model = build_mlp(5, 3, 3, 8, activation, batch_norm=batch_norm)
    act_type = type(ACTIVATIONS[activation].build(width=8))
    assert [name for name, _ in model.named_children()] == [
        "layer_01",
        "layer_02",
        "layer_03",
        "head",
    ]
    for block in model.hidden:
        kinds = [type(m) for m in block]
        assert kinds == [act_type if k == "act" else k for k in BLOCK_ORDER[batch_norm]]
        assert block.act is block[kinds.index(act_type)]
        # BN's shift replaces the bias it would cancel when it comes right after the linear.
        assert (block.linear.bias is None) == (batch_norm == "before")
    if batch_norm == "none":
        assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert isinstance(model.head, nn.Linear)
    assert model(torch.randn(4, 5)).shape == (4, 3)


@pytest.mark.parametrize("activation", NAMES)
def test_dropout_kind(activation: str) -> None:
    """SELU nets get AlphaDropout (keeps mean and variance); the others plain Dropout."""
    model = build_mlp(5, 3, 2, 8, activation, dropout=0.1)
    want = nn.AlphaDropout if activation == "selu" else nn.Dropout
    for block in model.hidden:
        assert type(block[-1]) is want
        assert block[-1].p == 0.1
    assert not any(
        isinstance(m, nn.Dropout | nn.AlphaDropout)
        for m in build_mlp(5, 3, 2, 8, activation).modules()
    )


@pytest.mark.parametrize("activation", NAMES)
@pytest.mark.parametrize("batch_norm", ["before", "after"])
def test_eval_output_does_not_depend_on_the_batch(batch_norm: str, activation: str) -> None:
    """In eval mode BN uses running statistics: a sample's output ignores its batch mates."""
    model = build_mlp(6, 4, 3, 16, activation, batch_norm=batch_norm)
    model.train()
    with torch.no_grad():
        for _ in range(5):  # move the running statistics away from (0, 1)
            model(3.0 * torch.randn(64, 6) + 1.0)
    x = torch.randn(32, 6)
    with torch.no_grad():
        in_train = model(x)[:1]
        model.eval()
        in_batch = model(x)[:1]
        alone = model(x[:1])
        other_batch = model(torch.cat([x[:1], 10 * torch.randn(7, 6)]))[:1]
    torch.testing.assert_close(in_batch, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(in_batch, other_batch, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(in_train, in_batch)  # the check has teeth: train mode differs


@pytest.mark.parametrize("init", ["lecun_normal", "matched"])
def test_selu_self_normalises(init: str) -> None:
    """32 SELU layers of 256 with LeCun init keep N(0, 1) input at mean ~0, variance ~1."""
    model = build_mlp(256, 10, 32, 256, "selu", init=init).eval()
    with torch.no_grad():
        h = hidden_output(model, torch.randn(2048, 256))
    assert abs(h.mean().item()) < 0.1
    assert 0.8 < h.var().item() < 1.2


def test_selu_needs_its_init() -> None:
    """Contrast: the same net with PyTorch's default init loses the variance (it is the init)."""
    model = build_mlp(256, 10, 32, 256, "selu", init="pytorch_default").eval()
    with torch.no_grad():
        h = hidden_output(model, torch.randn(2048, 256))
    assert h.var().item() < 0.5


def first_last_gradient_ratio(activation: str, init: str) -> float:
    """||dL/dW|| of the first hidden layer over the last's, 20 layers of 64, on digits."""
    data = load_splits("digits")
    seed_everything(0)
    model = build_mlp(data.n_features, data.n_classes, 20, 64, activation, init=init).train()
    nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
    first, last = model.hidden[0].linear.weight.grad, model.hidden[-1].linear.weight.grad
    return (first.norm() / last.norm()).item()


def test_vanishing_gradients_are_real() -> None:
    """Logistic + default init starves the first layers (Glorot 2010); ELU + He does not."""
    logistic = first_last_gradient_ratio("logistic", "pytorch_default")
    elu = first_last_gradient_ratio("elu", "he_normal")
    print(
        f"\nfirst/last weight-gradient norm, 20x64 on digits: logistic+pytorch_default "
        f"{logistic:.3e}, elu+he_normal {elu:.3e}"
    )
    assert logistic < 1e-2
    assert elu > 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "relu6"}, "unknown activation"),
        ({"init": "xavier"}, "unknown initializer"),
        ({"batch_norm": "inside"}, "unknown batch_norm"),
        ({"depth": 0}, "depth and width"),
        ({"width": 0}, "depth and width"),
    ],
)
def test_bad_arguments_name_the_allowed_values(kwargs: dict[str, object], message: str) -> None:
    args = {"activation": "relu", "depth": 2, "width": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_mlp(5, 3, **args)


@pytest.mark.parametrize("init", list(INITIALIZERS))
@pytest.mark.parametrize("activation", NAMES)
def test_same_seed_same_model(activation: str, init: str) -> None:
    seed_everything(3)
    first = build_mlp(5, 3, 2, 8, activation, init=init, batch_norm="after").state_dict()
    seed_everything(3)
    second = build_mlp(5, 3, 2, 8, activation, init=init, batch_norm="after").state_dict()
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


@pytest.mark.parametrize("per_unit", [True, False])
def test_learned_slopes_report_each_prelu_layer(per_unit: bool) -> None:
    model = build_mlp(5, 3, 3, 8, "prelu", alpha=0.2, prelu_per_unit=per_unit)
    slopes = learned_slopes(model)
    assert slopes == pytest.approx(
        {"prelu/slope/layer_01": 0.2, "prelu/slope/layer_02": 0.2, "prelu/slope/layer_03": 0.2}
    )
    with torch.no_grad():
        model.layer_02.act.weight.fill_(0.5)
        model.layer_02.act.weight[0] = -0.5 if per_unit else 0.5
    want = (0.5 * 7 - 0.5) / 8 if per_unit else 0.5
    assert learned_slopes(model)["prelu/slope/layer_02"] == pytest.approx(want)


@pytest.mark.parametrize("activation", [n for n in NAMES if n != "prelu"])
def test_learned_slopes_empty_without_prelu(activation: str) -> None:
    assert learned_slopes(build_mlp(5, 3, 2, 8, activation)) == {}
