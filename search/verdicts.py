"""A family of claims' verdicts: Holm's adjustment, and held / refuted / not significant / not
enough data from a :class:`search.statistics.Contrast` and its adjusted p.

Multiplicity: Holm (Scand. J. Statist. 1979) over one family controls the family-wise error. A
claim whose design cannot reach alpha even unadjusted can never be rejected, so leaving it out of
the family keeps that control and gives the others more power (Tarone, "A Modified Bonferroni
Method for Discrete Data", Biometrics 1990).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from statsmodels.stats.multitest import multipletests

from search.statistics import Contrast

__all__ = ["holm", "verdict"]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (statsmodels' ``multipletests``); NaN means not tested
    and is not counted in m. Holm (1979) controls the family-wise error under any dependence
    between the claims and is uniformly more powerful than Bonferroni."""
    tested = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    if tested:
        corrected = multipletests([pvalues[i] for i in tested], method="holm")[1]
        for i, p in zip(tested, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def verdict(c: Contrast, p_holm: float, alpha: float = 0.05) -> tuple[str, str]:
    """("held" | "refuted" | "not significant" | "not enough data", one-line reason).

    Claims are oriented so that A is the side claimed better: held needs p_holm < alpha and a
    positive effect, refuted the same with a negative one. "not enough data" only when the design
    could not decide (``c.reason``, or min_p ≥ alpha even before adjustment), so "not significant"
    always means the data could have said otherwise.
    """
    if c.reason is not None:
        return "not enough data", c.reason
    if c.min_p >= alpha:
        return "not enough data", f"the smallest possible p is {c.min_p:.3g} ≥ {alpha:g}"
    if math.isnan(p_holm):  # a caller's slip, not a property of the data: say so loudly
        raise ValueError("p_holm is NaN for a decidable contrast: pass its p to holm()")
    ci = f"{c.level:.0%} CI {c.ci_low:+.3g} to {c.ci_high:+.3g}"
    numbers = f"effect {c.effect:+.3g} ({ci}), p = {c.p:.2g}, p_holm = {p_holm:.2g}"
    if p_holm < alpha and c.effect > 0:
        return "held", numbers
    if p_holm < alpha and c.effect < 0:
        return "refuted", numbers
    return "not significant", numbers
