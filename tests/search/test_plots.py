"""Picture data: per-layer matrices and the best-run-per-activation curves."""

from __future__ import annotations

import math

import pandas as pd

from search.plots import first_epoch_curves, per_layer, trial_figure


def _history(scale: float) -> dict[int, dict[str, float]]:
    return {
        epoch: {f"diag/grad_norm/layer_{i:02d}": scale * i * epoch for i in (1, 2, 3)}
        | {f"diag/act_std/layer_{i:02d}": 1.0 for i in (1, 2, 3)}
        for epoch in (1, 2)
    }


def test_per_layer_matrix_is_layer_by_epoch() -> None:
    epochs, layers, matrix = per_layer(_history(1.0), "grad_norm")
    assert epochs == [1, 2] and layers == [1, 2, 3]
    assert matrix.shape == (3, 2)
    assert matrix[2, 1] == 6.0


def test_one_curve_per_activation_from_its_best_run() -> None:
    board = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "run_name": ["t001 elu he", "t000 elu he", "t002 relu he"],
            "activation": ["elu", "elu", "relu"],
        }
    )
    curves = first_epoch_curves(
        board, {"a": _history(1.0), "b": _history(10.0), "c": _history(2.0)}
    )
    assert list(curves) == ["elu (t001)", "relu (t002)"]
    assert curves["elu (t001)"] == [1.0, 2.0, 3.0]


def test_trial_figure_without_any_epoch_still_draws() -> None:
    fig = trial_figure({}, "t009 relu diverged at once")
    assert fig.get_size_inches().tolist() == [10.0, 4.0]
    assert not math.isnan(fig.dpi)
