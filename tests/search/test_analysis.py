"""Factor tables, pairwise tests and claim verdicts on planted data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from search.analysis import Claim, factor_table, holm, judge_claims, pairwise_tests


def _trials(groups: dict[str, np.ndarray], **columns: object) -> pd.DataFrame:
    rows = [
        {
            "activation": a,
            "init": "he_normal",
            "bn": "none",
            "alpha": None,
            "outcome": "completed",
            "best_val_accuracy": float(v),
            "grad_ratio": 1.0,
            **columns,
        }
        for a, values in groups.items()
        for v in values
    ]
    return pd.DataFrame(rows)


def _claim(a: str, b: str) -> Claim:
    return Claim(f"{a} > {b}", lambda d: d["activation"] == a, lambda d: d["activation"] == b)


def test_planted_winner_is_held_with_ci_excluding_zero() -> None:
    rng = np.random.default_rng(1)
    trials = _trials(
        {"elu": 0.95 + rng.normal(0, 0.01, 10), "logistic": 0.3 + rng.normal(0, 0.05, 10)}
    )
    row = judge_claims(trials, [_claim("elu", "logistic")]).iloc[0]
    assert row["verdict"] == "held"
    assert row["ci_low"] > 0 and row["effect"] == pytest.approx(0.65, abs=0.05)


def test_reversed_claim_is_refuted() -> None:
    rng = np.random.default_rng(2)
    trials = _trials(
        {"elu": 0.95 + rng.normal(0, 0.01, 10), "logistic": 0.3 + rng.normal(0, 0.05, 10)}
    )
    assert judge_claims(trials, [_claim("logistic", "elu")]).iloc[0]["verdict"] == "refuted"


def test_no_real_difference_is_not_significant() -> None:
    rng = np.random.default_rng(3)
    trials = _trials({"elu": rng.normal(0.9, 0.02, 12), "relu": rng.normal(0.9, 0.02, 12)})
    row = judge_claims(trials, [_claim("elu", "relu")]).iloc[0]
    assert row["verdict"] == "not significant"
    assert row["ci_low"] < 0 < row["ci_high"]


def test_too_few_trials_is_not_enough_data() -> None:
    trials = _trials({"elu": np.array([0.9, 0.91]), "relu": np.array([0.5, 0.52, 0.51])})
    assert judge_claims(trials, [_claim("elu", "relu")]).iloc[0]["verdict"] == "not enough data"


def test_early_stopped_and_diverged_trials_are_left_out() -> None:
    trials = _trials({"elu": np.full(4, 0.9)})
    trials.loc[0, "outcome"] = "early_stopped"
    trials.loc[1, "outcome"] = "diverged"
    table = factor_table(trials, "activation")
    assert table.iloc[0]["n"] == 2


def test_factor_table_mean_ci_and_order() -> None:
    rng = np.random.default_rng(4)
    trials = _trials({"elu": rng.normal(0.9, 0.01, 20), "tanh": rng.normal(0.8, 0.01, 20)})
    table = factor_table(trials, "activation")
    assert list(table["level"]) == ["elu", "tanh"]
    for row in table.itertuples():
        assert row.ci_low < row.mean < row.ci_high
    tests = pairwise_tests(trials, "activation")
    assert tests.iloc[0]["p_holm"] < 1e-6


def test_holm_matches_the_textbook_example() -> None:
    # p = (0.01, 0.04, 0.03): sorted 0.01*3, 0.03*2, max(0.04*1, 0.06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.01, float("nan"), 0.03])  # an untested claim does not count in m
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.03)
