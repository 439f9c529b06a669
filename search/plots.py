"""Pictures of gradient flow, drawn in the driver from the metrics trials reported.

Per trial: log10 weight-gradient norm as a layer x epoch heatmap beside activation std by layer.
On the parent run: gradient norm by depth at the first epoch for the best trial of each
activation, the notes' vanishing-gradient picture drawn from real runs.
"""

from __future__ import annotations

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient

TRIAL_FIGURE = "diagnostics/gradient_flow.png"
PARENT_FIGURE = "gradient_by_depth.png"
FIGSIZE, DPI = (10.0, 4.0), 100  # 1000 x 400 pixels
#: zlib level 1: PNG encoding is a quarter of a picture's cost at the default 6, for files
#: about a third larger; a study's pictures are drawn while the user waits for its end.
FAST_PNG = {"pil_kwargs": {"compress_level": 1}}
_LAYER = re.compile(r"^diag/(grad_norm|act_std)/layer_(\d+)$")

History = dict[int, dict[str, float]]  # epoch -> metrics


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


def trial_figure(history: History, title: str) -> Figure:
    """Heatmap of log10 gradient norm (layer x epoch) and activation std by layer."""
    fig, (left, right) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    epochs, layers, norms = per_layer(history, "grad_norm")
    if norms.size:
        with np.errstate(divide="ignore"):
            image = left.imshow(
                np.log10(norms),
                aspect="auto",
                origin="lower",
                cmap="viridis",
                extent=(epochs[0] - 0.5, epochs[-1] + 0.5, layers[0] - 0.5, layers[-1] + 0.5),
            )
        fig.colorbar(image, ax=left, label="log10 ‖∇W‖")
    else:
        left.text(0.5, 0.5, "no epoch finished", ha="center", va="center", transform=left.transAxes)
    left.set(xlabel="epoch", ylabel="hidden layer (1 = input side)", title="weight-gradient norm")
    epochs_s, layers_s, stds = per_layer(history, "act_std")
    for j in sorted({0, stds.shape[1] - 1}) if stds.size else []:
        right.plot(layers_s, stds[:, j], marker="o", label=f"epoch {epochs_s[j]}")
    right.set(xlabel="hidden layer", ylabel="activation std", title="activation spread by depth")
    if stds.size:
        right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def depth_figure(curves: dict[str, list[float]], title: str) -> Figure:
    """Gradient norm by depth (one line per activation), log scale."""
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for label, norms in curves.items():
        ax.plot(range(1, len(norms) + 1), norms, marker="o", label=label)
    ax.set_yscale("log")
    ax.set(xlabel="hidden layer (1 = input side)", ylabel="‖∇W‖ after epoch 1", title=title)
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
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
