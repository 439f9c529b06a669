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
  comparison the design cannot decide is left out of its Holm family and says why. A factor
  names the columns it frees (:data:`FREES`): activations come with their own alpha and, under
  ``matched``, their own initializer, so comparing them holds the initialisation *rule* equal.
- **Timings** (:func:`timings`). Time per epoch is one wall-clock figure per run: the fused
  seeds of a trial train in one process on one clock, so they are not replicates of it. A
  cell's timing replicates are its repeated *runs*: identical configurations are one cell for
  accuracy (training is deterministic given the seed), but each run's wall time is a separate
  measurement of the machine. Per-epoch times within one run are not used as replicates: they
  share the run's process, its neighbours on the machine and their load, so they are correlated
  and would pass one measurement off as many.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from search.schema import CELL_FACTORS, FACTORS, MEAN_EPOCH_SECONDS
from search.statistics import Contrast, contrast, merge_replicates, undecided
from search.verdicts import holm

ALPHA = 0.05
#: The contrasts' test: Welch's t within strata (see :mod:`search.statistics` for why not the
#: permutation test at 3-5 seeds a side).
METHOD = "welch"
#: Outcomes whose trials are evidence (a diverged seed counts at chance accuracy).
EVIDENCE = ("completed", "diverged")
#: Columns a factor's levels may differ in besides its own (the rest are strata): an
#: activation's alpha and, under ``matched``, its initializer (He for ReLU, Glorot for tanh).
FREES: dict[str, tuple[str, ...]] = {
    "activation": ("alpha", "init_applied"),
    "activation_bn": ("alpha", "init_applied"),
}


def strata_for(free: tuple[str, ...] | list[str]) -> list[str]:
    """The columns held equal when ``free`` may differ: every cell factor but those, and the
    initialisation rule (``init_is_matched``) when the activation and its initializer are both
    free but the rule is not, so that matched is compared with matched and the PyTorch default
    with itself. Within one activation the rule follows from the initializer, so a comparison of
    initializers frees it too (else He for ReLU would never meet the default)."""
    strata = [c for c in CELL_FACTORS if c not in free]
    if {"activation", "init_applied"} <= set(free) and "init_is_matched" not in free:
        strata.append("init_is_matched")
    return strata


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
        for seed, figures in sorted(seeds.items()):
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
    "grad_flow_init",
    "grad_flow_final",
    "grad_ratio_init",
    "grad_rate_init",
    "grad_rate_final",
    "dead_frac",
)


def timings(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per run that is evidence: its cell factors, ``epoch_seconds`` (its mean over the
    epochs run, else the last epoch's) and ``seed`` = the run's number within its cell.

    The replicates of a cell's time are its runs (see the module docstring), so rows are never
    merged; ``seed`` numbers them only so that :func:`search.statistics.contrast` sees one row
    per replicate. Adds ``cell`` and ``copies`` as :func:`observations` does.
    """
    columns = [*CELL_FACTORS, "role", "init_is_matched", "trial", "seed", "epoch_seconds"]
    data = trials[trials["outcome"].isin(EVIDENCE)] if not trials.empty else trials
    if data.empty:
        empty = pd.DataFrame(columns=columns)
        return empty.assign(cell=pd.Series(dtype=str), copies=pd.Series(dtype=int))
    frame = pd.DataFrame({f: data.get(f) for f in CELL_FACTORS})
    frame["role"] = data.get("role", "trial")
    frame["init_is_matched"] = data.get("init_is_matched")
    frame["trial"] = data["run_id"]
    mean = data.get(MEAN_EPOCH_SECONDS, pd.Series(math.nan, index=data.index))
    last = data.get("epoch_seconds", pd.Series(math.nan, index=data.index))
    frame["epoch_seconds"] = pd.to_numeric(mean, errors="coerce").fillna(
        pd.to_numeric(last, errors="coerce")
    )
    keys = [*CELL_FACTORS, "role"]
    frame["seed"] = frame.groupby(keys, dropna=False, sort=False).cumcount()
    merged, _ = merge_replicates(frame[columns].reset_index(drop=True), keys)
    return merged


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
    """Every pair of levels compared with the other factors held equal (:func:`strata_for` the
    factor's columns and :data:`FREES`; Welch by :data:`METHOD`), Holm over the pairs the design
    can decide."""
    data = obs[obs["role"] == "trial"] if not obs.empty else obs
    levels = _levels(data, factor)
    strata = strata_for([*FACTORS[factor], *FREES.get(factor, ())])
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


def below(obs: pd.DataFrame, metric: str, side: np.ndarray, margin: float) -> Contrast:
    """ "Side's ``metric`` is below ``margin``" (≈ 0 up to a stated margin): the sign test of its
    median against ``margin`` and the median's CI from inverting that same test
    (``scipy.stats.quantile_test``), over the side's seeds pooled across its cells.

    A sign test, not a t test, because the figure it is for (the fraction of dead units) is
    often exactly 0 in every seed, where a t test has no variance to work with while the sign
    test is exact: n seeds all below the margin give p = 2·0.5^n. Effect and CI are reported
    as margin − median, so a positive effect means "below", as "A beats B" elsewhere.
    """
    values = obs.loc[side, metric].to_numpy(dtype=float)
    cells = obs.loc[side, "cell"][np.isfinite(values)]
    values = values[np.isfinite(values)]
    if not len(values):
        return undecided(metric, f"no observation on side A has a finite {metric}", alpha=ALPHA)
    ties = int(np.sum(values == margin))
    n = len(values) - ties
    min_p = 2 * 0.5**n if n else 1.0
    reason = None
    if min_p >= ALPHA:
        need = next(k for k in range(1, 64) if 2 * 0.5**k < ALPHA)
        reason = (
            f"{n} seed(s) off the margin {margin:g}: a sign test's smallest p is {min_p:.3g} "
            f"(needs ≥ {need} seeds)"
        )
    effect = low = high = p = math.nan
    if n:
        # the sign test drops ties with the margin, as min_p above does
        result = stats.quantile_test(values[values != margin], q=margin, p=0.5)
        ci = result.confidence_interval(1 - ALPHA)
        effect = margin - float(np.median(values))
        low, high, p = margin - float(ci.high), margin - float(ci.low), float(result.pvalue)
    return Contrast(
        metric=metric,
        strata_used=[f"pooled over {cells.nunique()} cell(s)"],
        strata_one_sided=0,
        n_cells_a=int(cells.nunique()),
        n_seeds_a=len(values),
        n_cells_b=0,
        n_seeds_b=0,
        effect=effect,
        ci_low=low,
        ci_high=high,
        p=p,
        min_p=min_p,
        exact=True,
        level=1 - ALPHA,
        reason=reason,
    )


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
