"""``gradsweep leaderboard --by depth`` / ``--by width`` through the CLI, on a small board (the
MLflow read is replaced by the board itself: this tests the factor path, not the store)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import search.cli.reading as reading
import search.leaderboard
from search.cli import main

FIXED = {
    "alpha": np.nan,
    "init_applied": "he_normal",
    "bn": "none",
    "lr": 1e-3,
    "dataset": "digits",
    "optimizer": "adam",
    "batch_size": 64,
    "epochs": 5,
    "dropout": 0.0,
    "weight_decay": 0.0,
}


def _board() -> pd.DataFrame:
    """relu at depth 4 and 20, width 32 and 64: deep is worse, width makes no difference."""
    rows = []
    rng = np.random.default_rng(0)
    for i, (depth, width) in enumerate([(4, 32), (4, 64), (20, 32), (20, 64)]):
        mean = 0.9 if depth == 4 else 0.6
        values = rng.normal(mean, 0.01, 4)
        per_seed = {
            s: {"best_val_accuracy": v, "test_accuracy": v, "diverged": 0.0}
            for s, v in enumerate(values)
        }
        rows.append(
            {
                **FIXED,
                "activation": "relu",
                "depth": depth,
                "width": width,
                "run_id": f"run{i}",
                "outcome": "completed",
                "role": "trial",
                "best_val_accuracy": float(values.mean()),
                "chance_accuracy": 0.1,
                "per_seed": per_seed,
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("factor", ["depth", "width"])
def test_leaderboard_by_depth_and_width(
    factor: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reading, "_tracking_client", lambda uri: None)
    monkeypatch.setattr(search.leaderboard, "leaderboard", lambda client, study: _board())
    code = main(["leaderboard", "--study", "shapes", "--by", factor, "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    levels = {str(row["level"]): row for row in result["levels"]}
    assert set(levels) == ({"4", "20"} if factor == "depth" else {"32", "64"})
    assert all(row["n"] == 8 for row in levels.values())  # 2 trials x 4 seeds per level
    (pair,) = result["pairwise"]
    if factor == "depth":  # held equal on width: a clear difference
        assert pair["p_holm"] < 0.05 and abs(pair["effect"]) > 0.2
    else:
        assert abs(pair["effect"]) < 0.05
