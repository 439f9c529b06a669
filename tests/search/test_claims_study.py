"""The notes' claims on a real designed study: verdicts reached where the data are clear.

The ``seed-notes`` design (17 configurations at depth 20, 4 fused seeds each), shortened to a few
epochs. Each single-stratum claim is checked against an independent Welch test on the per-seed
values MLflow holds: where that test is significant even after a Bonferroni correction over the
claim's family (stricter than the report's Holm), the report must reach a verdict of the same sign.
"""

from __future__ import annotations

import mlflow
import pytest
from scipy import stats

from search import run_study
from search.analysis import observations
from search.claims import judge_claims, notes_claims
from search.leaderboard import leaderboard
from spaces import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def notes_study(local_ray: None, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("notes")
    config = load_config("seed-notes", ["training.epochs=3", f"output_dir={out}"])
    result = run_study(config)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    obs, merged = observations(leaderboard(client, result.study_name))
    return obs, merged, judge_claims(obs)


def test_every_cell_gives_its_four_seeds(notes_study) -> None:
    obs, merged, _ = notes_study
    assert merged == 0
    assert obs.groupby("cell").size().eq(4).all() and obs["cell"].nunique() == 17


def test_every_accuracy_claim_has_a_verdict_or_a_reason(notes_study) -> None:
    _, _, claims = notes_study
    accuracy = claims[claims["family"] == "accuracy"]
    assert len(accuracy) >= 10
    for row in accuracy.itertuples():
        assert row.verdict in ("held", "refuted", "not significant", "not enough data")
        assert row.why and "\n" not in row.why
    assert (claims["verdict"].isin(["held", "refuted"])).sum() >= 5


def test_verdicts_agree_with_an_independent_welch_test(notes_study) -> None:
    obs, _, claims = notes_study
    by_name = {c.name: c for c in notes_claims(set(obs["activation"]), 1)}
    checked = 0
    for row in claims[claims["strata"] == 1].itertuples():
        claim = by_name[row.claim]
        a = obs.loc[claim.a(obs), claim.metric].dropna()
        b = obs.loc[claim.b(obs), claim.metric].dropna()
        if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
            continue
        p = stats.ttest_ind(a, b, equal_var=False).pvalue
        family = (claims["family"] == row.family).sum()
        if p < 0.05 / family:
            checked += 1
            expected = "held" if a.mean() > b.mean() else "refuted"
            assert row.verdict == expected, (row.claim, p, row.verdict)
    assert checked >= 3
