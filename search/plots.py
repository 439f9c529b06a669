"""Pictures of gradient flow, drawn in the driver from the metrics trials reported, and the
house style every gradsweep picture is drawn in.

Per trial: log10 weight-gradient norm as a layer x epoch heatmap beside activation std by layer.
On the parent run: gradient norm by depth at the first epoch for the best trial of each
activation, the notes' vanishing-gradient picture drawn from real runs.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from cycler import cycler
from matplotlib.axis import Axis
from matplotlib.colors import Colormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient

TRIAL_FIGURE = "diagnostics/gradient_flow.png"
PARENT_FIGURE = "gradient_by_depth.png"
FIGSIZE, DPI = (10.0, 4.0), 100  # 1000 x 400 pixels
#: zlib level 1: PNG encoding is a quarter of a picture's cost at the default 6, for files
#: about a third larger; a study's pictures are drawn while the user waits for its end.
FAST_PNG = {"pil_kwargs": {"compress_level": 1}}
#: The gradient pictures are drawn at the study's end, on its critical path: fixed margins instead
#: of the house style's constrained layout, which costs a second layout pass and about half of a
#: picture's time (benchmarks/README.md). Sized for these two layouts; a test checks nothing
#: is clipped.
TRIAL_MARGINS = {"left": 0.07, "right": 0.985, "bottom": 0.125, "top": 0.85, "wspace": 0.22}
_LAYER = re.compile(r"^diag/(grad_norm|act_std)/layer_(\d+)$")

History = dict[int, dict[str, float]]  # epoch -> metrics

#: Okabe & Ito's palette: told apart by readers with any common colour-vision deficiency, and in
#: greyscale print. Yellow last: it is the one that fades on white.
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)
#: Heatmaps: perceptually uniform and colour-blind safe, dark (low) to light (high).
HEATMAP = "viridis"
#: Cells without data, in every heatmap.
MISSING = "#d9d9d9"
#: One look for every picture (matplotlib rc settings, applied around each drawing by
#: :func:`house_style`): sizes that stay readable when a 1000-pixel PNG is shown at half size in
#: MLflow's artifact viewer, white background, no top/right frame, light grid.
STYLE: dict[str, object] = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "figure.titlesize": 13,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,  # grid behind bars and points
    "grid.color": "#b0b0b0",
    "grid.alpha": 0.35,
    "image.cmap": HEATMAP,
    "lines.linewidth": 1.8,
    "lines.markersize": 6,
    "figure.constrained_layout.use": True,  # room for labels and colour bars: nothing clipped
}

P = ParamSpec("P")
R = TypeVar("R")


def house_style(draw: Callable[P, R]) -> Callable[P, R]:
    """Draw inside :data:`STYLE` (a context, so importing gradsweep never restyles a user's own
    plots). Sizes and colours are fixed when an artist is made, so saving may happen outside."""

    @functools.wraps(draw)
    def styled(*args: P.args, **kwargs: P.kwargs) -> R:
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return styled


def heatmap_cmap() -> Colormap:
    """:data:`HEATMAP` with NaN cells drawn in :data:`MISSING`."""
    return plt.get_cmap(HEATMAP).with_extremes(bad=MISSING)


def text_colour(background: object) -> str:
    """Black or white, whichever reads better on ``background`` (WCAG relative luminance: a
    number on a light viridis cell in white is unreadable, on a dark one in black as well)."""
    linear = [
        c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(background)
    ]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    # contrast with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05): equal at L ~ 0.18
    return "black" if luminance > 0.179 else "white"


def per_layer(history: History, figure: str) -> tuple[list[int], list[int], np.ndarray]:
    """(epochs, layers, matrix[layer, epoch]) of one per-layer figure, NaN where missing."""
    epochs = sorted(
        e for e, m in history.items() if any(k.startswith(f"diag/{figure}/") for k in m)
    )
    layers = sorted(
        {
            int(g[2])
            for m in history.values()
            for k in m
            if (g := _LAYER.match(k)) and g[1] == figure
        }
    )
    matrix = np.full((len(layers), len(epochs)), np.nan)
    for j, epoch in enumerate(epochs):
        for i, layer in enumerate(layers):
            matrix[i, j] = history[epoch].get(f"diag/{figure}/layer_{layer:02d}", np.nan)
    return epochs, layers, matrix


def integer_ticks(axis: Axis) -> None:
    """Ticks on whole numbers only: epochs and layers are counts (a 3-epoch trial must not read
    0.5, 1.0, ... 3.5)."""
    axis.set_major_locator(MaxNLocator(integer=True))


@house_style
def trial_figure(history: History, title: str) -> Figure:
    """Heatmap of log10 gradient norm (layer x epoch) and activation std by layer."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=FIGSIZE, dpi=DPI, layout="none", gridspec_kw=TRIAL_MARGINS
    )
    epochs, layers, norms = per_layer(history, "grad_norm")
    if norms.size:
        with np.errstate(divide="ignore"):
            image = left.imshow(
                np.ma.masked_invalid(np.log10(norms)),
                aspect="auto",
                origin="lower",
                cmap=heatmap_cmap(),
                interpolation="nearest",
                extent=(epochs[0] - 0.5, epochs[-1] + 0.5, layers[0] - 0.5, layers[-1] + 0.5),
            )
        fig.colorbar(image, ax=left, label="log10 ‖∇W‖")
        integer_ticks(left.xaxis)
        integer_ticks(left.yaxis)
        left.grid(False)  # grid lines would cut through the cells
    else:
        left.text(0.5, 0.5, "no epoch finished", ha="center", va="center", transform=left.transAxes)
    left.set(xlabel="epoch", ylabel="hidden layer (1 = input side)", title="weight-gradient norm")
    epochs_s, layers_s, stds = per_layer(history, "act_std")
    for j in sorted({0, stds.shape[1] - 1}) if stds.size else []:
        right.plot(layers_s, stds[:, j], marker="o", label=f"epoch {epochs_s[j]}")
    right.set(xlabel="hidden layer", ylabel="activation std", title="activation spread by depth")
    integer_ticks(right.xaxis)
    if stds.size:
        right.legend()
    fig.suptitle(title)
    return fig


