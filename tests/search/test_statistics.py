"""The claims' statistics on simulated studies: validity, power, traps, and the exact small cases.

No training: observations are drawn from seeded normal models whose truth is known, and the
exact cases are checked against a brute-force enumeration written independently of the module.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from search.statistics import Contrast, contrast, merge_replicates
from search.verdicts import holm, verdict

FACTORS = ["activation", "depth", "bn", "lr"]


def elu(d: pd.DataFrame) -> pd.Series:
    return d["activation"] == "elu"


def relu(d: pd.DataFrame) -> pd.Series:
    return d["activation"] == "relu"


def _study(
    strata: list[dict], rng: np.random.Generator, effect: float = 0.0, lr_b: float = 0.01
) -> pd.DataFrame:
    """Observations as merge_replicates leaves them: per stratum ``n_a`` ELU and ``n_b`` ReLU
    seeds around ``base``; ELU gets ``base + effect``. A stratum is a dict with depth, bn, base,
    sd, n_a, n_b. Cells are written directly (merging is tested on its own, and is the slow part).
    """
    columns: dict[str, list] = {k: [] for k in ["trial", "seed", *FACTORS, "acc", "cell"]}
    for s in strata:
        for act, n, mu, lr in (
            ("elu", s["n_a"], s["base"] + effect, 0.01),
            ("relu", s["n_b"], s["base"], lr_b),
        ):
            cell = f"{act}-{s['depth']}-{s['bn']}-{lr}"
            for seed in range(n):
                row = (f"{cell}-{seed}", seed, act, s["depth"], s["bn"], lr, mu, cell)
                for key, value in zip(columns, row, strict=True):
                    columns[key].append(value)
    obs = pd.DataFrame(columns)
    obs["acc"] += rng.normal(
        0.0, np.repeat([s["sd"] for s in strata], [s["n_a"] + s["n_b"] for s in strata])
    )
    return obs


def _strata(n_a: int | list[int], n_b: int | list[int], k: int = 3) -> list[dict]:
    """``k`` strata with different baselines and noise, as depths and BN placements differ."""
    bases, sds = [0.9, 0.8, 0.6, 0.7, 0.85], [0.01, 0.02, 0.015, 0.01, 0.005]
    n_a = n_a if isinstance(n_a, list) else [n_a] * k
    n_b = n_b if isinstance(n_b, list) else [n_b] * k
    return [
        {
            "depth": 5 * (i + 1),
            "bn": "none",
            "base": bases[i],
            "sd": sds[i],
            "n_a": n_a[i],
            "n_b": n_b[i],
        }
        for i in range(k)
    ]


def _brute_p(obs: pd.DataFrame, delta: float) -> float:
    """Two-sided stratified permutation p by full enumeration, written from the definition."""
    groups = []
    for _, g in obs.groupby(["depth", "bn"]):
        a = (g["activation"] == "elu").to_numpy()
        if a.all() or not a.any():
            continue
        groups.append((g["acc"].to_numpy() - delta * a, a))
    raw = [a.sum() * (~a).sum() / len(a) for _, a in groups]
    w = [r / sum(raw) for r in raw]

    def stat(labels: tuple[np.ndarray, ...]) -> float:
        return sum(
            wi * (x[m].mean() - x[~m].mean())
            for wi, (x, _), m in zip(w, groups, labels, strict=True)
        )

    observed = abs(stat(tuple(a for _, a in groups)))
    per_stratum = []
    for x, a in groups:
        masks = []
        for chosen in itertools.combinations(range(len(x)), int(a.sum())):
            m = np.zeros(len(x), dtype=bool)
            m[list(chosen)] = True
            masks.append(m)
        per_stratum.append(masks)
    arrangements = list(itertools.product(*per_stratum))
    extreme = sum(abs(stat(lab)) >= observed - 1e-12 for lab in arrangements)
    return extreme / len(arrangements)


# --- merging replicates ---------------------------------------------------------------------


def test_merge_replicates_groups_nan_factors_and_gives_stable_cells() -> None:
    obs = pd.DataFrame(
        {
            "trial": ["t3", "t1", "t2", "t4"],
            "seed": [0, 0, 1, 0],
            "activation": ["relu", "relu", "relu", "leaky_relu"],
            "alpha": [np.nan, np.nan, np.nan, 0.2],
            "acc": [0.80, 0.82, 0.70, 0.9],
            "loss": [np.nan, 0.5, 0.6, 0.4],
        }
    )
    merged, away = merge_replicates(obs, ["activation", "alpha"])
    assert away == 1 and len(merged) == 3
    relu0 = merged[(merged["activation"] == "relu") & (merged["seed"] == 0)].iloc[0]
    assert relu0["trial"] == "t1" and relu0["copies"] == 2
    assert relu0["acc"] == pytest.approx(0.81) and relu0["loss"] == pytest.approx(
        0.5
    )  # NaN-skipping
    relu_cells = set(merged.loc[merged["activation"] == "relu", "cell"])
    assert len(relu_cells) == 1 and len(set(merged["cell"])) == 2
    # stable: the same id whatever the column order, and numbers compare as numbers
    reordered, _ = merge_replicates(
        obs[["alpha", "activation", "seed", "acc", "trial", "loss"]], ["alpha", "activation"]
    )
    assert set(reordered["cell"]) == set(merged["cell"])
    again, away_again = merge_replicates(merged, ["activation", "alpha"])
    assert (
        away_again == 0
        and again["copies"].sum() == 4
        and list(again["cell"]) == list(merged["cell"])
    )
    ints = pd.DataFrame({"trial": ["a"], "seed": [0], "depth": [20], "acc": [0.5]})
    floats = ints.assign(depth=20.0)
    assert (
        merge_replicates(ints, ["depth"])[0]["cell"][0]
        == merge_replicates(floats, ["depth"])[0]["cell"][0]
    )


def test_duplicate_trap_is_not_enough_data() -> None:
    """Ten "trials" of two configurations, one seed each: one observation per side, no verdict."""
    rows = [
        {
            "trial": f"t{i}",
            "seed": 0,
            "activation": act,
            "depth": 20,
            "bn": "none",
            "lr": 0.01,
            "acc": acc,
        }
        for i, (act, acc) in enumerate([("elu", 0.9)] * 5 + [("relu", 0.7)] * 5)
    ]
    raw = pd.DataFrame(rows)
    with pytest.raises(ValueError, match="merge_replicates"):
        contrast(raw, "acc", elu, relu, ["depth"])
    with pytest.raises(ValueError, match="merge_replicates"):
        contrast(raw.assign(cell=raw["activation"]), "acc", elu, relu, ["depth"])
    obs, away = merge_replicates(raw, FACTORS)
    assert away == 8 and len(obs) == 2
    c = contrast(obs, "acc", elu, relu, ["depth", "bn"])
    assert c.n_seeds_a == c.n_seeds_b == 1 and c.min_p == 1.0 and c.p == 1.0
    assert c.reason is not None and "1 seed per side in 1 stratum" in c.reason
    assert "8 identical runs merged" in c.reason and "smallest possible p is 1" in c.reason
    assert verdict(c, holm([c.p])[0]) == ("not enough data", c.reason)


# --- validity and power ---------------------------------------------------------------------


def test_null_study_rejects_at_most_alpha() -> None:
    """No effect, strata with different baselines and noise, 3-4 seeds per side: size ≤ 0.05.

    Uses n_resamples=999 for speed; the Monte Carlo p (1 + b)/(R + 1) is valid for any R. The
    slack is the binomial 99.9% quantile of the rejection count of an exactly 0.05-level test, so
    a valid engine fails this bound with probability below 0.001 (the data are seeded, so it
    either passes every run or never does). The matching lower quantile checks the test is not
    uselessly conservative.
    """
    claims, alpha = 400, 0.05
    rng = np.random.default_rng(20261129)
    rejected = 0
    for i in range(claims):
        design = _strata(list(rng.integers(3, 5, 3)), list(rng.integers(3, 5, 3)))
        c = contrast(
            _study(design, rng), "acc", elu, relu, ["depth", "bn"], n_resamples=999, seed=i
        )
        assert c.reason is None
        rejected += c.p < alpha
    upper = stats.binom.ppf(0.999, claims, alpha)
    lower = stats.binom.ppf(0.001, claims, alpha)
    assert lower <= rejected <= upper, (rejected, lower, upper)


def test_planted_effect_is_held_and_covered() -> None:
    c = contrast(
        _study(_strata(4, 4), np.random.default_rng(1), effect=0.05),
        "acc",
        elu,
        relu,
        ["depth", "bn"],
    )
    assert c.reason is None and c.p < 0.001
    assert 0 < c.ci_low < 0.05 < c.ci_high
    assert c.effect == pytest.approx(0.05, abs=0.02)
    status, why = verdict(c, holm([c.p, 0.5, 0.9])[0])
    assert status == "held" and "p_holm" in why


def test_ci_covers_a_planted_shift() -> None:
    """The CI inverts the test, so it misses the true shift as often as the test rejects a true
    null: at most 5%, with the same binomial 99.9% slack as the null study (n_resamples=999)."""
    claims, misses = 200, 0
    rng = np.random.default_rng(13)
    for i in range(claims):
        design = _strata(list(rng.integers(3, 6, 3)), list(rng.integers(3, 6, 3)))
        obs = _study(design, rng, effect=0.01)
        c = contrast(obs, "acc", elu, relu, ["depth", "bn"], n_resamples=999, seed=i)
        misses += not c.ci_low <= 0.01 <= c.ci_high
    assert misses <= stats.binom.ppf(0.999, claims, 0.05)


def test_simpsons_paradox_is_resolved_by_strata() -> None:
    """A beats B by 0.02 in both strata, but B sits mostly in the easy stratum."""
    design = [
        {"depth": 5, "bn": "none", "base": 0.9, "sd": 0.005, "n_a": 3, "n_b": 8},
        {"depth": 50, "bn": "none", "base": 0.6, "sd": 0.005, "n_a": 8, "n_b": 3},
    ]
    obs = _study(design, np.random.default_rng(2), effect=0.02)
    pooled = obs.loc[elu(obs), "acc"].mean() - obs.loc[relu(obs), "acc"].mean()
    assert pooled < -0.05  # the trap is real: pooled, B looks far better
    c = contrast(obs, "acc", elu, relu, ["depth", "bn"])
    assert c.effect == pytest.approx(0.02, abs=0.01) and c.ci_low > 0
    assert verdict(c, c.p)[0] == "held"


@pytest.mark.parametrize(
    ("n_a", "n_b", "k", "decimals", "expect_exact"),
    [
        (3, 3, 2, None, True),  # 20 * 20 arrangements: enumerated
        ([4, 3, 5], [4, 4, 3], 3, None, False),  # Monte Carlo
        (4, 4, 3, 2, False),  # accuracy rounded to 0.01: many ties
        (5, 5, 1, 3, True),
    ],
)
def test_ci_excludes_zero_exactly_when_p_below_alpha(n_a, n_b, k, decimals, expect_exact) -> None:
    rng = np.random.default_rng(3)
    base = _study(_strata(n_a, n_b, k), rng)
    if decimals is not None:
        base["acc"] = base["acc"].round(decimals)
    sd = float(base["acc"].std())
    for shift in np.linspace(-3 * sd, 3 * sd, 41):
        obs = base.assign(acc=base["acc"] + shift * elu(base))
        c = contrast(obs, "acc", elu, relu, ["depth", "bn"], n_resamples=2000)
        assert c.exact is expect_exact
        assert c.ci_low <= c.effect <= c.ci_high
        assert (c.ci_low > 0 or c.ci_high < 0) == (c.p < 0.05), (shift, c)


def test_exact_p_and_ci_ends_match_brute_force() -> None:
    """Unbalanced, two strata (10 * 6 arrangements): p equals full enumeration, and the CI's ends
    are where the enumerated p(Δ) of the shifted data crosses alpha."""
    design = [
        {"depth": 5, "bn": "none", "base": 0.8, "sd": 0.01, "n_a": 3, "n_b": 2},
        {"depth": 10, "bn": "none", "base": 0.7, "sd": 0.02, "n_a": 2, "n_b": 2},
    ]
    obs = _study(design, np.random.default_rng(4), effect=0.02)
    c = contrast(obs, "acc", elu, relu, ["depth", "bn"])
    assert c.exact and c.min_p == pytest.approx(1 / 60)
    assert c.p == pytest.approx(_brute_p(obs, 0.0))
    eps = 1e-7
    for end, inward in ((c.ci_low, +1), (c.ci_high, -1)):
        assert _brute_p(obs, end + inward * eps) >= 0.05
        assert _brute_p(obs, end - inward * eps) < 0.05


def test_two_vs_two_in_one_stratum_is_exact_and_cannot_decide() -> None:
    design = [{"depth": 5, "bn": "none", "base": 0.8, "sd": 0.01, "n_a": 2, "n_b": 2}]
    c = contrast(_study(design, np.random.default_rng(5), effect=1.0), "acc", elu, relu, ["depth"])
    assert c.exact and c.min_p == pytest.approx(1 / 3) and c.p >= 1 / 3 - 1e-12
    assert c.p == pytest.approx(1 / 3)  # the largest possible separation still gives 1/3
    assert math.isinf(c.ci_low) and math.isinf(c.ci_high)  # no shift can be rejected
    assert c.reason == (
        "2 seeds per side in 1 stratum: the smallest possible p is 0.333 (needs ≥ 4 seeds per side)"
    )
    assert verdict(c, c.p) == ("not enough data", c.reason)


def test_monte_carlo_agrees_with_exact_enumeration() -> None:
    obs = _study(_strata(4, 4, 2), np.random.default_rng(6), effect=0.01)
    exact = contrast(obs, "acc", elu, relu, ["depth", "bn"], n_resamples=4900)  # 70 * 70 = 4900
    approx = contrast(obs, "acc", elu, relu, ["depth", "bn"], n_resamples=4899, seed=1)
    assert exact.exact and not approx.exact
    assert approx.effect == pytest.approx(exact.effect)
    se = math.sqrt(exact.p * (1 - exact.p) / 4899)
    assert abs(approx.p - exact.p) < 4 * se + 1 / 4900


# --- what counts ----------------------------------------------------------------------------


def test_one_sided_strata_are_ignored_and_counted() -> None:
    rng = np.random.default_rng(7)
    obs = _study(_strata(4, 4, 2), rng, effect=0.03)
    extra = _study([{"depth": 99, "bn": "none", "base": 0.1, "sd": 0.01, "n_a": 4, "n_b": 0}], rng)
    extra2 = _study([{"depth": 98, "bn": "none", "base": 0.1, "sd": 0.01, "n_a": 0, "n_b": 3}], rng)
    c = contrast(
        pd.concat([obs, extra, extra2], ignore_index=True), "acc", elu, relu, ["depth", "bn"]
    )
    ref = contrast(obs, "acc", elu, relu, ["depth", "bn"])
    assert c.strata_one_sided == 2 and ref.strata_one_sided == 0
    assert c.strata_used == ref.strata_used == ["depth=5, bn=none", "depth=10, bn=none"]
    assert (c.effect, c.p, c.ci_low, c.ci_high) == (ref.effect, ref.p, ref.ci_low, ref.ci_high)
    assert (c.n_cells_a, c.n_seeds_a, c.n_cells_b, c.n_seeds_b) == (2, 8, 2, 8)


def test_nan_metrics_are_dropped() -> None:
    obs = _study(_strata(5, 5, 2), np.random.default_rng(8), effect=0.03)
    holes = obs.index[[0, 7, 12]]
    c = contrast(
        obs.assign(acc=obs["acc"].where(~obs.index.isin(holes))), "acc", elu, relu, ["depth", "bn"]
    )
    ref = contrast(obs.drop(index=holes), "acc", elu, relu, ["depth", "bn"])
    assert c.n_seeds_a + c.n_seeds_b == len(obs) - 3
    assert (c.effect, c.p, c.ci_low, c.ci_high, c.min_p) == (
        ref.effect,
        ref.p,
        ref.ci_low,
        ref.ci_high,
        ref.min_p,
    )
    all_nan = contrast(
        obs.assign(acc=np.where(elu(obs), np.nan, obs["acc"])), "acc", elu, relu, ["depth"]
    )
    assert all_nan.reason == "no observation on side A has a finite acc" and math.isnan(all_nan.p)


def test_no_matching_stratum_names_the_factor() -> None:
    obs = _study(_strata(3, 3, 2), np.random.default_rng(9), lr_b=0.1)
    c = contrast(obs, "acc", elu, relu, ["depth", "bn", "lr"])
    assert c.reason == "no stratum has both sides (lr differs in every pair of cells)"
    assert c.strata_one_sided == 4 and math.isnan(c.p) and math.isnan(c.effect)
    assert verdict(c, math.nan) == ("not enough data", c.reason)
    # depth and lr each match somewhere, never together
    crossed = obs.assign(depth=np.where(relu(obs) & (obs["depth"] == 10), 99, obs["depth"]))
    crossed = crossed.assign(
        lr=np.where(relu(crossed) & (crossed["depth"] == 99), 0.01, crossed["lr"])
    )
    c = contrast(crossed, "acc", elu, relu, ["depth", "lr"])
    assert c.reason == "no stratum has both sides (every pair of cells differs in one of depth, lr)"


def test_sides_as_masks_or_functions_and_their_errors() -> None:
    obs = _study(_strata(4, 4, 2), np.random.default_rng(10), effect=0.02)
    shuffled = obs.sample(frac=1.0, random_state=0)
    by_function = contrast(obs, "acc", elu, relu, ["depth", "bn"])
    by_mask = contrast(
        obs,
        "acc",
        shuffled["activation"] == "elu",
        shuffled["activation"] == "relu",
        ["depth", "bn"],
    )
    by_array = contrast(obs, "acc", elu(obs).to_numpy(), relu(obs).to_numpy(), ["depth", "bn"])
    assert by_function == by_mask == by_array  # a Series aligns on the index
    assert contrast(obs, "acc", elu, relu, []).strata_used == ["all"]
    with pytest.raises(ValueError, match="both sides"):
        contrast(obs, "acc", elu, lambda d: d["depth"] > 0, ["depth"])
    with pytest.raises(ValueError, match="boolean mask"):
        contrast(obs, "acc", elu, relu(obs).to_numpy()[:-1], ["depth"])
    with pytest.raises(ValueError, match="lack the column"):
        contrast(obs, "acc", elu, relu, ["width"])


# --- multiplicity and verdicts --------------------------------------------------------------


def test_holm_by_hand() -> None:
    """m = 4 tested: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def _contrast(effect: float, p: float, min_p: float = 1e-4, reason: str | None = None) -> Contrast:
    return Contrast(
        "acc",
        ["all"],
        0,
        1,
        4,
        1,
        4,
        effect,
        effect - 0.01,
        effect + 0.01,
        p,
        min_p,
        False,
        0.95,
        reason,
    )


