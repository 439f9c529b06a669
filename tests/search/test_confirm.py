"""Confirmation runs in a real study: each activation's winner retrained with fresh seeds."""

from __future__ import annotations

import mlflow
import optuna
import pytest

from search import run_study
from search.analysis import observations
from search.claims import judge_claims
from search.confirm import best_per_level, confirm_study
from search.errors import UserError
from search.leaderboard import leaderboard
from search.schema import PARENT_TAG, ROLE_TAG
from spaces import load_config

pytestmark = pytest.mark.slow


def test_confirm_retrains_each_levels_winner_with_fresh_seeds(local_ray: None, tmp_path) -> None:
    design = [{"activation": a, "lr": lr} for a in ("relu", "tanh") for lr in (0.001, 0.01)]
    config = load_config(
        {
            "name": "confirm",
            "search": {
                "activations": ["relu", "tanh"],
                "initializers": ["matched"],
                "lr": {"low": 0.001, "high": 0.01, "log": True},
            },
            "design": design,
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 2, "seeds": 2},
            "output_dir": str(tmp_path),
        }
    )
    first = run_study(config)
    client = mlflow.MlflowClient(tracking_uri=first.tracking_uri)
    winners = best_per_level(leaderboard(client, first.study_name), "activation")
    assert sorted(winners["activation"]) == ["relu", "tanh"]

    result = confirm_study(first.study_name, seeds=3, tracking_uri=first.tracking_uri)
    runs = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'"
    )
    confirmations = [r for r in runs if r.data.tags[ROLE_TAG] == "confirmation"]
    assert len(runs) == len(design) + 2 and len(confirmations) == 2
    for run in confirmations:
        seeds = {k.split("/")[1] for k in run.data.metrics if k.startswith("seed/")}
        assert seeds == {"2", "3", "4"}, "seeds the search (0, 1) never used"
        winner = winners[winners["activation"] == run.data.params["activation"]].iloc[0]
        assert float(run.data.params["lr"]) == pytest.approx(winner["lr"])
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    confirm = optuna.load_study(
        study_name=f"{first.study_name}-confirm", storage=result.optuna_storage
    )
    assert len(confirm.trials) == 2
    search = optuna.load_study(study_name=first.study_name, storage=result.optuna_storage)
    assert len(search.trials) == len(design), "the search's own study is left as it was"
    obs, _ = observations(leaderboard(client, first.study_name))
    claims = judge_claims(obs)
    row = claims[claims["claim"].str.startswith("relu > tanh (each tuned")].iloc[0]
    assert (row["seeds_a"], row["seeds_b"]) == (3, 3)
    assert row["metric"] == "test_accuracy"


def test_confirm_refuses_a_bad_factor_before_anything(tmp_path) -> None:
    with pytest.raises(UserError, match="--factor: 'colour'"):
        confirm_study("nope", factor="colour", tracking_uri=f"sqlite:///{tmp_path / 'x.db'}")
    assert not (tmp_path / "x.db").exists()


def test_a_confirm_block_confirms_at_the_end_of_the_study(local_ray: None, tmp_path) -> None:
    """``confirm:`` in the config runs the same confirmation once the search is done."""
    config = load_config(
        {
            "name": "block",
            "search": {"activations": ["relu", "tanh"], "initializers": ["matched"], "lr": 0.01},
            "design": [{"activation": "relu"}, {"activation": "tanh"}],
            "model": {"depth": 2, "width": 8},
            "training": {"epochs": 1, "seeds": 2},
            "confirm": {"seeds": 2},
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config)
    assert any(n.startswith("confirmed: the best configuration of each of 2") for n in result.notes)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    board = leaderboard(client, result.study_name)
    confirmations = board[board["role"] == "confirmation"]
    assert sorted(confirmations["activation"]) == ["relu", "tanh"]
    assert all(set(seeds) == {2, 3} for seeds in confirmations["per_seed"])
    claims = judge_claims(observations(board)[0])
    assert "relu > tanh (each tuned, confirmation runs, test)" in set(claims["claim"])
