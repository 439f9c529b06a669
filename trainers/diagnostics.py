"""Gradient-flow diagnostics: vanishing/exploding gradients, dying units, saturation.

Measured once per epoch on a fixed probe batch (the same training samples every epoch), so the
cost is one extra forward/backward per epoch and the figures are comparable across epochs and
trials. Measuring never changes training: batch-norm running statistics, the RNG and gradients are
left as they were.

Flags (see :func:`summarize`), judged on the latest epoch measured:

- ``vanishing``: first-to-last hidden layer gradient-norm ratio below ``VANISHING_RATIO`` (1e-2);
- ``exploding``: a layer's gradient norm above ``EXPLODING_NORM`` (1e3), or the ratio above
  ``1 / VANISHING_RATIO``;
- ``dying``: a hidden layer with more than ``DYING_FRACTION`` (50%) of its units dead, i.e. whose
  pre-activation is <= 0 for every probe sample (non-sigmoid activations only);
- ``saturated``: a sigmoid-family layer with more than ``SATURATED_FRACTION`` (50%) of its outputs
  within 1% of an asymptote.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

VANISHING_RATIO = 1e-2
EXPLODING_NORM = 1e3
DYING_FRACTION = 0.5
SATURATED_FRACTION = 0.5

#: Asymptotes per saturating module type: outputs within 1% of one count as saturated.
_SATURATING = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Softsign: (-1.0, 1.0)}


def hidden_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's hidden blocks ``layer_NN`` in depth order (see ``trainers.model``)."""
    return [(n, m) for n, m in model.named_children() if n.startswith("layer_")]


def saturation_fraction(module: nn.Module, out: torch.Tensor) -> float | None:
    """Share of outputs within 0.01 of an asymptote; None if the module does not saturate.

    0.01 is 1% of the asymptote's size (1 for all three), so 1% of sigmoid's range, 0.5% of tanh's.
    """
    if not any(isinstance(module, kind) for kind in _SATURATING):
        return None
    return _saturated(module, out).item()


