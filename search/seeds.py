"""Every seed of a trial, epoch by epoch, as the metrics the trial reports.

A trial trains k seeds of one configuration (fused, or one plain seed). The book keeps all of
them by seed value for the whole run, so a seed that diverges is never silently dropped:

- **Score policy.** A diverged seed counts at chance accuracy (1 / classes) in the trial's
  accuracies from the epoch it diverged on: a configuration that blows up for some seeds is worse
  than its surviving seeds say. The trial itself diverges only when every seed has. Optuna, the
  scheduler and the leaderboard all see this policy mean.
- **Per seed** (``seed/<seed>/...``, keyed by seed value): best and current validation accuracy,
  test accuracy, whether and when it diverged, how many epochs it took to reach 95% of its best
  validation accuracy, the gradient summary figures and flags (and for how many epochs each flag
  was raised), and the same figures at initialisation (``init/seed/<seed>/diag/...``, logged at
  step 0).
- **One fixed seed's** per-layer figures (``diag/<figure>/layer_NN``) for the pictures and the
  layer table (:class:`~search.tracking.MlflowTracker` decides which become MLflow metrics): the
  trial's first seed (tag ``diag.layers_seed``), for the whole run. Once it diverges there are no
  more per-layer figures, rather than the same names silently continuing with another seed.
- **Initialisation** (``init/...``): kept in the book, so a resumed trial reports them again
  with its first epoch (its new run gets the step-0 figures and ``diag.at_init.*`` tags too).

Pure Python over :class:`trainers.EpochReport`: no Ray, so it is tested without a cluster.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from search.schema import LAYERS_SEED_TAG
from trainers import FLAGS, EpochReport

#: Prefix of the figures measured before the first update; the tracker logs them at step 0.
INIT = "init/"
#: A seed reaches its plateau at the first epoch with this share of its best validation accuracy.
PLATEAU = 0.95
_LAYER = re.compile(r"^diag/\w+/layer_\d+$")
_LOSSES = ("train_loss", "val_loss")


def seed_key(seed: int, name: str) -> str:
    """``seed/<seed>/<name>``: the per-seed metric name."""
    return f"seed/{seed}/{name}"


def summary(diagnostics: dict[str, float]) -> dict[str, float]:
    """A seed's gradient summary: the per-epoch figures that are not per layer, plus the largest
    dead and saturated fractions over its layers."""
    out = {k: v for k, v in diagnostics.items() if k.startswith("diag/") and not _LAYER.match(k)}
    for figure in ("dead_frac", "saturation"):
        values = [v for k, v in diagnostics.items() if k.startswith(f"diag/{figure}/")]
        if values:
            out[f"diag/{figure}_max"] = max(values)
    return out


def epochs_to_plateau(val_accuracies: list[float]) -> float:
    """First epoch (1-based) whose validation accuracy reaches ``PLATEAU`` x the best so far."""
    if not val_accuracies:
        return math.nan
    target = PLATEAU * max(val_accuracies)
    return float(next(i for i, v in enumerate(val_accuracies, start=1) if v >= target))


class SeedBook:
    """The seeds of one trial across its epochs (see the module docstring)."""

    def __init__(self, seeds: list[int], chance: float) -> None:
        self.seeds, self.chance = list(seeds), chance
        self.best: dict[int, float] = {}
        self.test: dict[int, float] = {}
        self.val: dict[int, list[float]] = {s: [] for s in self.seeds}
        self.diverged_at: dict[int, int] = {}
        self.flagged: dict[int, dict[str, int]] = {s: dict.fromkeys(FLAGS, 0) for s in self.seeds}
        self.seconds: dict[int, float] = {}  # epoch -> its wall time (shared by fused seeds)
        self.initial: dict[int, dict[str, float]] = {}  # seed -> its figures at initialisation
        self._initial_reported = False  # by this process: a resumed trial reports them again

    @property
    def layers_seed(self) -> int:
        """The seed whose per-layer figures the trial logs (see the module docstring)."""
        return self.seeds[0]

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint must carry so a resumed trial reports the same figures."""
        return {
            "best": self.best,
            "test": self.test,
            "val": self.val,
            "diverged_at": self.diverged_at,
            "flagged": self.flagged,
            "seconds": self.seconds,
            "initial": self.initial,
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        for name, value in (state or {}).items():
            setattr(self, name, {int(k): v for k, v in value.items()})

    # -- one epoch --------------------------------------------------------------------------------
    def record(self, reports: dict[int, EpochReport]) -> dict[str, float]:
        """Take one epoch's reports (the seeds that ran it) and return the trial's metrics."""
        live: dict[int, EpochReport] = {}
        for seed, report in reports.items():
            if report.initial:
                self.initial[seed] = report.initial
            if report.diverged:
                self.diverged_at.setdefault(seed, report.epoch)
                continue
            live[seed] = report
            self.best[seed] = report.best_val_accuracy
            self.test[seed] = report.test_accuracy
            self.val[seed].append(report.val_accuracy)
            for flag in FLAGS:
                self.flagged[seed][flag] += int(bool(report.diagnostics.get(f"diag/{flag}")))
        any_report = next(iter(reports.values()))
        self.seconds[any_report.epoch] = float(any_report.epoch_seconds)
        out: dict[str, float] = {
            "epoch": float(any_report.epoch),
            "epoch_seconds": float(any_report.epoch_seconds),
            "mean_epoch_seconds": float(np.mean(list(self.seconds.values()))),
            "seeds": float(len(self.seeds)),
            "seeds_diverged": float(len(self.diverged_at)),
            "chance_accuracy": self.chance,
            "diverged": float(len(self.diverged_at) == len(self.seeds)),
            LAYERS_SEED_TAG: self.layers_seed,
        }
        for name in _LOSSES:
            values = [getattr(r, name) for r in live.values()]
            out[name] = float(np.mean(values)) if values else math.nan
        current = {s: r.val_accuracy for s, r in live.items()}
        out["val_accuracy"] = self._policy_mean(current)
        out["test_accuracy"] = self._policy_mean(self.test)
        scores = self._scores()
        out["best_val_accuracy"] = float(np.mean(scores))
        out.update(_spread(scores))
        initial = {} if self._initial_reported else self.initial
        self._initial_reported = True
        for seed in self.seeds:
            out.update(self._seed_metrics(seed, reports.get(seed), initial.get(seed, {})))
        fixed = reports.get(self.layers_seed)  # absent once it diverged: no per-layer figures
        if fixed is not None:
            out.update(
                {k: v for k, v in fixed.diagnostics.items() if k.startswith(("diag/", "prelu/"))}
            )
        figures = initial.get(self.layers_seed, {})
        out.update({INIT + k: v for k, v in figures.items() if k.startswith("diag/")})
        return out

    def _scores(self) -> list[float]:
        """Each seed's best validation accuracy under the policy (diverged: chance)."""
        return [
            self.chance if s in self.diverged_at else self.best.get(s, self.chance)
            for s in self.seeds
        ]

    def _policy_mean(self, values: dict[int, float]) -> float:
        return float(
            np.mean(
                [
                    self.chance if s in self.diverged_at else values.get(s, self.chance)
                    for s in self.seeds
                ]
            )
        )

    def _seed_metrics(
        self, seed: int, report: EpochReport | None, initial: dict[str, float]
    ) -> dict[str, float]:
        out = {
            seed_key(seed, "diverged"): float(seed in self.diverged_at),
            seed_key(seed, "best_val_accuracy"): self.best.get(seed, math.nan),
            seed_key(seed, "test_accuracy"): self.test.get(seed, math.nan),
            seed_key(seed, "epochs_to_95"): epochs_to_plateau(self.val[seed]),
        }
        if seed in self.diverged_at:
            out[seed_key(seed, "diverged_epoch")] = float(self.diverged_at[seed])
        out.update(
            {seed_key(seed, f"diag/{f}_epochs"): float(n) for f, n in self.flagged[seed].items()}
        )
        if report is not None and not report.diverged:
            out[seed_key(seed, "val_accuracy")] = report.val_accuracy
            out.update({seed_key(seed, k): v for k, v in summary(report.diagnostics).items()})
        out.update({INIT + seed_key(seed, k): v for k, v in summary(initial).items()})
        return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def _spread(scores: list[float]) -> dict[str, float]:
    """Standard deviation and 95% t-interval of the per-seed scores (one seed: no spread)."""
    best = np.asarray(scores, dtype=float)
    mean = float(best.mean())
    if len(best) < 2 or best.std() == 0:
        return {
            "best_val_accuracy_std": 0.0,
            "best_val_accuracy_ci_low": mean,
            "best_val_accuracy_ci_high": mean,
        }
    from scipy import stats  # here: a worker that trains one seed never needs it

    low, high = stats.t.interval(0.95, len(best) - 1, loc=mean, scale=stats.sem(best))
    return {
        "best_val_accuracy_std": float(best.std(ddof=1)),
        "best_val_accuracy_ci_low": float(low),
        "best_val_accuracy_ci_high": float(high),
    }
