"""Repeated seeds fused: k copies of one MLP as one batched model.

Why: a deep narrow MLP on a small data set is bound by per-operation overhead, not arithmetic, so
k seeds trained one after the other pay k times the overhead for work a batched matrix product
does at once. Here every parameter gets a leading seed dimension, activations flow as
``[k, batch, features]`` and linear layers are ``torch.baddbmm``; :mod:`trainers.fused_loop`
trains it.

Per seed: parameters, batch-norm batch and running statistics (the ``[k, batch, C]`` tensor is
viewed as ``[batch, k*C]`` for ``F.batch_norm``), PReLU slopes. Stateless elementwise modules
(activations, dropout) apply to the ``[k, batch, C]`` tensor as they are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from trainers.model import MLP


class FusedLinear(nn.Module):
    """k linear layers: ``weight`` ``[k, out, in]``, ``bias`` ``[k, out]`` (or none)."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        has_bias = layers[0].bias is not None
        self.bias = (
            nn.Parameter(torch.stack([m.bias.detach() for m in layers])) if has_bias else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, w)
        return torch.baddbmm(self.bias.unsqueeze(1), x, w)


class FusedBatchNorm1d(nn.Module):
    """k ``BatchNorm1d`` layers, statistics per seed and unit; buffers ``[k, C]``."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, layers: Sequence[nn.BatchNorm1d]) -> None:
        super().__init__()
        first = layers[0]
        if not (first.affine and first.track_running_stats):
            raise TypeError("fuse: only affine BatchNorm1d with running statistics is supported")
        self.eps, self.momentum = first.eps, first.momentum
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
        for name in ("running_mean", "running_var"):
            self.register_buffer(name, torch.stack([getattr(m, name) for m in layers]))
        # Every live seed trains every batch, so one count serves all of them.
        tracked = cast(torch.Tensor, first.num_batches_tracked)
        self.register_buffer("num_batches_tracked", tracked.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, c = x.shape
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm1d
                factor = 1.0 / float(self.num_batches_tracked)
        out = F.batch_norm(
            x.transpose(0, 1).reshape(b, k * c),
            self.running_mean.view(-1),  # views: F.batch_norm updates the buffers in place
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            self.training,
            factor,
            self.eps,
        )
        return out.view(b, k, c).transpose(0, 1)


class FusedPReLU(nn.Module):
    """k PReLUs: ``weight`` ``[k, C]`` (one slope per unit) or ``[k, 1]`` (shared)."""

    def __init__(self, layers: Sequence[nn.PReLU]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, c = x.shape
        slopes = self.weight.expand(k, c).reshape(-1)
        return F.prelu(x.transpose(0, 1).reshape(b, k * c), slopes).view(b, k, c).transpose(0, 1)


def _fuse_module(modules: Sequence[nn.Module]) -> nn.Module:
    first = modules[0]
    if any(type(m) is not type(first) for m in modules):
        raise TypeError("fuse: the copies differ in structure")
    if isinstance(first, nn.Sequential):
        children = OrderedDict(
            (name, _fuse_module([cast(nn.Module, m._modules[name]) for m in modules]))
            for name in first._modules
        )
        return (FusedMLP if isinstance(first, MLP) else nn.Sequential)(children)
    if isinstance(first, nn.Linear):
        return FusedLinear(cast(Sequence[nn.Linear], modules))
    if isinstance(first, nn.BatchNorm1d):
        return FusedBatchNorm1d(cast(Sequence[nn.BatchNorm1d], modules))
    if isinstance(first, nn.PReLU):
        return FusedPReLU(cast(Sequence[nn.PReLU], modules))
    if next(first.parameters(), None) is None and next(first.buffers(), None) is None:
        # Stateless and elementwise (activations, dropout): applies to [k, batch, C] as it is.
        return first
    raise TypeError(f"fuse: no fused version of {type(first).__name__}")


class FusedMLP(nn.Sequential):
    """k MLPs as one: the same child names as :class:`~trainers.model.MLP`, every parameter and
    buffer with a leading seed dimension (``num_batches_tracked`` excepted).

    Input ``[k, batch, features]``, or ``[batch, features]`` shared by all seeds (evaluation);
    output ``[k, batch, classes]``.
    """

    @property
    def k(self) -> int:
        """Number of fused copies."""
        return int(self._head().weight.shape[0])

    def _head(self) -> FusedLinear:
        return cast(FusedLinear, self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.k, -1, -1)
        return super().forward(x)

    def state_dict_of(self, i: int) -> dict[str, torch.Tensor]:
        """Copy ``i``'s state, loadable into the ``MLP`` it was fused from."""
        return {
            name: (value[i] if value.dim() > 0 else value).detach().clone()
            for name, value in self.state_dict().items()
        }

    @torch.no_grad()
    def keep_(self, index: Sequence[int]) -> None:
        """Keep only copies ``index`` (in that order), gradients included; in place."""
        rows = torch.tensor(list(index), dtype=torch.long, device=self._head().weight.device)
        for module in self.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                kept = nn.Parameter(p.detach()[rows].clone())
                if p.grad is not None:
                    kept.grad = p.grad[rows].clone()
                module._parameters[name] = kept
            for name, b in list(module._buffers.items()):
                if b is not None and b.dim() > 0:
                    module._buffers[name] = b[rows].clone()


def fuse(models: Sequence[nn.Module]) -> FusedMLP:
    """Stack k structurally identical MLPs into one :class:`FusedMLP` (copies the tensors)."""
    if not models:
        raise ValueError("fuse: need at least one model")
    fused = _fuse_module(list(models))
    if not isinstance(fused, FusedMLP):
        raise TypeError("fuse: expects trainers.model.MLP instances")
    return fused.train(models[0].training)


def fused_slopes(model: FusedMLP, i: int) -> dict[str, float]:
    """Copy ``i``'s mean PReLU slope per hidden layer (``trainers.model.learned_slopes``)."""
    return {
        f"prelu/slope/{name}": act.weight[i].detach().mean().item()
        for name, block in model.named_children()
        if name.startswith("layer_") and isinstance(act := getattr(block, "act", None), FusedPReLU)
    }


@torch.no_grad()
def evaluate_fused(model: FusedMLP, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
    """Per copy, mean cross-entropy and accuracy in eval mode (as :func:`trainers.evaluate`)."""
    model.eval()
    logits = model(x)
    out = []
    for i in range(logits.shape[0]):
        loss = F.cross_entropy(logits[i], y).item()
        accuracy = (logits[i].argmax(dim=1) == y).float().mean().item()
        out.append((loss, accuracy))
    return out