@house_style
def depth_figure(curves: dict[str, list[float]], title: str) -> Figure:
    """Gradient norm by depth (one line per activation), log scale."""
    # the legend sits right of the axes: room for its longest label (about 0.6 em per character)
    longest = max((len(label) for label in curves), default=0)
    em = float(STYLE["legend.fontsize"]) / 72 / FIGSIZE[0]  # of the figure's width
    legend = (longest * 0.6 + 4) * em
    margins = {"left": 0.08, "right": 0.97 - legend, "bottom": 0.125, "top": 0.91}
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI, layout="none", gridspec_kw=margins)
    for label, norms in curves.items():
        ax.plot(range(1, len(norms) + 1), norms, marker="o", label=label)
    ax.set_yscale("log")
    integer_ticks(ax.xaxis)
    ax.set(xlabel="hidden layer (1 = input side)", ylabel="‖∇W‖ after epoch 1", title=title)
    if curves:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the lines, not on them
    return fig


def first_epoch_curves(
    board: pd.DataFrame, histories: dict[str, History]
) -> dict[str, list[float]]:
    """Gradient norm by depth at the first measured epoch, for the best run of each activation
    (``board`` is ranked best first)."""
    curves: dict[str, list[float]] = {}
    seen: set[str] = set()
    for _, row in board.iterrows():
        history = histories.get(row["run_id"], {})
        if row["activation"] in seen or not history:
            continue
        first = min(history)
        _, _, norms = per_layer({first: history[first]}, "grad_norm")
        if norms.size and not all(math.isnan(v) for v in norms[:, 0]):
            seen.add(row["activation"])
            curves[f"{row['activation']} ({row['run_name'].split(' ')[0]})"] = list(norms[:, 0])
    return curves


def log_pictures(
    client: MlflowClient,
    board: pd.DataFrame,
    histories: dict[str, History],
    parent_run_id: str,
    top: int,
    diverged: bool,
) -> int:
    """Draw and log the per-trial and parent pictures; returns how many trial pictures."""
    if board.empty:
        return 0
    healthy = board[board["outcome"] != "diverged"]
    chosen = list(healthy["run_id"].head(top))
    if diverged:
        chosen += list(board.loc[board["outcome"] == "diverged", "run_id"])
    names = dict(zip(board["run_id"], board["run_name"], strict=True))
    for run_id in chosen:
        fig = trial_figure(histories.get(run_id, {}), names[run_id])
        client.log_figure(run_id, fig, TRIAL_FIGURE, save_kwargs=FAST_PNG)
        plt.close(fig)
    curves = first_epoch_curves(healthy, histories)
    if curves:
        fig = depth_figure(curves, "gradient norm by depth, best trial per activation")
        client.log_figure(parent_run_id, fig, PARENT_FIGURE, save_kwargs=FAST_PNG)
        plt.close(fig)
    return len(chosen)
