"""The stratified permutation test: the null distribution of T, its inversion, the smallest p a
design can give, and the reason when it cannot decide.

Used by :func:`search.statistics.contrast` with ``method="permutation"``; see that module's
docstring for the design (Good 2005 for the test, Ernst 2004 for the CI by inversion).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

#: Statistics closer than this (times the largest centred value) are ties: far above the
#: rounding of a sum of a few hundred floats, far below the resolution of a logged metric.
TIE = 1e-9


def null_distribution(
    xs: list[np.ndarray],
    na: np.ndarray,
    nb: np.ndarray,
    w: np.ndarray,
    exact: bool,
    n_resamples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """T and c for every arrangement (exact) or R random ones: T_perm(Δ) = T − Δ·c.

    Per stratum, an arrangement is the set of positions labelled A (side A's values come first);
    k of them are originally A, so shifting A by Δ moves that stratum's difference by
    Δ·(k/n_A − (n_A − k)/n_B). Strata combine by outer sums (exact) or row-wise (Monte Carlo).
    A Monte Carlo stratum with at most R arrangements draws uniformly from its table of them
    (the same law as a random permutation, and cheaper than shuffling R rows); a larger one
    shuffles its labels row by row.
    """
    rng = np.random.default_rng(seed)
    t = np.zeros(1)
    c = np.zeros(1)
    for x, a, b, ws in zip(xs, na, nb, w, strict=True):
        n = int(a + b)
        if math.comb(n, int(a)) <= n_resamples:
            picks = np.array(list(combinations(range(n), int(a))), dtype=np.intp)
            sum_a, k = x[picks].sum(axis=1), (picks < a).sum(axis=1)
            if not exact:
                draw = rng.integers(len(picks), size=n_resamples)
                sum_a, k = sum_a[draw], k[draw]
        else:
            labels = rng.permuted(np.broadcast_to(np.arange(n) < a, (n_resamples, n)), axis=1)
            sum_a, k = labels @ x, labels[:, :a].sum(axis=1)
        t_s = ws * (sum_a / a - (x.sum() - sum_a) / b)
        c_s = ws * (k / a - (a - k) / b)
        if exact:
            t = (t[:, None] + t_s[None, :]).ravel()
            c = (c[:, None] + c_s[None, :]).ravel()
        else:
            t, c = t + t_s, c + c_s
    # c is ±1 only for the identity and (balanced) mirror arrangements; snap their rounding so
    # those arrangements accept every shift, as they do exactly.
    c = np.clip(c, -1.0, 1.0)
    c[np.abs(c - 1) < 1e-9] = 1.0
    c[np.abs(c + 1) < 1e-9] = -1.0
    return t, c


def invert(
    t: np.ndarray, c: np.ndarray, t_obs: float, tol: float, offset: int, denom: int, alpha: float
) -> tuple[float, float, float]:
    """p at Δ = 0 and the CI {Δ : p(Δ) ≥ alpha}, both from the same per-permutation intervals.

    Arrangement r counts as extreme at Δ when |t_r − Δ·c_r| + tol ≥ |t_obs − Δ|. As |c_r| ≤ 1,
    the slack (left minus right) rises up to Δ = t_obs and falls after it, so r counts exactly on
    an interval [lo_r, hi_r] around t_obs; on each side the slack is the max of two lines, so the
    ends have a closed form. p(Δ) = (offset + #{r : lo_r ≤ Δ ≤ hi_r}) / denom then falls
    monotonically away from t_obs, so the CI's ends are order statistics of lo and hi, and
    p(0) < alpha ⇔ 0 ∉ CI.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.minimum(root(t_obs - t - tol, 1 - c, -1), root(t_obs + t - tol, 1 + c, -1))
        hi = np.maximum(root(t_obs + t + tol, 1 + c, +1), root(t_obs - t + tol, 1 - c, +1))
    counts = offset + np.arange(t.size + 1)
    need = int(np.argmax(counts / denom >= alpha))  # fewest arrangements that keep p ≥ alpha
    ci_low = -math.inf if need == 0 else float(np.partition(lo, need - 1)[need - 1])
    ci_high = math.inf if need == 0 else float(-np.partition(-hi, need - 1)[need - 1])
    if t_obs > 0:
        extreme = int((lo <= 0).sum())
    elif t_obs < 0:
        extreme = int((hi >= 0).sum())
    else:
        extreme = t.size
    return (offset + extreme) / denom, ci_low, ci_high


def root(num: np.ndarray, slope: np.ndarray, side: int) -> np.ndarray:
    """Ends num/slope of the half-lines where lines of slope ≥ 0 are ≥ 0; ±inf for flat ones.

    ``side`` −1: the line is slope·Δ − num, the half-line [num/slope, ∞); +1: num − slope·Δ,
    (−∞, num/slope]. A flat line holds everywhere (end at side·inf) when its constant is ≥ 0,
    nowhere otherwise (end at −side·inf).
    """
    flat = slope == 0
    out = num / np.where(flat, 1.0, slope)
    holds = (-num >= 0) if side < 0 else (num >= 0)
    return np.where(flat, np.where(holds, side * math.inf, -side * math.inf), out)


def smallest_p(na: np.ndarray, nb: np.ndarray) -> float:
    """The smallest p an exact permutation test of this design can give: 2/N when every stratum
    is balanced (the mirror arrangement ties with the observed one), else 1/N."""
    arrangements = math.prod(math.comb(int(a + b), int(a)) for a, b in zip(na, nb, strict=True))
    return (2 if bool(np.all(na == nb)) else 1) / arrangements


def permutation_test(
    xs: list[np.ndarray],
    na: np.ndarray,
    nb: np.ndarray,
    w: np.ndarray,
    n_resamples: int,
    seed: int,
    alpha: float,
) -> tuple[float, float, float, float, float, bool]:
    """(T, CI low, CI high, p, smallest possible p, exact) of the stratified permutation test."""
    arrangements = math.prod(math.comb(int(a + b), int(a)) for a, b in zip(na, nb, strict=True))
    exact = arrangements <= n_resamples
    t, c = null_distribution(xs, na, nb, w, exact, n_resamples, seed)
    t_obs = float(w @ np.array([x[:a].mean() - x[a:].mean() for x, a in zip(xs, na, strict=True)]))
    tol = TIE * max(float(np.abs(x).max()) for x in xs)
    offset, denom = (0, arrangements) if exact else (1, n_resamples + 1)
    p, ci_low, ci_high = invert(t, c, t_obs, tol, offset, denom, alpha)
    min_p = smallest_p(na, nb) if exact else max(smallest_p(na, nb), 1 / (n_resamples + 1))
    return t_obs, ci_low, ci_high, p, min_p, exact


def too_small(na: np.ndarray, nb: np.ndarray, min_p: float, alpha: float, copies: int) -> str:
    """One line: the design, its smallest possible p, and the balanced size that would do."""
    n = len(na)
    where = f"{n} stratum" if n == 1 else f"{n} strata"
    if np.all(na == na[0]) and np.all(nb == na[0]):
        m = int(na[0])
        design = f"{m} seed{'s' if m > 1 else ''} per side in {where}"
    else:
        design = f"{int(na.sum())} vs {int(nb.sum())} seeds in {where}"
    if copies:
        design += f" ({copies} identical run{'s' if copies > 1 else ''} merged)"
    k = next(m for m in range(1, 64) if 2 / math.comb(2 * m, m) ** n < alpha)
    return f"{design}: the smallest possible p is {min_p:.3g} (needs ≥ {k} seeds per side)"