def test_verdicts() -> None:
    assert verdict(_contrast(0.03, 0.001), 0.004)[0] == "held"
    assert verdict(_contrast(-0.03, 0.001), 0.004)[0] == "refuted"
    status, why = verdict(_contrast(0.03, 0.001), 0.21)
    assert status == "not significant" and "p_holm = 0.21" in why
    assert verdict(_contrast(0.03, 0.2, min_p=0.1), 0.2) == (
        "not enough data",
        "the smallest possible p is 0.1 ≥ 0.05",
    )
    assert verdict(_contrast(0.03, 0.2, reason="too few"), 0.2) == ("not enough data", "too few")
    with pytest.raises(ValueError, match="holm"):
        verdict(_contrast(0.03, 0.001), math.nan)  # left out of Holm by mistake: not "no data"


def test_reasons_and_verdicts_are_one_line() -> None:
    rng = np.random.default_rng(11)
    cases = [
        contrast(_study(_strata(1, 1, 1), rng), "acc", elu, relu, ["depth"]),
        contrast(_study(_strata(1, 1, 3), rng), "acc", elu, relu, ["depth"]),
        contrast(_study(_strata(1, 2, 1), rng), "acc", elu, relu, ["depth"]),
        contrast(_study(_strata(3, 3, 2), rng, lr_b=0.1), "acc", elu, relu, ["lr"]),
        contrast(_study(_strata(4, 4, 2), rng, effect=0.05), "acc", elu, relu, ["depth"]),
    ]
    assert (
        cases[0].reason
        == "1 seed per side in 1 stratum: the smallest possible p is 1 (needs ≥ 4 seeds per side)"
    )
    assert cases[1].reason == (
        "1 seed per side in 3 strata: the smallest possible p is 0.25 (needs ≥ 2 seeds per side)"
    )
    assert cases[2].reason == (
        "1 vs 2 seeds in 1 stratum: the smallest possible p is 0.333 (needs ≥ 4 seeds per side)"
    )
    few = contrast(_study(_strata(4, 4, 2), rng), "acc", elu, relu, ["depth"], n_resamples=10)
    assert few.reason == "n_resamples=10 cannot give p below 0.0909: use more"
    for c in [*cases, few]:
        for text in (c.reason or "", *verdict(c, c.p)):
            assert "\n" not in text


