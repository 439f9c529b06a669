"""Observations, factor tables, controlled pairwise tests and claim verdicts on planted data.

No training: the analysis takes the leaderboard's DataFrame (one row per trial, its seeds in
``per_seed``), as it reads it from MLflow.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from search.analysis import factor_table, observations, pairwise_tests, timings
from search.claims import Claim, judge_claims, notes_claims
from search.verdicts import holm

_DEFAULTS = {
    "alpha": None,
    "init_applied": "he_normal",
    "init_is_matched": "true",
    "bn": "none",
    "depth": 20.0,
    "width": 64.0,
    "lr": 0.001,
    "dataset": "digits",
    "optimizer": "adam",
    "batch_size": 64.0,
    "epochs": 10.0,
    "dropout": 0.0,
    "weight_decay": 0.0,
}
_ids = itertools.count()


def trial(
    activation: str, values: list[float], outcome: str = "completed", first_seed: int = 0, **factors
) -> dict:
    """A leaderboard row: one trial with one seed per value (seeds first_seed, first_seed+1...)."""
    per_seed = {
        first_seed + i: {"best_val_accuracy": v, "test_accuracy": v, "diverged": 0.0}
        for i, v in enumerate(values)
    }
    return {
        **_DEFAULTS,
        **factors,
        "activation": activation,
        "outcome": outcome,
        "best_val_accuracy": float(np.mean(values)),
        "chance_accuracy": 0.1,
        "role": "trial",
        "per_seed": per_seed,
        "run_id": f"run{next(_ids)}",
    }


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def claim(a: str, b: str, free: tuple[str, ...] = ("activation",)) -> Claim:
    return Claim(
        f"{a} > {b}",
        "accuracy",
        "best_val_accuracy",
        lambda d: d["activation"] == a,
        lambda d: d["activation"] == b,
        free,
    )


def verdict_of(trials: pd.DataFrame, c: Claim) -> pd.Series:
    obs, _ = observations(trials)
    return judge_claims(obs, [c]).iloc[0]


def test_seeds_are_replicates_and_a_planted_winner_is_held() -> None:
    rng = np.random.default_rng(1)
    trials = frame(
        trial("elu", list(0.95 + rng.normal(0, 0.01, 5))),
        trial("logistic", list(0.30 + rng.normal(0, 0.05, 5))),
    )
    row = verdict_of(trials, claim("elu", "logistic"))
    assert row["verdict"] == "held"
    assert (row["cells_a"], row["seeds_a"], row["cells_b"], row["seeds_b"]) == (1, 5, 1, 5)
    assert row["ci_low"] > 0 and row["effect"] == pytest.approx(0.65, abs=0.05)


def test_reversed_claim_is_refuted() -> None:
    rng = np.random.default_rng(2)
    trials = frame(
        trial("elu", list(0.95 + rng.normal(0, 0.01, 5))),
        trial("logistic", list(0.3 + rng.normal(0, 0.05, 5))),
    )
    assert verdict_of(trials, claim("logistic", "elu"))["verdict"] == "refuted"


def test_no_real_difference_is_not_significant() -> None:
    rng = np.random.default_rng(3)
    trials = frame(
        trial("elu", list(rng.normal(0.9, 0.02, 8))), trial("relu", list(rng.normal(0.9, 0.02, 8)))
    )
    row = verdict_of(trials, claim("elu", "relu"))
    assert row["verdict"] == "not significant"
    assert row["ci_low"] < 0 < row["ci_high"]


def test_one_seed_per_side_is_not_enough_data_with_a_reason() -> None:
    row = verdict_of(frame(trial("elu", [0.9]), trial("relu", [0.5])), claim("elu", "relu"))
    assert row["verdict"] == "not enough data"
    assert "seed" in row["why"] and "\n" not in row["why"]


def test_duplicate_trials_are_merged_never_independent_evidence() -> None:
    """The trap: a random searcher with a fixed lr re-draws two configurations ten times; one
    real run per side can't support a verdict, and the merge is counted."""
    trials = frame(
        *[trial("relu", [0.8]) for _ in range(5)], *[trial("tanh", [0.65]) for _ in range(5)]
    )
    obs, merged = observations(trials)
    assert merged == 8 and len(obs) == 2
    row = judge_claims(obs, [claim("relu", "tanh")]).iloc[0]
    assert row["verdict"] == "not enough data"


