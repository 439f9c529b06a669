"""Contract tests for the activation registry: each entry matches its formula, documents alpha."""

from __future__ import annotations

import pytest
import torch

from trainers import ACTIVATIONS, build_activation
from trainers.activations import SELU_ALPHA, SELU_LAMBDA

NAMES = list(ACTIVATIONS)
WITH_ALPHA = [name for name, spec in ACTIVATIONS.items() if spec.alpha_kind != "none"]
GRID = torch.linspace(-5, 5, 1001, dtype=torch.float64)


def non_default_alpha(name: str) -> object:
    """An alpha other than the default, inside the documented range, to catch an ignored alpha."""
    spec = ACTIVATIONS[name]
    if spec.alpha_kind == "range":
        return (0.1, 0.3)
    low, high, _ = spec.search_range
    return low + 0.37 * (high - low)


def alpha_cases() -> list[tuple[str, object]]:
    return [(name, None) for name in NAMES] + [
        (name, non_default_alpha(name)) for name in WITH_ALPHA
    ]


@pytest.mark.parametrize(("name", "alpha"), alpha_cases())
def test_module_equals_closed_form_in_eval(name: str, alpha: object) -> None:
    """The module and the documented formula agree on [-5, 5] (alpha=None: the default)."""
    spec = ACTIVATIONS[name]
    assert spec.closed_form is not None, f"{name}: register a closed_form to test against"
    width = 4  # PReLU has one slope per unit: feed it a batch of `width` units
    module = build_activation(name, alpha, width).double().eval()
    z = GRID.unsqueeze(1).expand(-1, width).contiguous()
    used = spec.alpha_default if alpha is None else alpha
    with torch.no_grad():
        got = module(z)
    want = spec.closed_form(z, used)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_shape_kept_and_gradient_flows(name: str) -> None:
    module = build_activation(name, None, 8)
    z = torch.randn(32, 8, requires_grad=True)
    out = module(z)
    assert out.shape == z.shape
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_build_returns_a_fresh_module(name: str) -> None:
    """Layers must not share state (PReLU slopes, RReLU draws) through a cached module."""
    assert build_activation(name, None, 3) is not build_activation(name, None, 3)


def test_selu_constants() -> None:
    assert abs(SELU_LAMBDA - 1.0507009873554805) < 1e-6
    assert abs(SELU_ALPHA - 1.6732632423543772) < 1e-6
    z = GRID
    want = 1.0507009873554805 * torch.where(z > 0, z, 1.6732632423543772 * (torch.exp(z) - 1))
    torch.testing.assert_close(build_activation("selu").double()(z), want, rtol=0, atol=1e-6)


def test_rrelu_is_random_in_train_and_mean_slope_in_eval() -> None:
    lower, upper = 0.1, 0.3
    module = build_activation("rrelu", (lower, upper))
    z = -torch.rand(4096) - 0.5  # negative inputs only
    module.train()
    first, second = module(z), module(z)
    assert not torch.equal(first, second)
    slopes = first / z
    assert slopes.min() >= lower - 1e-6
    assert slopes.max() <= upper + 1e-6
    module.eval()
    torch.testing.assert_close(module(z), (lower + upper) / 2 * z)
    torch.testing.assert_close(module(z), module(z), rtol=0, atol=0)
    positive = torch.rand(100) + 0.1
    torch.testing.assert_close(module.train()(positive), positive)


def test_prelu_slope_is_learned() -> None:
    module = build_activation("prelu", 0.25, 6)
    before = module.weight.detach().clone()
    torch.testing.assert_close(before, torch.full((6,), 0.25))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    z = -torch.rand(16, 6) - 0.1
    loss = module(z).sum()
    loss.backward()
    assert module.weight.grad is not None
    assert module.weight.grad.abs().min() > 0
    optimizer.step()
    assert not torch.equal(module.weight.detach(), before)


@pytest.mark.parametrize(("per_unit", "count"), [(True, 7), (False, 1)])
def test_prelu_shared_or_per_unit(per_unit: bool, count: int) -> None:
    module = build_activation("prelu", 0.1, 7, per_unit=per_unit)
    assert sum(p.numel() for p in module.parameters()) == count
    out = module(-torch.ones(3, 7))
    torch.testing.assert_close(out, torch.full((3, 7), -0.1))


@pytest.mark.parametrize("name", WITH_ALPHA)
def test_alpha_is_documented_with_a_default(name: str) -> None:
    spec = ACTIVATIONS[name]
    assert spec.alpha_default is not None
    assert spec.alpha_doc and spec.alpha_doc != "no alpha"
    if spec.alpha_kind == "range":
        lower, upper = spec.alpha_default
        assert 0 <= lower < upper
    else:
        assert spec.search_range is not None, "a scalar alpha needs a default search range"
        low, high, _log = spec.search_range
        assert low <= spec.alpha_default <= high


@pytest.mark.parametrize("name", [n for n in NAMES if n not in WITH_ALPHA])
def test_no_alpha_means_none(name: str) -> None:
    spec = ACTIVATIONS[name]
    assert spec.alpha_default is None
    assert spec.search_range is None


@pytest.mark.parametrize("name", WITH_ALPHA)
def test_alpha_none_builds_the_default(name: str) -> None:
    """alpha=None means the literature default: same outputs as passing the default explicitly."""
    z = GRID.float().unsqueeze(1)
    default = build_activation(name, None, 1).eval()
    explicit = build_activation(name, ACTIVATIONS[name].alpha_default, 1).eval()
    torch.testing.assert_close(default(z), explicit(z))


@pytest.mark.parametrize("name", NAMES)
def test_leaky_slope_matches_the_built_module(name: str) -> None:
    """The He gain's slope is the negative-side slope of the module built (eval mode)."""
    spec = ACTIVATIONS[name]
    module = build_activation(name, None, 1).eval()
    slope = spec.leaky_slope(None)
    if spec.family == "leaky":
        z = torch.tensor([[-2.0]])
        assert module(z).item() / -2.0 == pytest.approx(slope)
    else:
        assert slope == 0.0
