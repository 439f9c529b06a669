"""The study report: factor leaderboards, importance, pictures and the notes' claims.

Everything is computed from MLflow (trials) and the Optuna study (importance, history), written
as ``report.md`` plus PNGs and CSVs into a directory, and logged on the study's parent run under
``report/``. Run at the end of every study, and again with ``gradsweep report --study NAME``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric

from search.analysis import factor_table, observations, pairwise_tests, timings
from search.claims import judge_claims
from search.figures import (
    depth_by_activation_figure,
    importance_figure,
    init_by_bn_figure,
    metric_by_activation_figure,
    optimization_history_figure,
    parallel_coordinates_figure,
    recorded_scores,
)
from search.leaderboard import find_parent_run, leaderboard, markdown, render
from search.plots import (
    FAST_PNG,
)
from search.schema import FACTORS, OBJECTIVES_TAG, OPTUNA_STORAGE_TAG, parse_objectives_tag
from search.tradeoffs import FRONT_FIGURE, pareto_figure

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
    fig.savefig(path, dpi=100, **FAST_PNG)  # constrained layout (house style): nothing clipped
    plt.close(fig)
    return path.name


def _picture(draw: Callable[[], Figure], path: Path, notes: list[str]) -> str | None:
    """Draw and save one picture; a picture that can't be drawn is a note, not a lost report."""
    try:
        return _save(draw(), path)
    except Exception as exc:
        plt.close("all")
        notes.append(f"{path.name} not drawn: {exc.__class__.__name__}: {exc}")
        return None


def metric_by_activation(obs: pd.DataFrame, table: pd.DataFrame, metric: str, path: Path) -> str:
    """:func:`metric_by_activation_figure`, saved to ``path``."""
    return _save(metric_by_activation_figure(obs, table, metric), path)


def init_by_bn(obs: pd.DataFrame, metric: str, path: Path) -> str:
    """:func:`init_by_bn_figure`, saved to ``path``."""
    return _save(init_by_bn_figure(obs, metric), path)


def depth_by_activation(obs: pd.DataFrame, metric: str, path: Path) -> str:
    """:func:`depth_by_activation_figure`, saved to ``path``."""
    return _save(depth_by_activation_figure(obs, metric), path)


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
    claims = judge_claims(obs, timings=timings(trials)) if used else pd.DataFrame()
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
    objectives = parse_objectives_tag(parent.data.tags.get(OBJECTIVES_TAG))
    if objectives and not trials.empty:
        pictures["accuracy against cost, Pareto front"] = _picture(
            lambda: pareto_figure(trials, objectives), directory / FRONT_FIGURE, notes
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
        recorded = recorded_scores(client, parent, metric)
        try:
            scores = optuna.importance.get_param_importances(
                study,
                evaluator=IMPORTANCE[importance](),
                # several objectives: importance for the primary one
                target=(lambda t: t.values[0]) if len(study.directions) > 1 else None,
            )
        except Exception as exc:  # too few trials, a single-valued space, ...
            notes.append(f"importance not computed: {exc}")
        if scores:
            pictures["importance"] = _save(
                importance_figure(scores, importance), directory / "importance.png"
            )
        pictures["optimization history"] = _picture(
            lambda: optimization_history_figure(study, metric, recorded),
            directory / "optimization_history.png",
            notes,
        )
        params = [
            p
            for p in ("activation", "init", "bn", "lr")
            if any(p in t.params for t in study.trials)
        ]
        pictures["parallel coordinates"] = _picture(
            lambda: parallel_coordinates_figure(study, params, metric, recorded),
            directory / "parallel_coordinates.png",
            notes,
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
        "p from a stratified Welch t test and the 95% CI from the same statistic; "
        "Holm within each family (accuracy, gradients, cost). Held / refuted: Holm p < 0.05 "
        "(effect > 0 / < 0). Not enough data: the design cannot decide, with the reason. "
        "Gradient flow = -|log10 first/last gradient ratio| (0 = even), at initialisation and "
        "after the last epoch.",
        "",
        markdown(claims.drop(columns=["reason"], errors="ignore")),
        "",
    ]
    if objectives and not trials.empty:
        front = trials[trials["pareto"].astype(bool)]
        lines += [
            "## Pareto front",
            "",
            f"Objectives: {', '.join(f'{m} ({d})' for m, d in objectives)}. The completed "
            "trials no other completed trial beats in every objective at once (Optuna's "
            "best_trials); accuracy is the seeds' mean, time the mean over the trial's epochs. "
            "ASHA and other early stopping act on the first objective only.",
            "",
            render(front, "markdown") if not front.empty else "_no completed trials_",
            "",
        ]
    for f, table in factors.items():
        lines += [
            f"## By {f}",
            "",
            markdown(table),
            "",
            "Pairwise, other factors held equal (stratified Welch t test, Holm):",
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