# --- cost -----------------------------------------------------------------------------------


def test_a_typical_claim_is_fast_and_deterministic() -> None:
    """~100 observations in 12 strata at the default 9999 resamples. The bound is loose on purpose
    (a shared CI machine); the target is well under 0.1 s."""
    rng = np.random.default_rng(12)
    design = [
        {"depth": d, "bn": bn, "base": 0.8, "sd": 0.01, "n_a": 4, "n_b": 4}
        for d in (5, 10, 20, 40)
        for bn in ("none", "before", "after")
    ]
    obs = _study(design, rng, effect=0.005)
    contrast(obs, "acc", elu, relu, ["depth", "bn"])  # warm-up
    start = time.perf_counter()
    first = contrast(obs, "acc", elu, relu, ["depth", "bn"])
    elapsed = time.perf_counter() - start
    assert len(obs) == 96 and not first.exact and len(first.strata_used) == 12
    assert elapsed < 0.5
    assert contrast(obs, "acc", elu, relu, ["depth", "bn"]) == first


# -- the stratified Welch t test (what the claims use) ---------------------------------------


def _welch_study(
    effect: float,
    strata: int,
    seeds: int,
    rng: np.random.Generator,
    seeds_b: int | None = None,
    sd_b: float = 0.01,
) -> pd.DataFrame:
    rows = []
    for s in range(strata):
        base = 0.5 + 0.1 * s
        for side, shift, n, sd in (("a", effect, seeds, 0.01), ("b", 0.0, seeds_b or seeds, sd_b)):
            for seed in range(n):
                rows.append(
                    {
                        "side": side,
                        "depth": s,
                        "seed": seed,
                        "acc": base + shift + rng.normal(0, sd),
                    }
                )
    obs, _ = merge_replicates(pd.DataFrame(rows), ["side", "depth"])
    return obs


