"""The report's pictures, each a function from data to a matplotlib figure in the house style.

Pure drawing: :mod:`search.report` decides which to draw and where they go. The Optuna pictures
are drawn here from the study's trials rather than by Optuna (metric-named axes, early-stopped
trials marked, readable on white).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run

from search.leaderboard import child_runs
from search.plots import PALETTE, heatmap_cmap, house_style, integer_ticks, text_colour


@house_style
def metric_by_activation_figure(obs: pd.DataFrame, table: pd.DataFrame, metric: str) -> Figure:
    """Box and strip plot of the metric per activation (one point per seed), with the mean's
    95% CI."""
    data = obs[obs["role"] == "trial"]
    order = list(table["level"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    groups = [data.loc[data["activation"] == a, metric].to_numpy(dtype=float) for a in order]
    if order:
        ax.boxplot(groups, tick_labels=order, showfliers=False)
        rng = np.random.default_rng(0)
        for i, values in enumerate(groups, start=1):
            ax.scatter(
                i + rng.uniform(-0.15, 0.15, len(values)), values, s=14, alpha=0.7, color=PALETTE[0]
            )
        ax.errorbar(
            range(1, len(order) + 1),
            table["mean"],
            yerr=[table["mean"] - table["ci_low"], table["ci_high"] - table["mean"]],
            fmt="D",
            color=PALETTE[3],
            capsize=4,
            label="mean, 95% CI",
        )
        ax.legend(loc="lower left")
    ax.set(ylabel=metric, title=f"{metric} by activation (completed trials)")
    return fig


@house_style
def init_by_bn_figure(obs: pd.DataFrame, metric: str) -> Figure:
    """Heatmap of the mean metric per initializer (as applied) x BN placement; every cell says
    how many seed observations it averages (a mean of 1 is not a mean of 12), and a pair no
    trial ran reads "n/a" rather than a blank a reader could take for a low score."""
    data = obs[obs["role"] == "trial"].dropna(subset=[metric])
    inits = sorted(obs["init_applied"].dropna().unique()) if "init_applied" in obs else []
    bns = sorted(obs["bn"].dropna().unique()) if "bn" in obs else []
    grouped = data.groupby(["init_applied", "bn"])[metric]
    means = grouped.mean().unstack().reindex(index=inits, columns=bns)
    counts = grouped.size().unstack().reindex(index=inits, columns=bns).fillna(0).astype(int)
    fig, ax = plt.subplots(figsize=(8, 0.6 * max(len(inits), 2) + 2))
    ax.grid(False)
    if inits and bns:
        values = means.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=heatmap_cmap())
        ax.set_xticks(range(len(bns)), bns)
        ax.set_yticks(range(len(inits)), inits)
        for (i, j), value in np.ndenumerate(values):
            n = int(counts.iat[i, j])
            if math.isnan(value):
                text, colour = f"n/a\nn={n}", "black"
            else:
                text, colour = f"{value:.3f}\nn={n}", text_colour(image.cmap(image.norm(value)))
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=11)
        fig.colorbar(image, ax=ax, label=f"mean {metric}")
    ax.set(title=f"mean {metric}: initializer x batch norm", xlabel="bn", ylabel="init")
    return fig


@house_style
def depth_by_activation_figure(obs: pd.DataFrame, metric: str) -> Figure:
    """How deep each activation can go: the metric (mean over seeds and cells) and the median
    first/last gradient ratio at initialisation against depth, one line per activation and BN
    placement."""
    data = obs[obs["role"] == "trial"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (activation, bn), group in data.groupby(["activation", "bn"], sort=True):
        label = activation if bn == "none" else f"{activation} + BN {bn}"
        by_depth = group.groupby("depth")
        depths = sorted(by_depth.groups)
        left.plot(depths, by_depth[metric].mean().loc[depths], marker="o", label=label)
        ratio = by_depth["grad_ratio_init"].median().loc[depths]
        right.plot(depths, ratio.clip(lower=1e-12), marker="o", label=label)
    left.set(xlabel="depth (hidden layers)", ylabel=f"mean {metric}", title=f"{metric} by depth")
    right.set_yscale("log")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set(
        xlabel="depth (hidden layers)",
        ylabel="first / last layer gradient norm",
        title="gradient ratio at initialisation (1 = even)",
    )
    for ax in (left, right):
        integer_ticks(ax.xaxis)
    left.legend(fontsize="small")
    return fig


#: Optuna trial number -> the metric MLflow holds for it (see :func:`recorded_scores`).
Recorded = dict[int, float]


def _score(trial: optuna.trial.FrozenTrial, recorded: Recorded | None = None) -> float | None:
    """A trial's value; for one stopped early, the last value it reported to Optuna, else what
    MLflow recorded for it (ASHA may stop a trial on the very result Optuna never saw); None
    when there is nothing."""
    if trial.values:  # a multi-objective trial: its primary objective
        return float(trial.values[0])
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    value = (recorded or {}).get(trial.number)
    return None if value is None or math.isnan(value) else float(value)


def recorded_scores(client: MlflowClient, parent: Run, metric: str) -> Recorded:
    """``metric`` of each of the study's trials as MLflow holds it, by Optuna trial number."""
    scores: Recorded = {}
    for run in child_runs(client, parent):
        number = run.data.tags.get("optuna.trial_number")
        if number is not None and metric in run.data.metrics:
            scores[int(number)] = run.data.metrics[metric]
    return scores


