"""A study's evidence: observations per seed, factor tables, controlled pairwise tests, and the
notes' claims with verdicts computed from the data.

- **Observations.** One row per (trial, seed): a trial's k seeds are k replicates of its
  configuration (its *cell*); identical configurations are one cell and merged, never counted
  twice (:func:`search.statistics.merge_replicates`). Trials that ran every epoch count, and
  trials that diverged (a diverged seed counts at chance accuracy: the policy of
  :mod:`search.seeds`); trials stopped early (ASHA, a budget) were scored after fewer epochs and
  do not.
- **Contrasts.** Every comparison holds the other factors equal (strata) and is a stratified
  permutation test with a CI from inverting the same test (:func:`search.statistics.contrast`).
- **Families.** Holm within each family of claims: accuracy, gradients, cost; a claim the design
  cannot decide is left out of its family and says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations, pairwise

import numpy as np
import pandas as pd
from scipy import stats

from search.schema import CELL_FACTORS, ROLE_CONFIRMATION, ROLE_TRIAL
from search.statistics import Contrast, contrast, holm, merge_replicates, verdict

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
#: The notes' rule of thumb, best first; tested pairwise between neighbours present in a study.
ACTIVATION_CHAIN = ["elu", "leaky_relu", "relu", "tanh", "logistic"]
FAMILIES = ("accuracy", "gradients", "cost")


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
        contrast(
            data, metric, (levels == a).to_numpy(), (levels == b).to_numpy(), strata, method=METHOD
        )
        for a, b in pairs
    ]
    rows = [{"a": a, "b": b, **_numbers(c)} for (a, b), c in zip(pairs, contrasts, strict=True)]
    table = pd.DataFrame(rows, columns=["a", "b", *_NUMBERS])
    table["p_holm"] = _holm(contrasts)
    return table


# -- claims -----------------------------------------------------------------------------------

Side = Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class Claim:
    """ "Observations matching ``a`` beat those matching ``b`` on ``metric``" (higher is
    better), compared within strata of every cell factor except ``free``."""

    name: str
    family: str
    metric: str
    a: Side
    b: Side
    free: tuple[str, ...]
    label_a: str = ""
    label_b: str = ""
    needs: tuple[str, ...] = ()  # the activations it is about: left out when one never ran
    role: str = ROLE_TRIAL  # which runs it reads: the search's, or the confirmation runs


def _is(column: str, *values: object) -> Side:
    return lambda d: d[column].isin(values)


def _both(f: Side, g: Side) -> Side:
    return lambda d: f(d) & g(d)


def _matched(activation: str) -> Side:
    """``activation`` at its matched initialisation (Glorot / He / LeCun by the notes' rule)."""
    return lambda d: (d["activation"] == activation) & (d["init_is_matched"] == "true")


def _leaky_alpha(low: float, high: float) -> Side:
    def select(d: pd.DataFrame) -> pd.Series:
        alpha = pd.to_numeric(d["alpha"], errors="coerce")
        return (d["activation"] == "leaky_relu") & alpha.between(low, high)

    return select


_ACT = ("activation", "alpha", "init_applied", "init_is_matched")


def notes_claims(present: set[str], depths: int = 1) -> list[Claim]:
    """The notes' claims that a study with these activations (and number of depths) can test."""
    claims = [
        Claim(
            f"{a} > {b} (matched init)",
            "accuracy",
            "best_val_accuracy",
            _matched(a),
            _matched(b),
            _ACT,
            f"{a} + matched",
            f"{b} + matched",
            (a, b),
        )
        for a, b in pairwise([x for x in ACTIVATION_CHAIN if x in present])
    ]
    acc = "best_val_accuracy"
    leaky = _is("activation", "leaky_relu")
    claims += [
        Claim(
            "leaky ReLU: alpha ~ 0.2 > alpha ~ 0.01",
            "accuracy",
            acc,
            _leaky_alpha(0.1, 0.35),
            _leaky_alpha(0.003, 0.03),
            ("alpha",),
            "alpha in [0.1, 0.35]",
            "alpha in [0.003, 0.03]",
            ("leaky_relu",),
        ),
        Claim(
            "PReLU > leaky ReLU",
            "accuracy",
            acc,
            _is("activation", "prelu"),
            leaky,
            _ACT,
            needs=("prelu", "leaky_relu"),
        ),
        Claim(
            "RReLU > leaky ReLU",
            "accuracy",
            acc,
            _is("activation", "rrelu"),
            leaky,
            _ACT,
            needs=("rrelu", "leaky_relu"),
        ),
        Claim(
            "SELU + LeCun > ELU + He",
            "accuracy",
            acc,
            _both(_is("activation", "selu"), _is("init_applied", "lecun_normal", "lecun_uniform")),
            _both(_is("activation", "elu"), _is("init_applied", "he_normal", "he_uniform")),
            _ACT,
            needs=("selu", "elu"),
        ),
        Claim(
            "SELU + LeCun > ReLU + He",
            "accuracy",
            acc,
            _both(_is("activation", "selu"), _is("init_applied", "lecun_normal", "lecun_uniform")),
            _both(_is("activation", "relu"), _is("init_applied", "he_normal", "he_uniform")),
            _ACT,
            needs=("selu", "relu"),
        ),
    ]
    for activation, better, name in (
        ("relu", ("he_normal", "he_uniform"), "He"),
        ("logistic", ("glorot_uniform", "glorot_normal"), "Glorot"),
        ("tanh", ("glorot_uniform", "glorot_normal"), "Glorot"),
    ):
        claims.append(
            Claim(
                f"{activation}: {name} init > PyTorch default",
                "accuracy",
                acc,
                _both(_is("activation", activation), _is("init_applied", *better)),
                _both(_is("activation", activation), _is("init_applied", "pytorch_default")),
                ("init_applied", "init_is_matched"),
                needs=(activation,),
            )
        )
    with_bn = _is("bn", "before", "after")
    claims.append(
        Claim(
            "BN helps deep logistic nets",
            "accuracy",
            acc,
            _both(_is("activation", "logistic"), with_bn),
            _both(_is("activation", "logistic"), _is("bn", "none")),
            ("bn",),
            needs=("logistic",),
        )
    )
    # Gradient flow: -|log10 first/last ratio|, higher = more even; at init and after training.
    for activations, what in (
        (("logistic", "tanh"), "vanishing"),
        (("relu", "leaky_relu", "elu"), "exploding"),
    ):
        for activation in activations:
            for when in ("init", "final"):
                claims.append(
                    Claim(
                        f"BN cures {what} gradients ({activation}, {_WHEN[when]})",
                        "gradients",
                        f"grad_flow_{when}",
                        _both(_is("activation", activation), with_bn),
                        _both(_is("activation", activation), _is("bn", "none")),
                        ("bn",),
                        needs=(activation,),
                    )
                )
    for when in ("init", "final"):
        claims.append(
            Claim(
                f"ELU alleviates vanishing gradients vs ReLU ({_WHEN[when]})",
                "gradients",
                f"grad_flow_{when}",
                _matched("elu"),
                _matched("relu"),
                _ACT,
                needs=("elu", "relu"),
            )
        )
    for other in ("leaky_relu", "elu"):
        claims.append(
            Claim(
                f"dying ReLU: more dead units than {other}",
                "gradients",
                "dead_frac",
                _matched("relu"),
                _matched(other),
                _ACT,
                needs=("relu", other),
            )
        )
    claims += [
        Claim(
            "ELU costs more per epoch than ReLU",
            "cost",
            "epoch_seconds",
            _matched("elu"),
            _matched("relu"),
            _ACT,
            needs=("elu", "relu"),
        ),
        Claim(
            "ELU needs fewer epochs than ReLU (to 95% of its best)",
            "cost",
            "epochs_to_95",
            _matched("relu"),
            _matched("elu"),
            _ACT,
            "relu (epochs)",
            "elu (epochs)",
            ("relu", "elu"),
        ),
    ]
    if depths > 1:
        claims.append(
            Claim(
                "deeper networks are slower per epoch",
                "cost",
                "epoch_seconds",
                lambda d: d["depth"] == d["depth"].max(),
                lambda d: d["depth"] == d["depth"].min(),
                ("depth",),
                "deepest",
                "shallowest",
            )
        )
    return [c for c in claims if set(c.needs) <= present]


_WHEN = {"init": "at initialisation", "final": "after the last epoch"}
#: What a confirmation compares across: everything the search tuned; the rest is held equal.
_TUNED = (*_ACT, "bn", "lr", "depth", "width")


def confirmation_claims(present: set[str]) -> list[Claim]:
    """The chain ELU > leaky ReLU > ReLU > tanh > logistic, each side at the configuration it
    won the search with, on fresh seeds, scored on the test split (:mod:`search.confirm`)."""
    return [
        Claim(
            f"{a} > {b} (each tuned, confirmation runs, test)",
            "accuracy",
            "test_accuracy",
            _is("activation", a),
            _is("activation", b),
            _TUNED,
            needs=(a, b),
            role=ROLE_CONFIRMATION,
        )
        for a, b in pairwise([x for x in ACTIVATION_CHAIN if x in present])
    ]


def judge_claims(obs: pd.DataFrame, claims: list[Claim] | None = None) -> pd.DataFrame:
    """Verdicts for ``claims`` (default: :func:`notes_claims` of what the study ran): one row
    per claim with its strata, cells x seeds per side, effect and CI, raw and Holm p (within the
    claim's family), the verdict and why."""
    if claims is None:
        claims = []
        for role, make in ((ROLE_TRIAL, notes_claims), (ROLE_CONFIRMATION, confirmation_claims)):
            runs = obs[obs["role"] == role] if not obs.empty else obs
            present = set(runs["activation"].dropna()) if not runs.empty else set()
            extra = {"depths": runs["depth"].nunique()} if make is notes_claims and present else {}
            claims += make(present, **extra) if present else []
    contrasts = []
    for claim in claims:
        data = obs[obs["role"] == claim.role] if not obs.empty else obs
        strata = [c for c in CELL_FACTORS if c not in claim.free]
        a, b = claim.a(data).to_numpy(bool), claim.b(data).to_numpy(bool)
        contrasts.append(contrast(data, claim.metric, a, b, strata, method=METHOD))
    p_holm = [math.nan] * len(claims)
    for family in FAMILIES:
        members = [i for i, c in enumerate(claims) if c.family == family]
        for i, p in zip(members, _holm([contrasts[i] for i in members]), strict=True):
            p_holm[i] = p
    rows = []
    for claim, c, p in zip(claims, contrasts, p_holm, strict=True):
        label, why = verdict(c, p, ALPHA)
        rows.append(
            {
                "claim": claim.name,
                "family": claim.family,
                "metric": claim.metric,
                "a": claim.label_a,
                "b": claim.label_b,
                **_numbers(c),
                "p_holm": p,
                "verdict": label,
                "why": why,
            }
        )
    columns = ["claim", "family", "metric", "a", "b", *_NUMBERS, "p_holm", "verdict", "why"]
    return pd.DataFrame(rows, columns=columns)


def _decides(c: Contrast) -> bool:
    """Whether the design could reach significance at all (else: not in the Holm family)."""
    return c.decidable and c.min_p < ALPHA


def _holm(contrasts: list[Contrast]) -> list[float]:
    return holm([c.p if _decides(c) else math.nan for c in contrasts])


_NUMBERS = (
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


def _numbers(c: Contrast) -> dict[str, object]:
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