@pytest.mark.parametrize(
    ("seeds", "seeds_b", "sd_b", "strata"),
    [(4, 4, 0.01, 3), (4, 2, 0.03, 2)],
    ids=["balanced", "unbalanced-unequal-variance"],
)
def test_welch_null_rejects_at_about_alpha(
    seeds: int, seeds_b: int, sd_b: float, strata: int
) -> None:
    """Welch–Satterthwaite is approximate: with 4 v 2 seeds and the small side three times as
    noisy its level drifts a little above 5%, still within the bound below."""
    rng = np.random.default_rng(11)
    n = 600
    rejected = 0
    for _ in range(n):
        obs = _welch_study(0.0, strata, seeds, rng, seeds_b=seeds_b, sd_b=sd_b)
        c = contrast(obs, "acc", obs["side"] == "a", obs["side"] == "b", ["depth"], method="welch")
        rejected += c.p < 0.05
    # 99.9% binomial upper bound for a true rate of 5% over 600 claims: 48
    assert rejected <= 48, f"{rejected}/{n} null claims rejected"


def test_welch_without_seed_variation_is_not_enough_data() -> None:
    """Every seed equal on both sides (e.g. all stuck at chance): no p of 0, no zero-width CI."""
    rows = [
        {"side": side, "depth": 20, "seed": seed, "acc": value}
        for side, value in (("a", 0.3), ("b", 0.1))
        for seed in range(4)
    ]
    obs, _ = merge_replicates(pd.DataFrame(rows), ["side", "depth"])
    c = contrast(obs, "acc", obs["side"] == "a", obs["side"] == "b", ["depth"], method="welch")
    assert c.effect == pytest.approx(0.2) and math.isnan(c.p) and math.isnan(c.ci_low)
    assert not c.decidable and c.reason is not None and "variation is 0" in c.reason
    label, why = verdict(c, math.nan)
    assert label == "not enough data" and why == c.reason
    one_varies = obs.assign(acc=obs["acc"] + np.where(obs["side"] == "b", obs["seed"] * 1e-3, 0))
    d = contrast(
        one_varies, "acc", obs["side"] == "a", obs["side"] == "b", ["depth"], method="welch"
    )
    assert d.decidable and d.p < 0.01 and d.ci_low < d.effect < d.ci_high


