"""Picture data (per-layer matrices, the best-run-per-activation curves) and the house style
the pictures are drawn in."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from search.plots import (
    PALETTE,
    STYLE,
    depth_figure,
    first_epoch_curves,
    per_layer,
    text_colour,
    trial_figure,
)
from trainers import ACTIVATIONS


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


def _visible_ticks(axis) -> list[str]:
    """Tick labels a reader sees: drawn, and inside the axis' range."""
    axis.figure.canvas.draw()
    low, high = sorted(axis.get_view_interval())
    return [
        t.get_text()
        for t, v in zip(axis.get_ticklabels(), axis.get_ticklocs(), strict=True)
        if low <= v <= high
    ]


def test_gradient_flow_epochs_and_layers_are_whole_numbers() -> None:
    history = {
        epoch: {f"diag/grad_norm/layer_{i:02d}": 0.1 * i * epoch for i in range(1, 7)}
        | {f"diag/act_std/layer_{i:02d}": 1.0 / i for i in range(1, 7)}
        for epoch in (1, 2, 3)
    }
    fig = trial_figure(history, "t003 elu he_normal bn=none")
    heatmap, spread = fig.axes[0], fig.axes[2]  # axes[1] is the colour bar
    assert _visible_ticks(heatmap.xaxis) == ["1", "2", "3"]  # never 0.5, 1.0, ... 3.5
    assert all(t.lstrip("−-").isdigit() for t in _visible_ticks(heatmap.yaxis))
    assert all(t.isdigit() for t in _visible_ticks(spread.xaxis))
    plt.close(fig)


def test_every_picture_uses_the_house_style() -> None:
    fig = depth_figure({"elu (t001)": [1.0, 0.5, 0.2], "relu (t002)": [1.0, 0.3, 0.1]}, "by depth")
    ax = fig.axes[0]
    assert [to_hex(line.get_color()) for line in ax.get_lines()] == [p.lower() for p in PALETTE[:2]]
    assert ax.xaxis.label.get_fontsize() >= 10 and ax.title.get_fontsize() >= 11
    assert plt.rcParams["axes.prop_cycle"] != STYLE["axes.prop_cycle"]  # a user's plots untouched
    plt.close(fig)


def _inside_the_canvas(fig: Figure) -> bool:
    """Every drawn artist (titles, labels, tick labels, legend, colour bar) lies on the figure."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    width, height = fig.get_size_inches()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height


def test_the_fixed_margins_clip_nothing() -> None:
    """The gradient pictures trade the constrained layout for fixed margins (speed at the study's
    end): at depth 50, with a long title and long legend labels, nothing may fall off."""
    depth = 50
    history = {
        epoch: {f"diag/grad_norm/layer_{i:02d}": 10.0 ** (i - epoch) for i in range(1, depth + 1)}
        | {f"diag/act_std/layer_{i:02d}": 1e3 / i for i in range(1, depth + 1)}
        for epoch in range(0, 101)
    }
    fig = trial_figure(history, "t123 leaky_relu pytorch_default bn=before lr=0.00123 (5 seeds)")
    assert _inside_the_canvas(fig)
    plt.close(fig)
    curves = {f"{a} (t{i:03d})": [10.0**-i] * depth for i, a in enumerate(ACTIVATIONS)}
    fig = depth_figure(curves, "gradient norm by depth, best trial per activation")
    assert _inside_the_canvas(fig)
    plt.close(fig)


def test_text_colour_follows_the_cell_luminance() -> None:
    viridis = plt.get_cmap("viridis")
    assert text_colour(viridis(0.0)) == "white"  # dark purple
    assert text_colour(viridis(1.0)) == "black"  # light yellow
    assert text_colour("#d9d9d9") == "black"
