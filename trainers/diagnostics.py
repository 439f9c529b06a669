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


def _saturated(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """:func:`saturation_fraction` as a tensor (no device sync)."""
    for kind, (low, high) in _SATURATING.items():
        if isinstance(module, kind):
            margin = 0.01 * (high - low) / (1.0 if low == 0.0 else 2.0)
            return ((out <= low + margin) | (out >= high - margin)).float().mean()
    raise TypeError(f"{type(module).__name__} does not saturate")


class GradientProbe:
    """Per-layer gradient-flow figures on a fixed probe batch of the training set."""

    def __init__(self, model: nn.Module, data: object, size: int = 256) -> None:
        x, y = data.x_train, data.y_train  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(x.shape[0], generator=g)[: min(size, x.shape[0])].to(x.device)
        self.model, self.x, self.y = model, x[idx], y[idx]
        self._start: dict[str, torch.Tensor] = {}

    def start_epoch(self) -> None:
        """Remember each layer's weights, for the epoch's update-to-weight ratio."""
        self._start = {
            name: block.linear.weight.detach().clone() for name, block in hidden_blocks(self.model)
        }

    def gradients(self) -> dict[str, torch.Tensor]:
        """Each hidden layer's weight gradient on the probe batch (train mode, no side effects)."""
        return self._run()[0]

    def measure(self) -> dict[str, float]:
        """All per-layer figures as flat ``diag/<figure>/layer_NN`` metrics."""
        grads, acts = self._run()
        names: list[str] = []
        values: list[torch.Tensor] = []  # one tolist() at the end, not a device sync per figure
        with torch.no_grad():
            for name, block in hidden_blocks(self.model):
                pre, post = acts[name]
                std, mean = torch.std_mean(post)
                figures = {"grad_norm": grads[name].norm(), "act_mean": mean, "act_std": std}
                if any(isinstance(block.act, kind) for kind in _SATURATING):
                    figures["saturation"] = _saturated(block.act, post)
                else:  # "dead" only means something where the negative side is (near) flat
                    figures["dead_frac"] = (pre <= 0).all(dim=0).float().mean()
                if name in self._start:
                    w0 = self._start[name]
                    moved = (block.linear.weight - w0).norm()
                    figures["update_ratio"] = moved / w0.norm().clamp_min(1e-12)
                for figure, value in figures.items():
                    names.append(f"diag/{figure}/{name}")
                    values.append(value.float())
        out = dict(zip(names, torch.stack(values).tolist(), strict=True)) if values else {}
        out.update(summarize(out))
        return out

    def _run(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        model = self.model
        was_training = model.training
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        saved_grads = {n: p.grad for n, p in model.named_parameters()}
        acts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [
            block.act.register_forward_hook(
                lambda _m, inp, out, name=name: acts.__setitem__(
                    name, (inp[0].detach(), out.detach())
                )
            )
            for name, block in hidden_blocks(model)
        ]
        # Dropout and RReLU draw from the generator of the probe's device: fork it (the CPU one,
        # and the CUDA one on a GPU) so training sees the same random numbers with or without us.
        devices = [self.x.device] if self.x.is_cuda else []
        try:
            with torch.random.fork_rng(devices=devices):
                model.train()
                model.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(self.x), self.y).backward()
            grads = {
                name: block.linear.weight.grad.detach().clone()
                for name, block in hidden_blocks(model)
            }
        finally:
            for h in hooks:
                h.remove()
            for n, p in model.named_parameters():
                p.grad = saved_grads[n]
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
            model.train(was_training)
        return grads, acts


def _layers(metrics: dict[str, float], figure: str) -> list[float]:
    pattern = re.compile(rf"^diag/{figure}/layer_\d+$")
    return [v for k, v in sorted(metrics.items()) if pattern.match(k)]


def summarize(metrics: dict[str, float]) -> dict[str, float]:
    """Per-epoch summary figures and 0/1 flags from one epoch's per-layer metrics."""
    norms = _layers(metrics, "grad_norm")
    if not norms:
        return {}
    ratio = norms[0] / norms[-1] if norms[-1] > 0 else math.inf
    largest = max(norms)
    dead = _layers(metrics, "dead_frac")
    saturated = _layers(metrics, "saturation")
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