def test_welch_holds_a_planted_effect_and_agrees_with_its_ci() -> None:
    rng = np.random.default_rng(12)
    obs = _welch_study(0.02, strata=2, seeds=4, rng=rng)
    c = contrast(obs, "acc", obs["side"] == "a", obs["side"] == "b", ["depth"], method="welch")
    assert c.p < 0.01 and c.ci_low > 0 and c.ci_low < 0.02 < c.ci_high
    for shift in np.linspace(-0.04, 0.04, 17):
        shifted = obs.assign(acc=obs["acc"] + np.where(obs["side"] == "a", shift, 0.0))
        d = contrast(
            shifted,
            "acc",
            shifted["side"] == "a",
            shifted["side"] == "b",
            ["depth"],
            method="welch",
        )
        assert (d.ci_low > 0 or d.ci_high < 0) == (d.p < 0.05)


def test_welch_one_stratum_is_welchs_t_test() -> None:
    from scipy import stats

    rng = np.random.default_rng(13)
    obs = _welch_study(0.01, strata=1, seeds=5, rng=rng)
    c = contrast(obs, "acc", obs["side"] == "a", obs["side"] == "b", ["depth"], method="welch")
    a, b = obs.loc[obs["side"] == "a", "acc"], obs.loc[obs["side"] == "b", "acc"]
    assert c.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_welch_needs_two_seeds_a_side_and_says_so() -> None:
    obs = _welch_study(0.1, strata=2, seeds=1, rng=np.random.default_rng(14))
    c = contrast(obs, "acc", obs["side"] == "a", obs["side"] == "b", ["depth"], method="welch")
    assert not c.decidable and "2 or more seeds" in c.reason