def _saturated(module: nn.Module, out: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """:func:`saturation_fraction` as a tensor (no device sync), over ``dim`` or everything."""
    for kind, (low, high) in _SATURATING.items():
        if isinstance(module, kind):
            margin = 0.01 * (high - low) / (1.0 if low == 0.0 else 2.0)
            hit = ((out <= low + margin) | (out >= high - margin)).float()
            return hit.mean() if dim is None else hit.mean(dim=dim)
    raise TypeError(f"{type(module).__name__} does not saturate")


class GradientProbe:
    """Per-layer gradient-flow figures on a fixed probe batch of the training set."""

    def __init__(self, model: nn.Module, data: object, size: int = 256) -> None:
        x, y = data.x_train, data.y_train  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(x.shape[0], generator=g)[: min(size, x.shape[0])].to(x.device)
        self.model, self.x, self.y = model, x[idx], y[idx]
        self._start: dict[str, torch.Tensor] = {}
        # Looked up once: walking the module tree each epoch costs more than the figures.
        self._blocks = hidden_blocks(model)
        self._params = list(model.parameters())
        self._buffers = [b for b in model.buffers() if b is not None]

    def start_epoch(self) -> None:
        """Remember each layer's weights, for the epoch's update-to-weight ratio."""
        self._start = {name: block.linear.weight.detach().clone() for name, block in self._blocks}

    def gradients(self) -> dict[str, torch.Tensor]:
        """Each hidden layer's weight gradient on the probe batch (train mode, no side effects)."""
        return self._run()[0]

    def measure(self) -> dict[str, float]:
        """All per-layer figures as flat ``diag/<figure>/layer_NN`` metrics.

        Computed for all layers at once (one kernel per figure, one sync at the end): on tiny
        epochs a few dozen small per-layer ops would be a visible share of the epoch.
        """
        grads, acts = self._run()
        blocks = self._blocks
        names = [name for name, _ in blocks]
        act = blocks[0][1].act
        columns: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            pre = torch.stack([acts[n][0] for n in names])  # [layers, samples, units]
            post = torch.stack([acts[n][1] for n in names])
            columns["grad_norm"] = torch.stack(torch._foreach_norm([grads[n] for n in names]))
            columns["act_std"], columns["act_mean"] = torch.std_mean(post.flatten(1), dim=1)
            if any(isinstance(act, kind) for kind in _SATURATING):
                columns["saturation"] = _saturated(act, post.flatten(1), dim=1)
            else:  # "dead" only means something where the negative side is (near) flat
                columns["dead_frac"] = (pre <= 0).all(dim=1).float().mean(dim=1)
            if all(n in self._start for n in names):
                start = [self._start[n] for n in names]
                weights = [block.linear.weight for _, block in blocks]
                moved = torch._foreach_norm(torch._foreach_sub(weights, start))
                size = torch._foreach_norm(start)
                columns["update_ratio"] = torch.stack(moved) / torch.stack(size).clamp_min(1e-12)
            rows = torch.stack([c.float() for c in columns.values()]).tolist()
        table = dict(zip(columns, rows, strict=True))
        out = {
            f"diag/{figure}/{name}": value
            for figure, row in table.items()
            for name, value in zip(names, row, strict=True)
        }
        out.update(
            _summary(table["grad_norm"], table.get("dead_frac", []), table.get("saturation", []))
        )
        return out

    def _run(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        model = self.model
        was_training = model.training
        buffers = [b.clone() for b in self._buffers]
        saved_grads = [p.grad for p in self._params]
        acts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [
            block.act.register_forward_hook(
                lambda _m, inp, out, name=name: acts.__setitem__(
                    name, (inp[0].detach(), out.detach())
                )
            )
            for name, block in self._blocks
        ]
        # Dropout and RReLU draw from the generator of the probe's device: fork it (the CPU one,
        # and the CUDA one on a GPU) so training sees the same random numbers with or without us.
        devices = [self.x.device] if self.x.is_cuda else []
        try:
            with torch.random.fork_rng(devices=devices):
                if not was_training:
                    model.train()
                for p in self._params:
                    p.grad = None
                nn.functional.cross_entropy(model(self.x), self.y).backward()
            grads = {
                name: block.linear.weight.grad.detach().clone() for name, block in self._blocks
            }
        finally:
            for h in hooks:
                h.remove()
            for p, grad in zip(self._params, saved_grads, strict=True):
                p.grad = grad
            with torch.no_grad():
                for b, saved in zip(self._buffers, buffers, strict=True):
                    b.copy_(saved)
            if not was_training:
                model.train(False)
        return grads, acts


def _layers(metrics: dict[str, float], figure: str) -> list[float]:
    pattern = re.compile(rf"^diag/{figure}/layer_\d+$")
    return [v for k, v in sorted(metrics.items()) if pattern.match(k)]


def summarize(metrics: dict[str, float]) -> dict[str, float]:
    """Per-epoch summary figures and 0/1 flags from one epoch's per-layer metrics."""
    return _summary(
        _layers(metrics, "grad_norm"), _layers(metrics, "dead_frac"), _layers(metrics, "saturation")
    )


def _summary(norms: list[float], dead: list[float], saturated: list[float]) -> dict[str, float]:
    if not norms:
        return {}
    ratio = norms[0] / norms[-1] if norms[-1] > 0 else math.inf
    largest = max(norms)
    return {
        "diag/grad_ratio_first_last": ratio,
        "diag/grad_norm_max": largest,
        "diag/vanishing": float(ratio < VANISHING_RATIO),
        "diag/exploding": float(
            largest > EXPLODING_NORM or ratio > 1 / VANISHING_RATIO or not math.isfinite(largest)
        ),
        "diag/dying": float(bool(dead) and max(dead) > DYING_FRACTION),
        "diag/saturated": float(bool(saturated) and max(saturated) > SATURATED_FRACTION),
    }


FLAGS: tuple[str, ...] = ("vanishing", "exploding", "dying", "saturated")