def test_simpsons_paradox_is_held_for_the_winner_of_every_stratum() -> None:
    """A beats B at depth 5 and at depth 20; B ran mostly at the easy depth, so pooled means
    favour B. Holding depth equal finds A."""
    rng = np.random.default_rng(5)
    rows = [
        trial("elu", list(0.92 + rng.normal(0, 0.005, 3)), depth=5.0),
        trial("relu", list(0.90 + rng.normal(0, 0.005, 3)), depth=5.0),
        trial("relu", list(0.90 + rng.normal(0, 0.005, 3)), depth=5.0, first_seed=3),
        trial("relu", list(0.90 + rng.normal(0, 0.005, 3)), depth=5.0, first_seed=6),
        trial("elu", list(0.62 + rng.normal(0, 0.005, 3)), depth=20.0),
        trial("elu", list(0.62 + rng.normal(0, 0.005, 3)), depth=20.0, first_seed=3),
        trial("elu", list(0.62 + rng.normal(0, 0.005, 3)), depth=20.0, first_seed=6),
        trial("relu", list(0.60 + rng.normal(0, 0.005, 3)), depth=20.0),
    ]
    obs, _ = observations(frame(*rows))
    pooled = obs.groupby("activation")["best_val_accuracy"].mean()
    assert pooled["elu"] < pooled["relu"], "the trap is real: pooled, B looks better"
    row = judge_claims(obs, [claim("elu", "relu")]).iloc[0]
    assert row["verdict"] == "held" and row["strata"] == 2


def test_a_diverged_seed_counts_at_chance() -> None:
    rows = [trial("elu", [0.9, 0.9, 0.9]), trial("relu", [0.9, 0.9, 0.9])]
    rows[1]["per_seed"][2] = {"diverged": 1.0, "best_val_accuracy": 0.9}
    obs, _ = observations(frame(*rows))
    diverged = obs[(obs["activation"] == "relu") & (obs["seed"] == 2)].iloc[0]
    assert diverged["best_val_accuracy"] == pytest.approx(0.1)


def test_stopped_early_trials_are_not_evidence() -> None:
    rows = [trial("elu", [0.9]), trial("elu", [0.8], outcome="early_stopped", lr=0.01)]
    obs, _ = observations(frame(*rows))
    assert len(obs) == 1


def test_factor_tables_keep_every_level_with_its_n() -> None:
    rng = np.random.default_rng(4)
    trials = frame(
        trial("elu", list(rng.normal(0.9, 0.01, 6))),
        trial("tanh", list(rng.normal(0.8, 0.01, 6))),
        trial("selu", [0.85]),
    )
    obs, _ = observations(trials)
    table = factor_table(obs, "activation")
    assert list(table["level"]) == ["elu", "selu", "tanh"]
    assert dict(zip(table["level"], table["n"], strict=True)) == {"elu": 6, "selu": 1, "tanh": 6}
    assert table.set_index("level").loc["selu", ["ci_low", "ci_high"]].isna().all()
    tests = pairwise_tests(obs, "activation")
    elu_tanh = tests[(tests["a"] == "elu") & (tests["b"] == "tanh")].iloc[0]
    assert elu_tanh["p_holm"] < 0.05 and elu_tanh["effect"] > 0
    selu = tests[(tests["a"] == "elu") & (tests["b"] == "selu")].iloc[0]
    assert selu["reason"] and np.isnan(selu["p_holm"])


