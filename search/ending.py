"""The end of a study: orphaned runs closed, leaderboard, report and pictures, parent status.

Runs after every Tuner of a study (a first run, a resume, a confirmation), while Ray stops beside
it: the leaderboard is read back from MLflow (what the UI shows), the report is built in the
forked report process (:mod:`search.background`) while the driver draws the gradient pictures,
and whatever MLflow can't take is spooled for ``gradsweep sync``.
"""

from __future__ import annotations

import time

import pandas as pd
from mlflow import MlflowClient

from search.background import ReportProcess
from search.environment import Locations
from search.journal import Journal
from search.leaderboard import leaderboard, render
from search.plots import log_pictures
from search.resume import close_orphans
from search.schema import OUTCOMES, ROLE_TRIAL, STUDY_METRICS_PREFIX
from search.tracking import MlflowTracker
from spaces import StudyConfig


def headline(board: pd.DataFrame, started_ms: int | None) -> list[tuple[str, float, int, int]]:
    """The study's headline figures for its parent run (``study/...``): the best validation
    accuracy and that trial's test accuracy, trials by outcome, wall time since the study began."""
    now = int(time.time() * 1000)
    search = board[board["role"] == ROLE_TRIAL] if not board.empty else board
    figures: dict[str, float] = {"trials": float(len(search))}
    for outcome in OUTCOMES:
        figures[f"trials_{outcome}"] = float((search["outcome"] == outcome).sum())
    scored = search.dropna(subset=["best_val_accuracy"])
    if not scored.empty:
        best = scored.loc[scored["best_val_accuracy"].idxmax()]
        figures["best_val_accuracy"] = float(best["best_val_accuracy"])
        figures["test_accuracy_of_best"] = float(best["test_accuracy"])
    if started_ms:
        figures["wall_seconds"] = (now - started_ms) / 1000
    return [(STUDY_METRICS_PREFIX + k, v, now, 0) for k, v in figures.items() if v == v]


def finish_study(
    config: StudyConfig,
    name: str,
    where: Locations,
    client: MlflowClient,
    journal: Journal,
    tracker: MlflowTracker,
    status: str,
    patience_s: float,
    reporter: ReportProcess,
) -> tuple[pd.DataFrame, list[str]]:
    """The end of a study: orphan sweep, leaderboard, report (in ``reporter``'s process) beside
    the pictures, parent status; what MLflow can't take is spooled. Returns the leaderboard and
    the notes a user should read."""
    board = pd.DataFrame()
    notes: list[str] = []
    if journal.flush(timeout_s=patience_s):
        try:
            parent = client.get_run(tracker.parent_run_id)
            if status == "KILLED":  # Ctrl+C: 'gradsweep resume' continues these trials
                closed = close_orphans(client, parent, "interrupted by the user", interrupted=True)
            else:
                closed = close_orphans(client, parent, "its trial ended without a final status")
            if closed:
                notes.append(f"{len(closed)} orphaned runs marked FAILED")
            board = leaderboard(client, name)
            journal.log_batch("parent", metrics=headline(board, parent.info.start_time))
            journal.log_text("parent", render(board, "csv"), "leaderboard.csv")
            journal.log_text("parent", render(board, "markdown"), "leaderboard.md")
            if not board.empty:  # built from MLflow and Optuna, now complete
                reporter.start(
                    where.tracking_uri, name, where.output / "reports" / name, where.optuna_storage
                )
            if config.diagnostics.enabled:
                histories = {
                    journal.run_ids[k]: h
                    for k, h in tracker.history.items()
                    if k in journal.run_ids
                }
                log_pictures(
                    client,
                    board,
                    histories,
                    tracker.parent_run_id,
                    config.diagnostics.plots_top,
                    config.diagnostics.plots_diverged,
                )
        except Exception as exc:  # MLflow went away between flush and here
            notes.append(f"leaderboard not written: {exc.__class__.__name__}: {exc}")
        finally:  # the parent run ends only after the report's writes
            problem = reporter.wait()
        if problem:
            notes.append(f"report not written: {problem}")
    journal.set_terminated("parent", status, int(time.time() * 1000))
    spooled = journal.close(close_patience_s=patience_s)
    if spooled:
        notes.append(
            f"MLflow unreachable: {spooled} writes saved to {journal.spool}; "
            f"run 'gradsweep sync' when it is back"
        )
    notes.extend(f"MLflow rejected: {r}" for r in journal.rejected)
    return board, notes
