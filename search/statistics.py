"""Statistics for claims: which runs count, and one contrast with its test and CI.

Pure numpy/pandas: no Ray, MLflow, Optuna or other gradsweep module, so it is tested without
training. Typical use, one family of claims (keep accuracy claims apart from gradient claims;
`holm` and `verdict` are in :mod:`search.verdicts`)::

    obs, merged_away = merge_replicates(obs, factors)
    cs = [contrast(obs, metric, a, b, strata) for a, b, strata in claims]
    p_holm = holm([c.p if c.decidable else math.nan for c in cs])
    verdicts = [verdict(c, p) for c, p in zip(cs, p_holm)]

Design, and why:

- **Unit of evidence.** Training is deterministic given configuration and seed, so two runs with
  the same factor values and the same seed are one observation, and a configuration (a *cell*)
  is one unit whose seeds are its replicates; identical runs are never independent evidence
  (Bouthillier et al., "Accounting for Variance in Machine Learning Benchmarks", MLSys 2021).
  `merge_replicates` enforces this before anything is counted.
- **What a claim compares.** Cells that differ only in the claim's factor: the other factors
  (the *strata*) are held equal, and a stratum counts only when it has both sides. Pooling across
  strata instead can reverse the sign when one side is over-represented in an easy stratum
  (Simpson's paradox).
- **Statistic.** T = Σ_s w_s (mean_A,s − mean_B,s), the weighted mean of within-stratum
  differences of means, with w_s ∝ n_A,s·n_B,s / (n_A,s + n_B,s) summing to 1. Under equal
  variances Var(mean_A,s − mean_B,s) = σ²(n_A,s + n_B,s)/(n_A,s·n_B,s), so these are the
  inverse-variance weights: the weights Mantel & Haenszel (JNCI 1959) give a stratum's risk
  difference and, on the rank scale, van Elteren's stratified Wilcoxon (Bull. ISI 1960). T is in
  the metric's units, so the effect and its CI read directly ("+0.03 accuracy").
- **Test.** A stratified permutation test (Good, "Permutation, Parametric and Bootstrap Tests of
  Hypotheses", 3rd ed. 2005): side labels are permuted among the observations (seeds) of each
  stratum only, so stratum baselines never leak into the null distribution. The null is that the
  observations of a stratum are exchangeable between the sides; the test is exact under it with
  no normality assumption, which matters with 3–5 seeds. Two-sided on |T|. When the number of
  distinct arrangements N = Π_s C(n_s, n_A,s) is at most ``n_resamples`` they are all enumerated
  and p is exact; otherwise p = (1 + #{|T_perm| ≥ |T_obs|}) / (R + 1) over R seeded random
  permutations, which never reports 0 and keeps the test valid (Phipson & Smyth, "Permutation
  P-values Should Never Be Zero", SAGMB 2010). Statistics equal up to rounding count as ties
  (as ``scipy.stats.permutation_test`` does), so discrete metrics such as accuracy on a fixed
  test set are not made anti-conservative by floating-point noise.
- **CI from the same test.** The 1 − alpha CI is the set of shifts Δ the test does not reject
  when Δ is subtracted from side A's values (test inversion, Ernst, "Permutation Methods: A Basis
  for Exact Inference", Statistical Science 2004). T is linear in the values, so under a shift
  T_perm(Δ) = T_perm − Δ·c_perm with c_perm computed once from the same permutations; each
  permutation then accepts a closed interval of Δ around the estimate, the endpoints have a closed
  form, and the CI's ends are order statistics of them: exact, no root finding, and "CI excludes
  0" ⇔ "p < alpha" holds by construction. It assumes a constant additive shift, the model behind
  a difference of means.
- **What the design can decide.** ``min_p`` is the smallest p the design could ever give: 2/N
  when every stratum is balanced (the mirror arrangement ties with the observed one), else 1/N,
  and never below 1/(R + 1) under Monte Carlo. When it is ≥ alpha no data could make the claim
  significant, so the answer is "not enough data" with a reason, never "not significant".
- **Welch instead of permutations** (``method="welch"``, what the claims use). A permutation
  test's p can't go below 2 / C(2n, n): 0.029 with 4 seeds a side, which no claim survives
  after a Holm correction over a dozen claims, however large the effect. The stratified Welch t
  test (the same T; its variance from the seeds, Σ w_s² (s²_A,s/n_A,s + s²_B,s/n_B,s), with
  Welch–Satterthwaite degrees of freedom; Welch, Biometrika 1947) reaches any p with 2 or more
  seeds a side, at the price of assuming roughly normal seed-to-seed variation of a metric, which
  holds for accuracies away from 0 and 1 and for gradient figures on a log scale. Its CI is
  T ± t·SE from the same statistic, so "CI excludes 0" ⇔ "p < alpha" here too. When no seed
  varied on either side (every seed at chance, say) the standard error is 0 and t undefined:
  that is "not enough data" with that reason, never p = 0 with a zero-width CI.
- **Why not a mixed model** (cells as groups, seeds within). In these designs each side of a
  stratum is usually one cell, so a random cell effect is confounded with the claim's factor and
  cannot be estimated apart from it; and the claim is about these configurations, with seeds as
  the replicates, which is exactly what the permutation within strata treats as random.
- **Several cells on one side of a stratum** (e.g. two alphas of leaky ReLU when alpha is not a
  stratum) are pooled as one side: the test then is about the side as a whole, and it assumes
  those cells are exchangeable. Put every factor that should be held equal into ``strata``.
- **Multiplicity and verdicts** are in :mod:`search.verdicts` (Holm within a family).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import pandas as pd

from search.permutation import TIE, permutation_test, smallest_p, too_small

__all__ = ["Contrast", "Side", "contrast", "merge_replicates"]

#: How the reason starts when Welch lacks replicates (callers whose replicates are not seeds
#: say it in their own words).
TOO_FEW_REPLICATES = "no stratum has 2 or more seeds on both sides"
#: The test behind a contrast (see the module docstring).
Method = Literal["permutation", "welch"]
#: A side of a claim: a boolean mask aligned with the observations, or a function making one.
Side: TypeAlias = pd.Series | np.ndarray | Callable[[pd.DataFrame], "pd.Series | np.ndarray"]


@dataclass(frozen=True)
class Contrast:
    """One claim "side A beats side B on ``metric``" in numbers (NaN where nothing was tested).

    ``effect`` is T (A − B, metric units); ``[ci_low, ci_high]`` its ``level`` CI from inverting
    the test that gave ``p``. ``reason`` is one line saying why the design cannot decide, or None.
    Counts are over the strata used (those with both sides).
    """

    metric: str
    strata_used: list[str]
    strata_one_sided: int
    n_cells_a: int
    n_seeds_a: int
    n_cells_b: int
    n_seeds_b: int
    effect: float
    ci_low: float
    ci_high: float
    p: float
    min_p: float
    exact: bool
    level: float
    reason: str | None = None

    @property
    def decidable(self) -> bool:
        """Whether the design could reach significance: pass ``p`` to Holm only when it could."""
        return self.reason is None


def undecided(metric: str, reason: str, one_sided: int = 0, alpha: float = 0.05) -> Contrast:
    """A contrast the data cannot decide: no numbers, p = 1, and ``reason`` in one line."""
    nan = math.nan
    return Contrast(
        metric, [], one_sided, 0, 0, 0, 0, nan, nan, nan, nan, 1.0, True, 1 - alpha, reason
    )


def merge_replicates(obs: pd.DataFrame, factors: list[str]) -> tuple[pd.DataFrame, int]:
    """Collapse runs with identical factor values and seed into one row; add ``cell``, ``copies``.

    Training is deterministic given configuration and seed, so such rows are one observation
    counted several times. Numeric columns are averaged (NaN-skipping, so a crashed copy does not
    erase a finished one), other columns keep their first value, ``trial`` keeps the smallest id.
    Grouping keeps NaN keys (alpha is NaN for ReLU). ``cell`` is a short hash of the factor
    values, stable across processes and column order. Returns the merged frame and how many rows
    were merged away.
    """
    keys = [*factors, "seed"]
    missing = [k for k in keys if k not in obs.columns]
    if missing:
        raise ValueError(f"observations lack the column(s) {', '.join(missing)}")
    data = obs if "copies" in obs.columns else obs.assign(copies=1)  # merging again sums copies
    agg: dict[str, str] = {}
    for col in data.columns.drop([*keys, "cell"], errors="ignore"):
        numeric = pd.api.types.is_numeric_dtype(data[col])
        numeric = numeric and not pd.api.types.is_bool_dtype(data[col])
        agg[col] = {"trial": "min", "copies": "sum"}.get(col, "mean" if numeric else "first")
    merged = data.groupby(keys, dropna=False, sort=True).agg(agg).reset_index()
    merged["cell"] = [_cell_id(row, factors) for row in merged[factors].itertuples(index=False)]
    order = [*obs.columns, *(c for c in ("copies", "cell") if c not in obs.columns)]
    return merged[order], len(obs) - len(merged)


def _cell_id(values: tuple, factors: list[str]) -> str:
    """A 10-hex-digit id of the factor values: numbers as floats, so 1 and 1.0 agree."""
    parts = sorted(f"{name}={_canonical(v)}" for name, v in zip(factors, values, strict=True))
    return hashlib.blake2b("|".join(parts).encode(), digest_size=5).hexdigest()


def _canonical(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | float | np.integer | np.floating):
        return "nan" if math.isnan(value) else repr(float(value))
    return "nan" if value is None else str(value)


def _label(value: object) -> str:
    if isinstance(value, float | np.floating) and not isinstance(value, bool):
        return "nan" if math.isnan(value) else f"{value:g}"
    return str(value)


def _mask(obs: pd.DataFrame, side: Side, name: str) -> np.ndarray:
    raw = side(obs) if callable(side) else side
    if isinstance(raw, pd.Series):
        raw = raw.reindex(obs.index)
        if raw.isna().any():
            raise ValueError(f"side {name}'s mask does not cover every observation")
        if pd.api.types.is_bool_dtype(raw):
            raw = raw.to_numpy(dtype=bool)
    values = np.asarray(raw)
    if values.shape != (len(obs),) or values.dtype != bool:
        raise ValueError(f"side {name} must be a boolean mask with one entry per observation")
    return values


def contrast(
    obs: pd.DataFrame,
    metric: str,
    side_a: Side,
    side_b: Side,
    strata: list[str],
    *,
    n_resamples: int = 9999,
    seed: int = 0,
    alpha: float = 0.05,
    method: Method = "permutation",
) -> Contrast:
    """Stratified permutation test and CI of "A beats B on ``metric``", other factors held equal.

    ``obs`` comes from `merge_replicates` (one row per cell and seed; it raises otherwise, since
    copies would pass for replicates). Sides are disjoint masks or functions of ``obs``; rows with
    a non-finite metric are dropped; ``strata`` are the factor columns held equal. Seeded and
    deterministic; ``alpha`` sets the CI level (1 − alpha) and the "design cannot decide" bound.
    """
    if not 0 < alpha < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_resamples ≥ 1, got {alpha}, {n_resamples}")
    needed = ["cell", "seed", metric, *strata]
    missing = [c for c in needed if c not in obs.columns]
    if "cell" in missing:
        raise ValueError("contrast needs the `cell` column: call merge_replicates(obs, factors)")
    if missing:
        raise ValueError(f"observations lack the column(s) {', '.join(missing)}")
    if obs.duplicated(["cell", "seed"]).any():
        raise ValueError("two rows share a cell and a seed: call merge_replicates(obs, factors)")
    in_a, in_b = _mask(obs, side_a, "A"), _mask(obs, side_b, "B")
    cells = obs["cell"].to_numpy(dtype=object)
    both = sorted(set(cells[in_a]) & set(cells[in_b]))
    if both:
        raise ValueError(f"cell(s) {', '.join(map(str, both))} are on both sides of the claim")
    y = obs[metric].to_numpy(dtype=float)
    finite = np.isfinite(y)
    ran = {"A": in_a.any(), "B": in_b.any()}
    in_a, in_b = in_a & finite, in_b & finite

    def empty(reason: str, one_sided: int = 0) -> Contrast:
        return undecided(metric, reason, one_sided, alpha)

    for name, mask in (("A", in_a), ("B", in_b)):
        if not ran[name]:
            return empty(f"no trial of the study is on side {name}")
        if not mask.any():
            return empty(f"no observation on side {name} has a finite {metric}")

    # Plain numpy from here: a claim is evaluated some thirty times per report.
    rows_used = in_a | in_b
    is_a, values, cells = in_a[rows_used], y[rows_used], cells[rows_used]
    # Integer codes per stratum factor (NaN is a level of its own, as alpha is NaN for ReLU).
    factorized = [
        pd.factorize(obs[f].to_numpy()[rows_used], sort=True, use_na_sentinel=False) for f in strata
    ]
    codes = np.column_stack([np.zeros(len(values), np.intp), *(c for c, _ in factorized)])
    keys, sid = np.unique(codes, axis=0, return_inverse=True)
    sid = sid.ravel()
    n_strata = len(keys)
    n_a = np.bincount(sid[is_a], minlength=n_strata)
    n_b = np.bincount(sid[~is_a], minlength=n_strata)
    used = np.flatnonzero((n_a > 0) & (n_b > 0))
    one_sided = int(((n_a > 0) != (n_b > 0)).sum())
    if used.size == 0:
        return empty(_unmatched(codes[:, 1:], is_a, strata), one_sided)

    if method == "welch":  # a side's seed variation needs two seeds of it in the stratum
        used = np.flatnonzero((n_a > 1) & (n_b > 1))
        if used.size == 0:
            copies = (
                int(obs["copies"].to_numpy()[rows_used].sum() - rows_used.sum())
                if ("copies" in obs.columns)
                else 0
            )
            merged = f" ({copies} identical runs merged)" if copies else ""
            return empty(
                f"{TOO_FEW_REPLICATES}{merged}: the seed-to-seed "
                "variation can't be estimated (run each configuration with training.seeds >= 2)",
                one_sided,
            )
    keep = np.isin(sid, used)
    labels, xs = [], []
    for s in used:
        rows = np.flatnonzero(sid == s)
        levels = (uniques[code] for (_, uniques), code in zip(factorized, keys[s, 1:], strict=True))
        labels.append(", ".join(f"{f}={_label(v)}" for f, v in zip(strata, levels, strict=True)))
        x = np.concatenate([values[rows[is_a[rows]]], values[rows[~is_a[rows]]]])
        xs.append(x - x.mean())  # T is invariant to a per-stratum shift; centring cuts rounding
    na, nb = n_a[used], n_b[used]
    h = na * nb / (na + nb)  # inverse variance of a difference of means under equal variances
    w = h / h.sum()
    if method == "welch":
        t_obs, ci_low, ci_high, p = _welch(xs, na, nb, w, alpha)
        min_p, exact, reason = 0.0, False, None
        if math.isnan(p):
            reason = (
                f"no seed's {metric} differs from the others of its side in any stratum used: "
                "the seed-to-seed variation is 0, so Welch's test and CI are undefined"
            )
    else:
        t_obs, ci_low, ci_high, p, min_p, exact = permutation_test(
            xs, na, nb, w, n_resamples, seed, alpha
        )
        reason = None
        if min_p >= alpha and not exact and smallest_p(na, nb) < alpha:
            reason = f"n_resamples={n_resamples} cannot give p below {min_p:.3g}: use more"
        elif min_p >= alpha:
            copies = 0
            if "copies" in obs.columns:
                copies = int(obs["copies"].to_numpy()[rows_used][keep].sum() - keep.sum())
            reason = too_small(na, nb, min_p, alpha, copies)
    return Contrast(
        metric=metric,
        strata_used=labels if strata else ["all"],
        strata_one_sided=one_sided,
        n_cells_a=len(set(cells[keep & is_a])),
        n_seeds_a=int(na.sum()),
        n_cells_b=len(set(cells[keep & ~is_a])),
        n_seeds_b=int(nb.sum()),
        effect=t_obs,
        ci_low=ci_low,
        ci_high=ci_high,
        p=p,
        min_p=min_p,
        exact=exact,
        level=1 - alpha,
        reason=reason,
    )


def _welch(
    xs: list[np.ndarray], na: np.ndarray, nb: np.ndarray, w: np.ndarray, alpha: float
) -> tuple[float, float, float, float]:
    """(T, CI low, CI high, two-sided p) of the stratified Welch t statistic.

    T = Σ w_s (mean_A,s − mean_B,s) as in the permutation test; its variance is estimated from
    the seeds, Σ w_s² (s²_A,s / n_A,s + s²_B,s / n_B,s), with Welch–Satterthwaite degrees of
    freedom (Welch, Biometrika 1947; Satterthwaite 1946). The CI is T ± t_{df, 1−alpha/2}·SE and
    the p-value the same t, so "CI excludes 0" ⇔ "p < alpha". When no seed varied on either
    side of any stratum the variance estimate is 0 and t is undefined: p and the CI are NaN (the
    caller says "not enough data"), not a p of 0 and a zero-width CI that would claim certainty
    from runs that merely repeated themselves (e.g. every seed stuck at chance).
    """
    from scipy import stats

    t_obs, terms, dofs = 0.0, [], []
    for x, a, ws in zip(xs, na, w, strict=True):
        side_a, side_b = x[:a], x[a:]
        t_obs += ws * (side_a.mean() - side_b.mean())
        for side in (side_a, side_b):
            terms.append(ws**2 * side.var(ddof=1) / len(side))
            dofs.append(len(side) - 1)
    variance = float(sum(terms))
    scale = max(float(np.abs(x).max()) for x in xs)
    if variance <= (TIE * scale) ** 2:
        return float(t_obs), math.nan, math.nan, math.nan
    df = variance**2 / sum(v**2 / d for v, d in zip(terms, dofs, strict=True) if v > 0)
    se = math.sqrt(variance)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    p = float(2 * stats.t.sf(abs(t_obs) / se, df))
    return float(t_obs), float(t_obs - half), float(t_obs + half), p


def _unmatched(codes: np.ndarray, is_a: np.ndarray, strata: list[str]) -> str:
    """Name the stratum factor(s) that keep every A cell from matching a B cell."""
    ua, ub = np.unique(codes[is_a], axis=0), np.unique(codes[~is_a], axis=0)
    differ = ua[:, None, :] != ub[None, :, :]
    always = [f for f, d in zip(strata, differ.all(axis=(0, 1)), strict=True) if d]
    if always:
        verb = "differs" if len(always) == 1 else "differ"
        return f"no stratum has both sides ({', '.join(always)} {verb} in every pair of cells)"
    some = [f for f, d in zip(strata, differ.any(axis=(0, 1)), strict=True) if d]
    return f"no stratum has both sides (every pair of cells differs in one of {', '.join(some)})"
