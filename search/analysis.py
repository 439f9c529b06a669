"""A study's evidence: observations per seed, factor tables and controlled pairwise tests (the
notes' claims are in :mod:`search.claims`).

- **Observations.** One row per (trial, seed): a trial's k seeds are k replicates of its
  configuration (its *cell*); identical configurations are one cell and merged, never counted
  twice (:func:`search.statistics.merge_replicates`). Trials that ran every epoch count, and
  trials that diverged (a diverged seed counts at chance accuracy: the policy of
  :mod:`search.seeds`); trials stopped early (ASHA, a budget) were scored after fewer epochs and
  do not.
- **Contrasts.** Every comparison holds the other factors equal (strata): a stratified Welch
  t test whose CI comes from the same statistic (:func:`search.statistics.contrast`); a
  comparison the design cannot decide is left out of its Holm family and says why.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from search.schema import CELL_FACTORS
from search.statistics import Contrast, contrast, merge_replicates
from search.verdicts import holm

ALPHA = 0.05
#: The contrasts' test: Welch's t within strata (see :mod:`search.statistics` for why not the
#: permutation test at 3-5 seeds a side).
METHOD = "welch"
#: Outcomes whose trials are evidence (a diverged seed counts at chance accuracy).
EVIDENCE = ("completed", "diverged")
#: Factor tables: name -> the columns that make a level.
FACTORS: dict[str, list[str]] = {
    "activation": ["activation"],
    "init": ["init_applied"],
    "bn": ["bn"],
    "activation_bn": ["activation", "bn"],
    "depth": ["depth"],
    "width": ["width"],
}


# -- observations -----------------------------------------------------------------------------


def _flow(ratio: float) -> float:
    """Gradient flow score: -|log10 first/last ratio| (0 = even; clipped so 0 and inf count)."""
    if ratio is None or math.isnan(ratio):
        return math.nan
    return -abs(math.log10(min(max(ratio, 1e-12), 1e12)))


def observations(trials: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (trial, seed) of the trials that are evidence, duplicates merged.

    Returns the observations (``CELL_FACTORS``, ``trial``, ``seed``, ``role`` and the metrics the
    claims use) and how many rows were merged away as identical configuration and seed.
    """
    rows = []
    data = trials[trials["outcome"].isin(EVIDENCE)] if not trials.empty else trials
    for trial in data.to_dict("records"):
        seeds = trial.get("per_seed") or {}
        chance = trial.get("chance_accuracy", math.nan)
        factors = {f: trial.get(f) for f in CELL_FACTORS}
        base = {**factors, "trial": trial["run_id"], "role": trial.get("role", "trial")}
        if not seeds:  # a run without per-seed figures: the trial is one observation
            seeds = {-1: {"best_val_accuracy": trial["best_val_accuracy"]}}
        for i, (seed, figures) in enumerate(sorted(seeds.items())):
            diverged = bool(figures.get("diverged", trial["outcome"] == "diverged"))
            score = chance if diverged else figures.get("best_val_accuracy", math.nan)
            test = chance if diverged else figures.get("test_accuracy", math.nan)
            rows.append(
                {
                    **base,
                    "seed": int(seed),
                    "best_val_accuracy": score,
                    "test_accuracy": test,
                    "diverged": float(diverged),
                    "epochs_to_95": math.nan if diverged else figures.get("epochs_to_95", math.nan),
                    # a fused trial's seeds share one clock: one measurement per trial
                    "epoch_seconds": trial.get("epoch_seconds", math.nan) if i == 0 else math.nan,
                    "grad_flow_init": _flow(
                        figures.get("init/diag/grad_ratio_first_last", math.nan)
                    ),
                    "grad_flow_final": _flow(figures.get("diag/grad_ratio_first_last", math.nan)),
                    "grad_ratio_init": figures.get("init/diag/grad_ratio_first_last", math.nan),
                    "grad_rate_init": figures.get("init/diag/grad_rate", math.nan),
                    "grad_rate_final": figures.get("diag/grad_rate", math.nan),
                    "dead_frac": figures.get("diag/dead_frac_max", math.nan),
                    "init_is_matched": trial.get("init_is_matched"),
                }
            )
    frame = pd.DataFrame(
        rows, columns=[*CELL_FACTORS, "trial", "role", "seed", *_METRICS, "init_is_matched"]
    )
    if frame.empty:
        return frame.assign(cell=pd.Series(dtype=str), copies=pd.Series(dtype=int)), 0
    return merge_replicates(frame, [*CELL_FACTORS, "role"])


