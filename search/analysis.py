"""Statistics over a study's trials: factor tables, pairwise tests, and the notes' claims.

One trial is one observation of its metric (the mean over seeds when a trial trained several).
Only trials that ran every epoch count: a trial stopped early by ASHA was scored after fewer
epochs, and a diverged one has no score. Every table says how many trials it used.

- Factor tables: per level, n, mean, median, best and a 95% bootstrap CI of the mean
  (``scipy.stats.bootstrap``, BCa, seeded).
- Pairwise tests: two-sided Mann-Whitney U between every pair of levels, Holm-corrected.
- Claims: each a one-sided question "A beats B" answered with the difference of means, its 95%
  bootstrap CI and a Holm-corrected Mann-Whitney p-value: **held** when the CI excludes zero on the
  claimed side and p < 0.05, **refuted** when it excludes zero on the other side and p < 0.05,
  **not significant** otherwise, **not enough data** with fewer than ``MIN_N`` trials on a side
  or when even the most extreme ranking of these sample sizes could not reach significance after
  Holm (so a "not significant" always means the data could have said otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations, pairwise

import numpy as np
import pandas as pd
from scipy import stats

MIN_N = 3
ALPHA = 0.05
FACTORS: dict[str, list[str]] = {
    "activation": ["activation"],
    "init": ["init"],
    "bn": ["bn"],
    "activation_bn": ["activation", "bn"],
}
#: The notes' rule of thumb, best first; tested pairwise between neighbours present in a study.
ACTIVATION_CHAIN = ["elu", "leaky_relu", "relu", "tanh", "logistic"]


def usable(trials: pd.DataFrame, metric: str = "best_val_accuracy") -> pd.DataFrame:
    """Trials that ran every epoch and have a finite ``metric``."""
    ok = (trials["outcome"] == "completed") & trials[metric].notna()
    return trials[ok]


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% BCa bootstrap CI of the mean (NaNs for fewer than 2 values; the value itself when all
    values are equal)."""
    if len(values) < 2 or np.ptp(values) == 0:
        value = float(values[0]) if len(values) else math.nan
        return (value, value) if len(values) >= 2 else (math.nan, math.nan)
    res = stats.bootstrap((values,), np.mean, n_resamples=2000, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (scipy has only Benjamini-Hochberg)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):  # NaN = not tested, so not counted in m
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def factor_table(
    trials: pd.DataFrame, factor: str, metric: str = "best_val_accuracy"
) -> pd.DataFrame:
    """Per level of ``factor``: n, mean, median, best, 95% CI of the mean; best mean first."""
    data = usable(trials, metric)
    columns = FACTORS[factor]
    rows = []
    for level, group in data.groupby(columns, sort=True):
        values = group[metric].to_numpy(dtype=float)
        low, high = bootstrap_ci(values)
        name = (
            " + ".join(map(str, level))
            if isinstance(level, tuple) and len(columns) > 1
            else (level[0] if isinstance(level, tuple) else level)
        )
        rows.append(
            {
                "level": name,
                "n": len(values),
                "mean": values.mean(),
                "median": float(np.median(values)),
                "best": values.max(),
                "ci_low": low,
                "ci_high": high,
            }
        )
    table = pd.DataFrame(
        rows, columns=["level", "n", "mean", "median", "best", "ci_low", "ci_high"]
    )
    return table.sort_values("mean", ascending=False).reset_index(drop=True)


def _levels(data: pd.DataFrame, factor: str) -> pd.Series:
    if data.empty:
        return pd.Series(dtype=str)
    return data[FACTORS[factor]].astype(str).agg(" + ".join, axis=1)


def pairwise_tests(
    trials: pd.DataFrame, factor: str, metric: str = "best_val_accuracy"
) -> pd.DataFrame:
    """Mann-Whitney U for every pair of levels with >= 2 trials each, Holm-corrected."""
    data = usable(trials, metric)
    levels = _levels(data, factor)
    groups = {
        lvl: data.loc[levels == lvl, metric].to_numpy(dtype=float) for lvl in sorted(set(levels))
    }
    rows = []
    for a, b in combinations(groups, 2):
        x, y = groups[a], groups[b]
        if len(x) < 2 or len(y) < 2:
            continue
        p = float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
        rows.append(
            {"a": a, "b": b, "n_a": len(x), "n_b": len(y), "diff": x.mean() - y.mean(), "p": p}
        )
    table = pd.DataFrame(rows, columns=["a", "b", "n_a", "n_b", "diff", "p", "p_holm"])
    if not table.empty:
        table["p_holm"] = holm(table["p"].tolist())
    return table


@dataclass(frozen=True)
class Claim:
    """ "Trials matching ``a`` beat trials matching ``b`` on ``metric``" (higher is better)."""

    name: str
    a: Callable[[pd.DataFrame], pd.Series]
    b: Callable[[pd.DataFrame], pd.Series]
    metric: str = "best_val_accuracy"
    label_a: str = ""
    label_b: str = ""


