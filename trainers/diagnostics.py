"""Gradient-flow diagnostics: vanishing/exploding gradients, dying units, saturation.

Measured on a fixed probe batch (the same training samples every time), so the cost is one extra
forward/backward per measurement and the figures are comparable across epochs, trials and depths.
Measuring never changes training: batch-norm running statistics, the RNG and gradients are left as
they were. A freshly built model can be measured before any optimizer step ("epoch 0", where
mean-field theory makes its predictions); the update ratio is then simply absent.

:class:`GradientProbe` measures a plain :class:`~trainers.model.MLP`; :class:`FusedGradientProbe`
measures every copy of a :class:`~trainers.fused.FusedMLP` in one batched pass, with the same
figures per copy as a :class:`GradientProbe` on that copy alone.

Gradient flow by depth. The norm of a hidden layer's weight gradient changes geometrically with
depth (Schoenholz et al. 2017; Pennington et al. 2017): ``||dW_l|| ~ c * chi**(L - l)`` for layers
``l = 1 .. L``. ``diag/grad_rate`` is that per-layer factor chi, the factor by which the norm is
multiplied per layer going from the output toward the input, fitted robustly over all hidden
layers (:func:`gradient_rate`). chi < 1: norms shrink toward the input; chi > 1: they grow. A
threshold on chi means the same at depth 5 and depth 50; one on the first/last ratio (still
reported as ``diag/grad_ratio_first_last``, roughly ``chi**(L - 1)``) does not.

Flags (see :func:`summarize`), judged on the measurement given:

- ``vanishing``: chi below ``VANISHING_RATE`` (0.75);
- ``exploding``: chi above ``EXPLODING_RATE`` (1.1), a layer's gradient norm above
  ``EXPLODING_NORM`` (1e3, a blow-up at any depth, e.g. from a too-large step), or a non-finite
  norm;
- ``dying``: a hidden layer with more than ``DYING_FRACTION`` (50%) of its units dead, i.e. whose
  pre-activation is <= 0 for every probe sample (non-sigmoid activations only);
- ``saturated``: a sigmoid-family layer with more than ``SATURATED_FRACTION`` (50%) of its outputs
  within 1% of an asymptote.

chi is fitted only for nets with at least ``MIN_RATE_LAYERS`` (5) hidden layers: with fewer, the
layers next to the input and the head dominate the fit and its seed-to-seed spread is as large as
the distance between the thresholds. Shallower nets get no ``diag/grad_rate`` and are flagged
vanishing or exploding only by the norm rules. README.md, section "Gradient diagnostics", gives
the definitions, why the thresholds sit where they do, and the literature.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

VANISHING_RATE = 0.75
EXPLODING_RATE = 1.1
MIN_RATE_LAYERS = 5
EXPLODING_NORM = 1e3
DYING_FRACTION = 0.5
SATURATED_FRACTION = 0.5

#: Asymptotes per saturating module type: outputs within 1% of one count as saturated.
_SATURATING = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Softsign: (-1.0, 1.0)}


def hidden_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's hidden blocks ``layer_NN`` in depth order (see ``trainers.model``)."""
    return [(n, m) for n, m in model.named_children() if n.startswith("layer_")]


def _weight(block: nn.Module) -> torch.Tensor:
    """A hidden block's linear weight (``[out, in]``, or ``[k, out, in]`` fused)."""
    return cast(torch.Tensor, block.get_submodule("linear").weight)


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


def gradient_rate(norms: Sequence[float]) -> float:
    """Per-layer factor chi of the gradient norms ``norms`` (input side first); NaN if unknown.

    chi = 10**(-b), b the Theil-Sen slope (median of all pairwise slopes) of log10 ||dW_l||
    against l. The median, not least squares, so that one odd layer (the first sees the raw
    input, the last the head) cannot move the fit, and so that norms that underflowed to 0 (a
    strongly vanishing deep net) still give an answer: their slopes to the finite layers are
    infinite and, when they are the majority, chi is 0. NaN for fewer than ``MIN_RATE_LAYERS``
    layers or a NaN norm.
    """
    if len(norms) < MIN_RATE_LAYERS or any(math.isnan(v) for v in norms):
        return math.nan
    logs = [math.log10(v) if v > 0 else -math.inf for v in norms]
    slopes = [
        (logs[j] - logs[i]) / (j - i)
        for i in range(len(logs))
        for j in range(i + 1, len(logs))
        if math.isfinite(logs[i]) or logs[i] != logs[j]  # two zero (or two inf) norms: no slope
    ]
    if not slopes:
        return math.nan
    slope = statistics.median(slopes)
    return math.inf if -slope > 300 else 10.0**-slope  # 10.0**x overflows above ~308