_METRICS = (
    "best_val_accuracy",
    "test_accuracy",
    "diverged",
    "epochs_to_95",
    "epoch_seconds",
    "grad_flow_init",
    "grad_flow_final",
    "grad_ratio_init",
    "grad_rate_init",
    "grad_rate_final",
    "dead_frac",
)


# -- factor tables ----------------------------------------------------------------------------


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% BCa bootstrap CI of the mean (NaNs for fewer than 2 values; the value itself when all
    values are equal)."""
    if len(values) < 2:
        return math.nan, math.nan
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    res = stats.bootstrap((values,), np.mean, n_resamples=2000, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _levels(obs: pd.DataFrame, factor: str) -> pd.Series:
    if obs.empty:
        return pd.Series(dtype=str)
    return obs[FACTORS[factor]].map(_text).agg(" + ".join, axis=1)


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def factor_table(obs: pd.DataFrame, factor: str, metric: str = "best_val_accuracy") -> pd.DataFrame:
    """Per level of ``factor``, every level kept: cells, n (seeds), mean, median, best and a 95%
    bootstrap CI of the mean over seeds (NaN below 2 seeds); best mean first."""
    data = obs[obs["role"] == "trial"] if not obs.empty else obs
    levels = _levels(data, factor)
    rows = []
    for level in sorted(set(levels)):
        group = data[levels == level]
        values = group[metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        low, high = bootstrap_ci(values)
        rows.append(
            {
                "level": level,
                "cells": group["cell"].nunique(),
                "n": len(values),
                "mean": values.mean() if len(values) else math.nan,
                "median": float(np.median(values)) if len(values) else math.nan,
                "best": values.max() if len(values) else math.nan,
                "ci_low": low,
                "ci_high": high,
            }
        )
    columns = ["level", "cells", "n", "mean", "median", "best", "ci_low", "ci_high"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("mean", ascending=False, na_position="last").reset_index(drop=True)


def pairwise_tests(
    obs: pd.DataFrame, factor: str, metric: str = "best_val_accuracy"
) -> pd.DataFrame:
    """Every pair of levels compared with all other factors held equal (stratified permutation,
    Holm over the pairs the design can decide)."""
    data = obs[obs["role"] == "trial"] if not obs.empty else obs
    levels = _levels(data, factor)
    strata = [c for c in CELL_FACTORS if c not in FACTORS[factor]]
    pairs = list(combinations(sorted(set(levels)), 2))
    contrasts = [
        contrast_of(data, metric, (levels == a).to_numpy(), (levels == b).to_numpy(), strata)
        for a, b in pairs
    ]
    rows = [{"a": a, "b": b, **numbers(c)} for (a, b), c in zip(pairs, contrasts, strict=True)]
    table = pd.DataFrame(rows, columns=["a", "b", *NUMBERS])
    table["p_holm"] = holm_of(contrasts)
    return table


def contrast_of(
    obs: pd.DataFrame, metric: str, a: np.ndarray, b: np.ndarray, strata: list[str]
) -> Contrast:
    """Side A against side B on ``metric`` within strata of ``strata``, by :data:`METHOD`."""
    return contrast(obs, metric, a, b, strata, method=METHOD)


def decides(c: Contrast) -> bool:
    """Whether the design could reach significance at all (else: not in the Holm family)."""
    return c.decidable and c.min_p < ALPHA


def holm_of(contrasts: list[Contrast]) -> list[float]:
    return holm([c.p if decides(c) else math.nan for c in contrasts])


NUMBERS = (
    "strata",
    "strata_used",
    "cells_a",
    "seeds_a",
    "cells_b",
    "seeds_b",
    "effect",
    "ci_low",
    "ci_high",
    "p",
    "min_p",
    "reason",
)


def numbers(c: Contrast) -> dict[str, object]:
    return {
        "strata": len(c.strata_used),
        "strata_used": "; ".join(c.strata_used[:4]) + ("; ..." if len(c.strata_used) > 4 else ""),
        "cells_a": c.n_cells_a,
        "seeds_a": c.n_seeds_a,
        "cells_b": c.n_cells_b,
        "seeds_b": c.n_seeds_b,
        "effect": c.effect,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "p": c.p if c.decidable else math.nan,
        "min_p": c.min_p,
        "reason": c.reason or "",
    }