def _is(column: str, *values: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda d: d[column].isin(values)


def _both(f: Callable[[pd.DataFrame], pd.Series], g: Callable[[pd.DataFrame], pd.Series]):
    return lambda d: f(d) & g(d)


def _leaky_alpha(low: float, high: float) -> Callable[[pd.DataFrame], pd.Series]:
    def select(d: pd.DataFrame) -> pd.Series:
        alpha = pd.to_numeric(d["alpha"], errors="coerce")
        return (d["activation"] == "leaky_relu") & alpha.between(low, high)

    return select


def notes_claims(trials: pd.DataFrame) -> list[Claim]:
    """The notes' claims that this study's factors can speak to."""
    present = set(trials["activation"].dropna())
    chain = [a for a in ACTIVATION_CHAIN if a in present]
    claims = [
        Claim(f"{a} > {b}", _is("activation", a), _is("activation", b), label_a=a, label_b=b)
        for a, b in pairwise(chain)
    ]
    claims.append(
        Claim(
            "leaky ReLU: alpha ~ 0.2 > alpha ~ 0.01",
            _leaky_alpha(0.1, 0.35),
            _leaky_alpha(0.003, 0.03),
            label_a="alpha in [0.1, 0.35]",
            label_b="alpha in [0.003, 0.03]",
        )
    )
    claims.append(
        Claim(
            "ReLU: He init > Glorot init",
            _both(_is("activation", "relu"), _is("init", "he_normal", "he_uniform")),
            _both(_is("activation", "relu"), _is("init", "glorot_uniform", "glorot_normal")),
            label_a="relu + he_*",
            label_b="relu + glorot_*",
        )
    )
    claims.append(
        Claim(
            "BN helps deep logistic nets",
            _both(_is("activation", "logistic"), _is("bn", "before", "after")),
            _both(_is("activation", "logistic"), _is("bn", "none")),
            label_a="logistic + BN",
            label_b="logistic, no BN",
        )
    )
    claims.append(
        Claim(
            "SELU + LeCun > ELU + He",
            _both(_is("activation", "selu"), _is("init", "lecun_normal", "lecun_uniform")),
            _both(_is("activation", "elu"), _is("init", "he_normal", "he_uniform")),
            label_a="selu + lecun_*",
            label_b="elu + he_*",
        )
    )
    # BN cures vanishing/exploding gradients: |log10 first/last gradient ratio| is smaller with BN.
    for activation in sorted(present):
        claims.append(
            Claim(
                f"BN evens out gradient flow ({activation})",
                _both(_is("activation", activation), _is("bn", "before", "after")),
                _both(_is("activation", activation), _is("bn", "none")),
                metric="grad_flow",
                label_a=f"{activation} + BN",
                label_b=f"{activation}, no BN",
            )
        )
    return claims


def judge_claims(trials: pd.DataFrame, claims: list[Claim] | None = None) -> pd.DataFrame:
    """Verdicts for ``claims`` (default: :func:`notes_claims`) on this study's trials."""
    data = trials[trials["outcome"] == "completed"].copy()
    # Higher is better for every claim: gradient flow is -|log10(first/last ratio)|.
    # Clipped, so that a ratio of exactly 0 (the worst vanishing) counts instead of vanishing.
    ratio = pd.to_numeric(data.get("grad_ratio"), errors="coerce").clip(1e-12, 1e12)
    data["grad_flow"] = -np.abs(np.log10(ratio))
    rows, pvalues = [], []
    for claim in claims if claims is not None else notes_claims(trials):
        x = data.loc[claim.a(data), claim.metric].dropna().to_numpy(dtype=float)
        y = data.loc[claim.b(data), claim.metric].dropna().to_numpy(dtype=float)
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        row = {
            "claim": claim.name,
            "a": claim.label_a,
            "b": claim.label_b,
            "metric": claim.metric,
            "n_a": len(x),
            "n_b": len(y),
            "effect": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p": math.nan,
        }
        if len(x) >= MIN_N and len(y) >= MIN_N:
            row["effect"] = float(x.mean() - y.mean())
            if np.ptp(np.concatenate([x, y])) > 0:
                res = stats.bootstrap(
                    (x, y),
                    lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis),
                    n_resamples=2000,
                    rng=np.random.default_rng(0),
                    method="percentile",
                )
                row["ci_low"], row["ci_high"] = (
                    float(res.confidence_interval.low),
                    float(res.confidence_interval.high),
                )
                row["p"] = float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
        rows.append(row)
        pvalues.append(row["p"])
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(pvalues)
    tested = int(table["p"].notna().sum())
    table["verdict"] = [_verdict(r, tested) for r in table.to_dict("records")]
    return table


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided Mann-Whitney p-value samples of these sizes can give."""
    return 2.0 / math.comb(n_a + n_b, n_a)


def _verdict(row: dict, tested: int) -> str:
    if row["n_a"] < MIN_N or row["n_b"] < MIN_N:
        return "not enough data"
    if smallest_p(row["n_a"], row["n_b"]) * max(tested, 1) >= ALPHA:
        return "not enough data"  # no result could reach significance: absence is no evidence
    p = row["p_holm"]
    if math.isnan(p) or p >= ALPHA:
        return "not significant"
    if row["ci_low"] > 0:
        return "held"
    if row["ci_high"] < 0:
        return "refuted"
    return "not significant"