def test_pairwise_tests_hold_other_factors_equal() -> None:
    """Levels that never share the other factors can't be compared, and say so."""
    trials = frame(trial("elu", [0.9, 0.91, 0.92], bn="before"), trial("relu", [0.5, 0.51, 0.5]))
    obs, _ = observations(trials)
    row = pairwise_tests(obs, "activation").iloc[0]
    assert "no stratum" in row["reason"] and "bn" in row["reason"]


def test_families_are_corrected_apart() -> None:
    """A gradient claim does not dilute the accuracy claims' Holm correction."""
    rng = np.random.default_rng(6)
    trials = frame(
        trial("elu", list(0.95 + rng.normal(0, 0.01, 5))),
        trial("relu", list(0.90 + rng.normal(0, 0.01, 5))),
    )
    obs, _ = observations(trials)
    obs["grad_flow_final"] = rng.normal(0, 1, len(obs))
    accuracy = claim("elu", "relu")
    gradient = Claim(
        "flow", "gradients", "grad_flow_final", accuracy.a, accuracy.b, ("activation",)
    )
    alone = judge_claims(obs, [accuracy]).iloc[0]["p_holm"]
    together = judge_claims(obs, [accuracy, gradient])
    assert together.iloc[0]["p_holm"] == pytest.approx(alone)


def test_notes_claims_only_name_activations_the_study_ran() -> None:
    names = [c.name for c in notes_claims({"relu", "tanh"})]
    assert "relu > tanh (matched init)" in names
    assert not any("selu" in n.lower() or "elu" in n.split() for n in names)
    assert all(c.family in ("accuracy", "gradients", "cost") for c in notes_claims({"elu", "relu"}))


def test_holm_matches_the_textbook_example() -> None:
    # p = (0.01, 0.04, 0.03): sorted 0.01*3, 0.03*2, max(0.04*1, 0.06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.01, float("nan"), 0.03])  # an untested claim does not count in m
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.03)


TRADE_OFF = "ELU costs more per epoch but reaches its accuracy in fewer epochs"


def timed(activation: str, seed: int, seconds: float, epochs: float) -> dict:
    """One single-seed trial with its time per epoch and its epochs to 95% of its best."""
    row = trial(activation, [0.9], first_seed=seed)
    row["epoch_seconds"] = seconds
    row["per_seed"][seed]["epochs_to_95"] = epochs
    return row


