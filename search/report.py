"""The study report: factor leaderboards, importance, pictures and the notes' claims.

Everything is computed from MLflow (trials) and the Optuna study (importance, history), written
as ``report.md`` plus PNGs and CSVs into a directory, and logged on the study's parent run under
``report/``. Run at the end of every study, and again with ``gradsweep report --study NAME``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from search.analysis import FACTORS, factor_table, observations, pairwise_tests
from search.claims import judge_claims
from search.leaderboard import find_parent_run, leaderboard, markdown, render
from search.plots import FAST_PNG
from search.schema import OPTUNA_STORAGE_TAG

DEPTH_FIGURE = "depth_by_activation.png"
IMPORTANCE = {
    "fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
    "ped-anova": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
}


@dataclass
class Report:
    """Where the report went and what it found."""

    directory: Path
    factors: dict[str, pd.DataFrame]
    pairwise: dict[str, pd.DataFrame]
    claims: pd.DataFrame
    importance: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _save(fig: plt.Figure, path: Path) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight", **FAST_PNG)
    plt.close(fig)
    return path.name


def metric_by_activation(obs: pd.DataFrame, table: pd.DataFrame, metric: str, path: Path) -> str:
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
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.6)
        ax.errorbar(
            range(1, len(order) + 1),
            table["mean"],
            yerr=[table["mean"] - table["ci_low"], table["ci_high"] - table["mean"]],
            fmt="D",
            color="black",
            capsize=4,
            label="mean, 95% CI",
        )
        ax.legend(loc="lower left")
    ax.set(ylabel=metric, title=f"{metric} by activation (completed trials)")
    return _save(fig, path)


def init_by_bn(obs: pd.DataFrame, metric: str, path: Path) -> str:
    """Heatmap of the mean metric per initializer (as applied) x BN placement."""
    data = obs[obs["role"] == "trial"]
    pivot = data.pivot_table(index="init_applied", columns="bn", values=metric, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(len(pivot), 2) + 2))
    if not pivot.empty:
        image = ax.imshow(pivot.to_numpy(dtype=float), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(pivot.columns)), pivot.columns)
        ax.set_yticks(range(len(pivot.index)), pivot.index)
        for (i, j), value in np.ndenumerate(pivot.to_numpy(dtype=float)):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white")
        fig.colorbar(image, ax=ax, label=f"mean {metric}")
    ax.set(title=f"mean {metric}: initializer x batch norm", xlabel="bn", ylabel="init")
    return _save(fig, path)


def depth_by_activation(obs: pd.DataFrame, metric: str, path: Path) -> str:
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
    left.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def _optuna_plot(plotter, study: optuna.Study, path: Path, **kwargs) -> str | None:
    try:
        ax = plotter(study, **kwargs)
    except Exception:
        return None
    fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
    fig.set_size_inches(10, 5)
    return _save(fig, path)


def build_report(
    client: MlflowClient,
    study_name: str,
    directory: Path,
    optuna_storage: str | None = None,
    metric: str = "best_val_accuracy",
    importance: str = "fanova",
    log: bool = True,
) -> Report:
    """Write the report for ``study_name`` into ``directory`` and (``log``) onto its parent run."""
    directory.mkdir(parents=True, exist_ok=True)
    parent = find_parent_run(client, study_name)
    trials = leaderboard(client, study_name)
    notes: list[str] = []
    obs, merged = observations(trials) if not trials.empty else (pd.DataFrame(), 0)
    used = len(obs)
    cells = obs["cell"].nunique() if used else 0
    notes.append(
        f"{len(trials)} trials; {used} seed observations of {cells} configurations (cells) are "
        "evidence: trials that ran every epoch or diverged (a diverged seed counts at chance "
        "accuracy); trials stopped early are not"
    )
    if merged:
        notes.append(
            f"{merged} observations repeated a configuration and seed already run and were "
            "merged: identical runs are one observation, never independent evidence"
        )
    searcher, scheduler = parent.data.tags.get("searcher"), parent.data.tags.get("scheduler")
    if parent.data.tags.get("design") != "true" and (
        searcher not in ("random", "grid", "qmc") or scheduler != "fifo"
    ):
        notes.append(
            f"searcher {searcher}, scheduler {scheduler}: an adaptive search chooses where to "
            "look, so factor levels were not sampled evenly (and early stopping keeps only rung "
            "survivors); its comparisons are exploratory. Claims rest on designs (the seed-notes "
            "preset) and on confirmation runs with fresh seeds"
        )
    factors = {f: factor_table(obs, f, metric) for f in FACTORS} if used else {}
    pairwise = {f: pairwise_tests(obs, f, metric) for f in FACTORS} if used else {}
    claims = judge_claims(obs) if used else pd.DataFrame()
    for f, table in factors.items():
        table.to_csv(directory / f"leaderboard_by_{f}.csv", index=False)
        (directory / f"leaderboard_by_{f}.md").write_text(markdown(table))
        pairwise[f].to_csv(directory / f"pairwise_{f}.csv", index=False)
    claims.to_csv(directory / "claims.csv", index=False)

    pictures: dict[str, str | None] = {}
    if used:
        pictures["metric by activation"] = metric_by_activation(
            obs, factors["activation"], metric, directory / "metric_by_activation.png"
        )
        pictures["initializer x batch norm"] = init_by_bn(obs, metric, directory / "init_by_bn.png")
        if obs["depth"].nunique() > 1:
            pictures["how deep each activation can go"] = depth_by_activation(
                obs, metric, directory / DEPTH_FIGURE
            )
    scores: dict[str, float] = {}
    storage = optuna_storage or parent.data.tags.get(OPTUNA_STORAGE_TAG)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as exc:
        study = None
        notes.append(
            f"Optuna study not readable ({exc.__class__.__name__}): no importance or history"
        )
    if study is not None:
        from optuna.visualization import matplotlib as ovm

        try:
            scores = optuna.importance.get_param_importances(
                study, evaluator=IMPORTANCE[importance]()
            )
        except Exception as exc:  # too few trials, a single-valued space, ...
            notes.append(f"importance not computed: {exc}")
        if scores:
            fig, ax = plt.subplots(figsize=(8, 0.4 * len(scores) + 1.5))
            names = list(scores)[::-1]
            ax.barh(names, [scores[n] for n in names])
            ax.set(xlabel=f"importance ({importance})", title="hyperparameter importance")
            pictures["importance"] = _save(fig, directory / "importance.png")
        pictures["optimization history"] = _optuna_plot(
            ovm.plot_optimization_history, study, directory / "optimization_history.png"
        )
        pictures["parallel coordinates"] = _optuna_plot(
            ovm.plot_parallel_coordinate,
            study,
            directory / "parallel_coordinates.png",
            params=[
                p
                for p in ("activation", "init", "bn", "lr")
                if any(p in t.params for t in study.trials)
            ],
        )

    lines = [f"# gradsweep report: {study_name}", ""]
    lines += [f"- {n}" for n in notes] + [""]
    lines += [
        "## Leaderboard (top 20)",
        "",
        render(trials, "markdown", top=20) if not trials.empty else "_empty_",
        "",
    ]
    lines += [
        "## Claims from the notes, tested on this study",
        "",
        "Each claim compares configurations that differ only in the claim's factor: the other "
        "factors are held equal (strata), and only strata with both sides count. A trial's "
        "seeds are its replicates. Effect = the weighted mean over strata of mean(A) - mean(B); "
        "p from a stratified permutation test and the 95% CI from inverting that same test; "
        "Holm within each family (accuracy, gradients, cost). Held / refuted: Holm p < 0.05 "
        "(effect > 0 / < 0). Not enough data: the design cannot decide, with the reason. "
        "Gradient flow = -|log10 first/last gradient ratio| (0 = even), at initialisation and "
        "after the last epoch.",
        "",
        markdown(claims.drop(columns=["reason"], errors="ignore")),
        "",
    ]
    for f, table in factors.items():
        lines += [
            f"## By {f}",
            "",
            markdown(table),
            "",
            "Pairwise, other factors held equal (stratified permutation test, Holm):",
            "",
            markdown(pairwise[f]),
            "",
        ]
    if scores:
        lines += [
            "## Importance",
            "",
            markdown(pd.DataFrame({"param": list(scores), "importance": list(scores.values())})),
            "",
        ]
    for title, name in pictures.items():
        if name:
            lines += [f"## {title.capitalize()}", "", f"![{title}]({name})", ""]
    (directory / "report.md").write_text("\n".join(lines))

    if log:
        run_id = parent.info.run_id
        now = int(pd.Timestamp.now().timestamp() * 1000)
        if scores:
            client.log_batch(
                run_id,
                metrics=[Metric(f"importance/{k}", float(v), now, 0) for k, v in scores.items()],
            )
        client.log_artifacts(run_id, str(directory), "report")
        for f, table in factors.items():
            client.log_text(run_id, table.to_csv(index=False), f"leaderboard_by_{f}.csv")
            client.log_text(run_id, markdown(table), f"leaderboard_by_{f}.md")
    return Report(directory, factors, pairwise, claims, scores, notes)
