"""The multi-objective study's picture: accuracy against cost, its Pareto front highlighted.

Drawn from the leaderboard (what MLflow holds), whose ``pareto`` column is the front in all of
the study's objectives (:func:`search.leaderboard.pareto_front`, equal to Optuna's
``study.best_trials``). :mod:`search.report` decides when to draw it and where it goes.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from search.plots import PALETTE, house_style
from search.schema import MEAN_EPOCH_SECONDS, N_PARAMS, OBJECTIVE, ROLE_TRIAL

FRONT_FIGURE = "pareto_front.png"
_LABELS = {
    OBJECTIVE: "best validation accuracy",
    MEAN_EPOCH_SECONDS: "seconds per epoch (mean)",
    N_PARAMS: "parameters",
}


def cost_axis(objectives: list[tuple[str, str]]) -> str:
    """The x axis: time per epoch when it is an objective, else the first one besides accuracy."""
    metrics = [m for m, _ in objectives]
    if MEAN_EPOCH_SECONDS in metrics:
        return MEAN_EPOCH_SECONDS
    return next(m for m in metrics if m != OBJECTIVE)


@house_style
def pareto_figure(board: pd.DataFrame, objectives: list[tuple[str, str]]) -> Figure:
    """Completed search trials as accuracy against the cost axis, one colour per activation;
    the front's trials ringed and joined in order of cost."""
    x = cost_axis(objectives)
    data = board[(board["outcome"] == "completed") & (board["role"] == ROLE_TRIAL)]
    data = data.dropna(subset=[x, OBJECTIVE])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, (activation, group) in enumerate(sorted(data.groupby("activation"), key=str)):
        ax.scatter(
            group[x], group[OBJECTIVE], s=36, color=PALETTE[i % len(PALETTE)], label=activation
        )
    front = data[data["pareto"].astype(bool)].sort_values(x)
    if not front.empty:
        ax.scatter(
            front[x],
            front[OBJECTIVE],
            s=140,
            facecolors="none",
            edgecolors="black",
            linewidths=1.5,
            label="Pareto front",
            zorder=3,
        )
        ax.plot(front[x], front[OBJECTIVE], color="black", linewidth=1, alpha=0.6, zorder=2)
    if x == N_PARAMS:
        ax.set_xscale("log")
    others = len(objectives) > 2
    title = "accuracy against cost" + (f" (front in all {len(objectives)} objectives)" * others)
    ax.set(xlabel=_LABELS.get(x, x), ylabel=_LABELS[OBJECTIVE], title=title)
    if data.empty:
        ax.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best", fontsize="small")
    return fig