def trade_off(trials: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    obs, _ = observations(trials)
    claims = judge_claims(obs, timings=timings(trials)).set_index("claim")
    return claims.loc[TRADE_OFF], claims


def test_trade_off_held_when_elu_is_slower_per_epoch_and_needs_fewer_epochs() -> None:
    rng = np.random.default_rng(5)
    trials = frame(
        *[timed("elu", s, 0.20 + rng.normal(0, 0.01), 3 + s % 2) for s in range(5)],
        *[timed("relu", s, 0.10 + rng.normal(0, 0.01), 8 + s % 2) for s in range(5)],
    )
    row, claims = trade_off(trials)
    parts = claims.loc[
        [
            "ELU costs more per epoch than ReLU",
            "ELU needs fewer epochs than ReLU (to 95% of its best)",
        ]
    ]
    assert list(parts["verdict"]) == ["held", "held"]
    assert row["verdict"] == "held"
    assert row["p_holm"] == pytest.approx(parts["p_holm"].max())  # intersection-union: the larger


def test_trade_off_refuted_when_elu_is_cheaper_per_epoch() -> None:
    rng = np.random.default_rng(6)
    trials = frame(
        *[timed("elu", s, 0.10 + rng.normal(0, 0.01), 3 + s % 2) for s in range(5)],
        *[timed("relu", s, 0.20 + rng.normal(0, 0.01), 8 + s % 2) for s in range(5)],
    )
    row, _ = trade_off(trials)
    assert row["verdict"] == "refuted"
    assert row["why"].startswith("ELU costs more per epoch than ReLU: refuted")


def test_trade_off_without_replicates_says_which_part_lacks_data() -> None:
    row, _ = trade_off(frame(timed("elu", 0, 0.2, 3), timed("relu", 0, 0.1, 8)))
    assert row["verdict"] == "not enough data"
    assert "ELU costs more per epoch than ReLU: not enough data" in row["why"]
    assert "\n" not in row["why"]


def test_pairwise_activations_compare_at_the_same_init_rule() -> None:
    """Under ``matched`` ReLU gets He, tanh Glorot and leaky ReLU an alpha: their pairs still
    share a stratum (the rule), and matched is never compared with the PyTorch default."""
    rng = np.random.default_rng(7)
    trials = frame(
        trial("relu", list(rng.normal(0.90, 0.01, 4)), init_applied="he_normal"),
        trial("tanh", list(rng.normal(0.80, 0.01, 4)), init_applied="glorot_uniform"),
        trial("leaky_relu", list(rng.normal(0.92, 0.01, 4)), alpha=0.01),
        trial("tanh", list(rng.normal(0.60, 0.01, 4)), init_applied="pytorch_default",
              init_is_matched="false"),
    )  # fmt: skip
    obs, _ = observations(trials)
    tests = pairwise_tests(obs, "activation").set_index(["a", "b"])
    for pair in [("relu", "tanh"), ("leaky_relu", "relu"), ("leaky_relu", "tanh")]:
        row = tests.loc[pair]
        assert row["reason"] == "" and row["strata"] == 1, (pair, row["reason"])
        assert "init_is_matched=true" in row["strata_used"]
    relu_tanh = tests.loc[("relu", "tanh")]  # the default-init tanh (0.60) is not pooled in
    assert relu_tanh["effect"] == pytest.approx(0.10, abs=0.02) and relu_tanh["p_holm"] < 0.05
    assert (relu_tanh["seeds_a"], relu_tanh["seeds_b"]) == (4, 4)
    by_bn = pairwise_tests(obs, "activation_bn").set_index(["a", "b"])
    assert by_bn.loc[("relu + none", "tanh + none"), "reason"] == ""


def test_pairwise_initializers_compare_matched_with_the_default() -> None:
    """Comparing initializers holds the activation equal, so He (matched for ReLU) meets
    PyTorch's default (not matched) in one stratum."""
    rng = np.random.default_rng(11)
    trials = frame(
        trial("relu", list(rng.normal(0.90, 0.01, 4)), init_applied="he_normal"),
        trial("relu", list(rng.normal(0.30, 0.01, 4)), init_applied="pytorch_default",
              init_is_matched="false"),
    )  # fmt: skip
    obs, _ = observations(trials)
    row = pairwise_tests(obs, "init").set_index(["a", "b"]).loc[("he_normal", "pytorch_default")]
    assert row["reason"] == "" and row["strata"] == 1, row["reason"]
    assert row["effect"] == pytest.approx(0.60, abs=0.03) and row["p_holm"] < 0.05


def test_prelu_against_leaky_holds_the_init_rule_equal() -> None:
    rng = np.random.default_rng(8)
    trials = frame(
        trial("prelu", list(rng.normal(0.9, 0.01, 4))),
        trial("leaky_relu", list(rng.normal(0.8, 0.01, 4)), alpha=0.01,
              init_applied="pytorch_default", init_is_matched="false"),
    )  # fmt: skip
    claims = judge_claims(observations(trials)[0]).set_index("claim")
    row = claims.loc["PReLU > leaky ReLU"]
    assert row["verdict"] == "not enough data" and "init_is_matched" in row["why"]


def test_time_replicates_are_repeated_runs_of_a_cell() -> None:
    """Repeated trials of a cell are one cell for accuracy (same seeds, merged) but separate
    timing measurements: three runs a side decide the cost claim."""
    rng = np.random.default_rng(9)
    rows = []
    for activation, seconds in (("elu", 0.20), ("relu", 0.10)):
        for _ in range(3):
            row = trial(activation, [0.9, 0.91])
            row["mean_epoch_seconds"] = seconds + rng.normal(0, 0.005)
            rows.append(row)
    trials = frame(*rows)
    obs, merged = observations(trials)
    assert merged == 8 and obs["cell"].nunique() == 2
    times = timings(trials)
    assert len(times) == 6 and times.groupby("cell").size().eq(3).all()
    claims = judge_claims(obs, timings=times).set_index("claim")
    cost = claims.loc["ELU costs more per epoch than ReLU"]
    assert cost["verdict"] == "held" and (cost["seeds_a"], cost["seeds_b"]) == (3, 3)
    alone = judge_claims(obs, timings=timings(frame(rows[0], rows[3]))).set_index("claim")
    why = alone.loc["ELU costs more per epoch than ReLU", "why"]
    assert "repeated runs" in why and "no stratum has 2 or more runs" in why
    missing = judge_claims(obs).set_index("claim").loc["ELU costs more per epoch than ReLU"]
    assert missing["verdict"] == "not enough data" and "timings" in missing["why"]


def test_wider_networks_are_slower_is_a_claim_when_width_varies() -> None:
    rows = []
    for width, seconds in ((32.0, 0.1), (64.0, 0.2), (32.0, 0.11), (64.0, 0.21)):
        row = trial("relu", [0.9, 0.92], width=width)
        row["mean_epoch_seconds"] = seconds
        rows.append(row)
    trials = frame(*rows)
    claims = judge_claims(observations(trials)[0], timings=timings(trials)).set_index("claim")
    row = claims.loc["wider networks are slower per epoch"]
    assert (row["cells_a"], row["seeds_a"]) == (1, 2) and row["effect"] == pytest.approx(0.1)
    assert "deeper networks are slower per epoch" not in claims.index


def test_he_for_tanh_is_judged_only_when_the_design_ran_it() -> None:
    rng = np.random.default_rng(10)
    base = [
        trial("tanh", list(rng.normal(0.8, 0.01, 3)), init_applied="glorot_uniform"),
        trial("tanh", list(rng.normal(0.7, 0.01, 3)), init_applied="pytorch_default",
              init_is_matched="false"),
    ]  # fmt: skip
    he = trial("tanh", list(rng.normal(0.75, 0.01, 3)), init_applied="he_normal",
               init_is_matched="false")  # fmt: skip
    without = judge_claims(observations(frame(*base))[0])["claim"]
    assert "tanh: Glorot init > PyTorch default" in set(without)
    assert "tanh: He init > PyTorch default" not in set(without)
    with_he = judge_claims(observations(frame(*base, he))[0]).set_index("claim")
    assert with_he.loc["tanh: He init > PyTorch default", "verdict"] == "held"


@pytest.mark.parametrize(("seeds", "expected"), [(8, "held"), (4, "not enough data")])
def test_leaky_has_almost_no_dead_units(seeds: int, expected: str) -> None:
    """ "leaky ≈ 0": every seed at 0 dead units is evidence for a sign test (a t test would have
    no variance), and 4 seeds can't give p below 0.05, which the reason says."""
    rows = [trial("relu", [0.9] * seeds), trial("leaky_relu", [0.9] * seeds, alpha=0.01)]
    for row, dead in zip(rows, (0.3, 0.0), strict=True):
        for figures in row["per_seed"].values():
            figures["diag/dead_frac_max"] = dead
    claims = judge_claims(observations(frame(*rows))[0]).set_index("claim")
    row = claims.loc["dying ReLU: leaky_relu has almost no dead units (< 0.02)"]
    assert row["verdict"] == expected and (row["seeds_a"], row["effect"]) == (seeds, 0.02)
    if expected == "not enough data":
        assert "sign test" in row["why"] and "6 seeds" in row["why"]