@house_style
def optimization_history_figure(
    study: optuna.Study, metric: str, recorded: Recorded | None = None
) -> Figure:
    """Each trial's score by trial number, completed and early-stopped trials marked apart, and
    the best completed score so far as a step line. Drawn here rather than by Optuna, whose
    picture calls the axis "Objective Value" and draws pruned trials like the others."""
    State = optuna.trial.TrialState
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE  # the primary
    fig, ax = plt.subplots(figsize=(10, 5))
    trials = sorted(study.trials, key=lambda t: t.number)
    done = [(t.number, t.values[0]) for t in trials if t.state == State.COMPLETE and t.values]
    pruned = [(t.number, _score(t, recorded)) for t in trials if t.state == State.PRUNED]
    unscored = [n for n, v in pruned if v is None]
    pruned = [(n, v) for n, v in pruned if v is not None]
    failed = [t.number for t in trials if t.state == State.FAIL]
    if done:
        x, y = zip(*done, strict=True)
        ax.scatter(x, y, s=36, color=PALETTE[0], zorder=3, label="completed")
        best = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
        ax.step(x, best, where="post", color=PALETTE[3], zorder=2, label="best so far")
    if pruned:
        x, y = zip(*pruned, strict=True)
        ax.scatter(
            x,
            y,
            s=42,
            marker="x",
            color=PALETTE[1],
            zorder=3,
            label="stopped early (last value reported)",
        )
    if unscored:  # on the bottom edge: there, but with nothing to plot
        ax.scatter(
            unscored,
            [0.0] * len(unscored),
            s=42,
            marker="x",
            color=PALETTE[1],
            zorder=3,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="stopped early (no value)",
        )
    if failed:
        ax.scatter(
            failed,
            [0.0] * len(failed),
            s=42,
            marker="v",
            color=PALETTE[6],
            zorder=3,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="failed (no value)",
        )
    integer_ticks(ax.xaxis)
    ax.set(xlabel="trial", ylabel=metric, title=f"optimization history: {metric}")
    if done or pruned or unscored or failed:
        fig.legend(loc="outside upper center", ncols=5)  # above the axes, never on the points
    return fig


#: Lines on white: viridis without its last, near-white yellow.
LINES = ListedColormap(plt.get_cmap("viridis")(np.linspace(0.0, 0.85, 256)), name="viridis_dark")