class _Probe:
    """The measurement shared by both probes: figures per layer and per copy (seed)."""

    _fused = False

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
        want = 3 if self._fused else 2
        if self._blocks and _weight(self._blocks[0][1]).dim() != want:
            other = "GradientProbe" if self._fused else "FusedGradientProbe"
            raise TypeError(f"{type(self).__name__}: wrong kind of model; use {other}")

    def start_epoch(self) -> None:
        """Remember each layer's weights, for the epoch's update-to-weight ratio."""
        self._start = {name: _weight(block).detach().clone() for name, block in self._blocks}

    def gradients(self) -> dict[str, torch.Tensor]:
        """Each hidden layer's weight gradient on the probe batch (train mode, no side effects)."""
        return self._run()[0]

    def _seeded(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` with a leading copy dimension (a plain model is one copy)."""
        return t if self._fused else t.unsqueeze(0)

    def _measure(self) -> list[dict[str, float]]:
        """All figures of every copy as flat ``diag/<figure>/layer_NN`` metrics, in copy order.

        Computed for all layers and copies at once (one kernel per figure, one sync at the end):
        on tiny epochs a few dozen small per-layer ops would be a visible share of the epoch.
        """
        grads, acts = self._run()
        blocks = self._blocks
        names = [name for name, _ in blocks]
        act = blocks[0][1].get_submodule("act")
        columns: dict[str, torch.Tensor] = {}  # each [layers, copies]
        with torch.no_grad():
            pre = torch.stack([self._seeded(acts[n][0]) for n in names])  # [L, k, batch, units]
            post = torch.stack([self._seeded(acts[n][1]) for n in names])
            columns["grad_norm"] = self._norms([grads[n] for n in names])
            columns["act_std"], columns["act_mean"] = torch.std_mean(post.flatten(2), dim=2)
            if any(isinstance(act, kind) for kind in _SATURATING):
                columns["saturation"] = _saturated(act, post.flatten(2), dim=2)
            else:  # "dead" only means something where the negative side is (near) flat
                columns["dead_frac"] = (pre <= 0).all(dim=2).float().mean(dim=2)
            start = [self._start[n] for n in names if n in self._start]
            weights = [_weight(block).detach() for _, block in blocks]
            pairs = zip(start, weights, strict=False)
            if len(start) == len(weights) and all(s.shape == w.shape for s, w in pairs):
                moved = self._norms(list(torch._foreach_sub(weights, start)))
                size = self._norms(start)
                columns["update_ratio"] = moved / size.clamp_min(1e-12)
            table = torch.stack([c.float() for c in columns.values()]).tolist()
        results = []
        for i in range(len(table[0][0])):
            figures = {f: [row[i] for row in rows] for f, rows in zip(columns, table, strict=True)}
            out = {
                f"diag/{figure}/{name}": value
                for figure, values in figures.items()
                for name, value in zip(names, values, strict=True)
            }
            dead, saturated = figures.get("dead_frac", []), figures.get("saturation", [])
            out.update(_summary(figures["grad_norm"], dead, saturated))
            results.append(out)
        return results

    def _norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Frobenius norm of each copy of each tensor, ``[len(tensors), copies]``."""
        seeded = [self._seeded(t) for t in tensors]
        k = seeded[0].shape[0]
        flat = torch._foreach_norm([t[i] for t in seeded for i in range(k)])
        return torch.stack(flat).view(len(tensors), k)

    def _tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The model's parameters and buffers, whose state measuring must leave as it was."""
        return list(self._params), self._buffers

    def _loss(self, logits: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, self.y)

    def _run(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        model = self.model
        params, buffers = self._tensors()
        was_training = model.training
        saved_buffers = [b.clone() for b in buffers]
        saved_grads = [p.grad for p in params]
        acts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [
            block.get_submodule("act").register_forward_hook(
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
                for p in params:
                    p.grad = None
                self._loss(model(self.x)).backward()
            grads = {
                name: cast(torch.Tensor, _weight(block).grad).detach().clone()
                for name, block in self._blocks
            }
        finally:
            for h in hooks:
                h.remove()
            for p, grad in zip(params, saved_grads, strict=True):
                p.grad = grad
            with torch.no_grad():
                for b, saved in zip(buffers, saved_buffers, strict=True):
                    b.copy_(saved)
            if not was_training:
                model.train(False)
        return grads, acts


class GradientProbe(_Probe):
    """Per-layer gradient-flow figures of a plain MLP on a fixed probe batch of the training set.

    Call :meth:`start_epoch` at an epoch's start to get the epoch's ``update_ratio``; without it
    (e.g. on a freshly built model, epoch 0) every other figure is measured as usual.
    """

    def measure(self) -> dict[str, float]:
        """All per-layer figures as flat ``diag/<figure>/layer_NN`` metrics, plus the summary."""
        return self._measure()[0]


class FusedGradientProbe(_Probe):
    """:class:`GradientProbe` for every copy of a :class:`~trainers.fused.FusedMLP` at once.

    One batched forward/backward on the probe batch, shared by every copy (the fused model
    broadcasts it), gives each copy the figures :class:`GradientProbe` gives that copy unfused.
    The loss is the sum over copies of each copy's mean loss, so each copy's gradient is its own.
    When copies leave the model (``FusedMLP.keep_``), call :meth:`keep_` with the same index,
    or :meth:`start_epoch` again, to keep the update ratio; until then it is left out.
    """

    _fused = True

    def measure(self) -> list[dict[str, float]]:
        """Per copy, in the model's copy order: what :meth:`GradientProbe.measure` returns."""
        return self._measure()

    def keep_(self, index: Sequence[int]) -> None:
        """Follow ``FusedMLP.keep_(index)``: keep only those copies' epoch-start weights."""
        rows = list(index)
        self._start = {name: w[rows] for name, w in self._start.items()}

    def _tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # Looked up each time: ``keep_`` replaces the fused model's parameters and buffers.
        return list(self.model.parameters()), [b for b in self.model.buffers() if b is not None]

    def _loss(self, logits: torch.Tensor) -> torch.Tensor:
        k, b, classes = logits.shape
        losses = nn.functional.cross_entropy(
            logits.reshape(k * b, classes), self.y.repeat(k), reduction="none"
        )
        return losses.view(k, b).mean(dim=1).sum()


def _layers(metrics: dict[str, float], figure: str) -> list[float]:
    pattern = re.compile(rf"^diag/{figure}/layer_\d+$")
    return [v for k, v in sorted(metrics.items()) if pattern.match(k)]


def summarize(metrics: dict[str, float]) -> dict[str, float]:
    """Per-measurement summary figures and 0/1 flags from one measurement's per-layer metrics."""
    return _summary(
        _layers(metrics, "grad_norm"), _layers(metrics, "dead_frac"), _layers(metrics, "saturation")
    )


def _summary(norms: list[float], dead: list[float], saturated: list[float]) -> dict[str, float]:
    if not norms:
        return {}
    ratio = norms[0] / norms[-1] if norms[-1] > 0 else math.inf
    finite = all(math.isfinite(v) for v in norms)
    largest = math.nan if any(math.isnan(v) for v in norms) else max(norms)
    rate = gradient_rate(norms)
    out = {"diag/grad_ratio_first_last": ratio, "diag/grad_norm_max": largest}
    if len(norms) >= MIN_RATE_LAYERS:
        out["diag/grad_rate"] = rate
    return {
        **out,
        "diag/vanishing": float(rate < VANISHING_RATE),
        "diag/exploding": float(not finite or largest > EXPLODING_NORM or rate > EXPLODING_RATE),
        "diag/dying": float(bool(dead) and max(dead) > DYING_FRACTION),
        "diag/saturated": float(bool(saturated) and max(saturated) > SATURATED_FRACTION),
    }


FLAGS: tuple[str, ...] = ("vanishing", "exploding", "dying", "saturated")
