"""The notes' claims, each a controlled contrast with a verdict computed from the data.

A :class:`Claim` names two sides of a study's observations (:func:`search.analysis.observations`)
and the factors allowed to differ between them; every other cell factor is held equal (strata).
:func:`judge_claims` tests each with :func:`search.analysis.contrast_of` and corrects with Holm
within its family (accuracy, gradients, cost), so adding a gradient claim never costs an accuracy
claim power. A claim about an activation the study never ran is left out, and so is an
``optional`` one (a comparison the notes make that a design need not include) when a side has
no run. Cost claims on time per epoch read :func:`search.analysis.timings`, whose replicates
are a cell's repeated runs, not its seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise

import pandas as pd

from search.analysis import ALPHA, NUMBERS, below, contrast_of, holm_of, numbers, strata_for
from search.compounds import ELU_COSTS_MORE, ELU_FEWER_EPOCHS, compound_rows
from search.schema import ROLE_CONFIRMATION, ROLE_TRIAL
from search.statistics import TOO_FEW_REPLICATES, Contrast, undecided
from search.verdicts import verdict

#: The notes' rule of thumb, best first; tested pairwise between neighbours present in a study.
ACTIVATION_CHAIN = ["elu", "leaky_relu", "relu", "tanh", "logistic"]
FAMILIES = ("accuracy", "gradients", "cost")
#: Metrics measured once per run, not per seed: read from :func:`search.analysis.timings`.
PER_TRIAL = ("epoch_seconds",)
#: "≈ 0" for the fraction of dead units: under 2% of a layer's units, about one unit of a
#: 64-wide layer (the notes' "leaky ≈ ELU ≈ 0" has no number; this is the one we test).
DEAD_MARGIN = 0.02


Side = Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class Claim:
    """ "Observations matching ``a`` beat those matching ``b`` on ``metric``" (higher is
    better), compared within :func:`search.analysis.strata_for` ``free``; with ``margin``,
    "``a``'s ``metric`` is below ``margin``" instead (``b`` unused)."""

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
    optional: bool = False  # left out when a side has no run (a cell a design may skip)
    margin: float | None = None


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


def _nobody(d: pd.DataFrame) -> pd.Series:
    return pd.Series(False, index=d.index)


_ACT = ("activation", "alpha", "init_applied", "init_is_matched")
#: Another activation at the same initialisation rule (matched with matched, default with
#: default): :func:`search.analysis.strata_for` holds ``init_is_matched`` equal.
_ACT_SAME_RULE = ("activation", "alpha", "init_applied")


def notes_claims(present: set[str], depths: int = 1, widths: int = 1) -> list[Claim]:
    """The notes' claims that a study with these activations (and numbers of depths and
    widths) can test."""
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
            _ACT_SAME_RULE,
            needs=("prelu", "leaky_relu"),
        ),
        Claim(
            "RReLU > leaky ReLU",
            "accuracy",
            acc,
            _is("activation", "rrelu"),
            leaky,
            _ACT_SAME_RULE,
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
    he, glorot = ("he_normal", "he_uniform"), ("glorot_uniform", "glorot_normal")
    for activation, better, name, optional in (
        ("relu", he, "He", False),
        ("logistic", glorot, "Glorot", False),
        ("tanh", glorot, "Glorot", False),
        ("logistic", he, "He", True),
        ("tanh", he, "He", True),
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
                optional=optional,
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
        claims.append(
            Claim(
                f"dying ReLU: {other} has almost no dead units (< {DEAD_MARGIN:g})",
                "gradients",
                "dead_frac",
                _matched(other),
                _nobody,
                _ACT,
                f"{other} + matched",
                needs=(other,),
                margin=DEAD_MARGIN,
            )
        )
    claims += [
        Claim(
            ELU_COSTS_MORE,
            "cost",
            "epoch_seconds",
            _matched("elu"),
            _matched("relu"),
            _ACT,
            needs=("elu", "relu"),
        ),
        Claim(
            ELU_FEWER_EPOCHS,
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
    for shape, count, more in (("depth", depths, "deeper"), ("width", widths, "wider")):
        if count > 1:
            claims.append(
                Claim(
                    f"{more} networks are slower per epoch",
                    "cost",
                    "epoch_seconds",
                    _extreme(shape, "max"),
                    _extreme(shape, "min"),
                    (shape,),
                    f"largest {shape}",
                    f"smallest {shape}",
                )
            )
    return [c for c in claims if set(c.needs) <= present]


def _extreme(column: str, which: str) -> Side:
    return lambda d: d[column] == d[column].agg(which)


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


def judge_claims(
    obs: pd.DataFrame, claims: list[Claim] | None = None, timings: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Verdicts for ``claims`` (default: :func:`notes_claims` of what the study ran): one row
    per claim with its strata, cells x seeds per side, effect and CI, raw and Holm p (within the
    claim's family), the verdict and why. Claims on :data:`PER_TRIAL` metrics read ``timings``
    (:func:`search.analysis.timings` of the same trials); without it they say so."""
    if claims is None:
        claims = []
        for role, make in ((ROLE_TRIAL, notes_claims), (ROLE_CONFIRMATION, confirmation_claims)):
            runs = obs[obs["role"] == role] if not obs.empty else obs
            present = set(runs["activation"].dropna()) if not runs.empty else set()
            extra = {}
            if make is notes_claims and present:
                extra = {"depths": runs["depth"].nunique(), "widths": runs["width"].nunique()}
            claims += make(present, **extra) if present else []
    judged: list[tuple[Claim, Contrast]] = []
    for claim in claims:
        per_run = claim.metric in PER_TRIAL
        source = timings if per_run else obs
        if source is None:
            why = f"{claim.metric} is read from the runs' timings, and none were given"
            judged.append((claim, undecided(claim.metric, why, alpha=ALPHA)))
            continue
        data = source[source["role"] == claim.role] if not source.empty else source
        a, b = claim.a(data).to_numpy(bool), claim.b(data).to_numpy(bool)
        if claim.optional and not (a.any() and b.any()):
            continue
        if claim.margin is not None:
            c = below(data, claim.metric, a, claim.margin)
        else:
            c = contrast_of(data, claim.metric, a, b, strata_for(claim.free))
        if per_run and c.reason is not None and c.reason.startswith(TOO_FEW_REPLICATES):
            why = (
                f"{claim.metric} is one wall-clock figure per run (fused seeds share one clock), "
                "so a cell's replicates are its repeated runs, and no stratum has 2 or more "
                "runs on both sides: run the configurations again to time them"
            )
            c = replace(c, reason=why)
        judged.append((claim, c))
    claims = [claim for claim, _ in judged]
    contrasts = [c for _, c in judged]
    p_holm = [math.nan] * len(claims)
    for family in FAMILIES:
        members = [i for i, c in enumerate(claims) if c.family == family]
        for i, p in zip(members, holm_of([contrasts[i] for i in members]), strict=True):
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
                **numbers(c),
                "p_holm": p,
                "verdict": label,
                "why": why,
            }
        )
    rows += compound_rows(rows)
    columns = ["claim", "family", "metric", "a", "b", *NUMBERS, "p_holm", "verdict", "why"]
    return pd.DataFrame(rows, columns=columns)