def _axis_positions(values: list[object]) -> tuple[list[float], list[tuple[float, str]]]:
    """Map one parameter's values onto [0, 1] for a parallel-coordinates axis: categories evenly
    spaced in sorted order, numbers linearly (log10 when all positive and spanning a decade or
    more, as learning rates do). Returns the positions and the (position, label) ticks."""
    numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if values and len(numeric) == len(values):
        raw = np.asarray(numeric, dtype=float)
        log = bool((raw > 0).all() and raw.max() >= 10 * raw.min())
        scaled = np.log10(raw) if log else raw
        low, high = float(scaled.min()), float(scaled.max())
        span = high - low or 1.0
        positions = [(v - low) / span for v in scaled]
        marks = np.linspace(low, high, 3) if high > low else np.array([low])
        ticks = [((m - low) / span, f"{10**m if log else m:.3g}") for m in marks]
        return positions, ticks
    levels = sorted({str(v) for v in values})
    where = {
        level: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, level in enumerate(levels)
    }
    return [where[str(v)] for v in values], [(p, level) for level, p in where.items()]


@house_style
def parallel_coordinates_figure(
    study: optuna.Study, params: list[str], metric: str, recorded: Recorded | None = None
) -> Figure:
    """One line per trial across its parameters and its score, coloured by the score; trials
    stopped early dashed in grey under the others. Drawn here rather than by Optuna, whose
    picture draws low scores near-white on grey and hides axis labels under the lines."""
    State = optuna.trial.TrialState
    rows = [
        (t, score)
        for t in study.trials
        if t.state in (State.COMPLETE, State.PRUNED)
        and (score := _score(t, recorded)) is not None
        and all(p in t.params for p in params)
    ]
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.grid(False)
    ax.spines[:].set_visible(False)
    ax.set_yticks([])
    names = [*params, metric]
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.45, len(names) - 0.65)
    ax.set_ylim(-0.06, 1.06)
    ax.set_title(f"parallel coordinates: {metric}")
    if not rows:
        ax.text(0.5, 0.5, "no scored trials", ha="center", va="center", transform=ax.transAxes)
        return fig
    columns = [[t.params[p] for t, _ in rows] for p in params] + [[s for _, s in rows]]
    placed = [_axis_positions(column) for column in columns]
    ys = np.array([positions for positions, _ in placed]).T  # trial x axis
    scores = np.array([s for _, s in rows])
    early = [i for i, (t, _) in enumerate(rows) if t.state == State.PRUNED]
    ranked = np.delete(scores, early) if len(early) < len(rows) else scores
    low, high = float(ranked.min()), float(ranked.max())
    norm = plt.Normalize(low, high if high > low else low + 1e-9)  # colours: completed trials
    cmap = LINES
    x = np.arange(len(names))
    for i in np.argsort(scores):  # best drawn last, on top
        if i in early:
            ax.plot(x, ys[i], color="#8c8c8c", linestyle="--", linewidth=1.2, alpha=0.8, zorder=1)
        else:
            ax.plot(x, ys[i], color=cmap(norm(scores[i])), linewidth=2.0, alpha=0.9, zorder=2)
    for k, (_, ticks) in enumerate(placed):
        ax.axvline(k, color="black", linewidth=1.0, zorder=3)
        last = k == len(placed) - 1  # the score axis: labels on its right, where no line runs
        for position, label in ticks:
            ax.text(
                k + 0.03 if last else k - 0.03,
                position,
                label,
                ha="left" if last else "right",
                va="center",
                fontsize=9,
                zorder=4,
                bbox={
                    "boxstyle": "round,pad=0.15",
                    "facecolor": "white",
                    "edgecolor": "none",
                    "alpha": 0.85,
                },
            )
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label(metric)
    if early:
        ax.plot(
            [], [], color="#8c8c8c", linestyle="--", label="stopped early (last value reported)"
        )
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.1), ncols=1)
    return fig


@house_style
def importance_figure(scores: dict[str, float], evaluator: str) -> Figure:
    """Horizontal bars, the most important parameter on top."""
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(scores) + 1.5))
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names], color=PALETTE[0])
    ax.set(xlabel=f"importance ({evaluator})", title="hyperparameter importance")
    return fig
