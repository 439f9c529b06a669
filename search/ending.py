"""The end of a study: orphaned runs closed, leaderboard, report and pictures, parent status.

Runs after every Tuner of a study (a first run, a resume, a confirmation), while Ray stops beside
it: the leaderboard is read back from MLflow (what the UI shows), the report is built in the
forked report process (:mod:`search.background`) while the driver draws the gradient pictures,
and whatever MLflow can't take is spooled for ``gradsweep sync``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from search.background import ReportProcess
from search.environment import Locations
from search.journal import Journal
from search.leaderboard import find_parent_run, leaderboard, render
from search.plots import History, log_pictures
from search.resume import close_orphans
from search.schema import OUTCOMES, ROLE_TRIAL, STUDY_METRICS_PREFIX
from search.spool import read_spool
from search.tracking import MlflowTracker
from spaces import StudyConfig

#: The key of a spool line that holds a study's end, for ``gradsweep sync``.
END = "end"


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
    the pictures, parent status; what MLflow can't take is spooled, and so is the end itself
    (``gradsweep sync`` then logs it). Returns the leaderboard and the notes a user should read."""
    board = pd.DataFrame()
    notes: list[str] = []
    ended = False
    tracker.write_open_tables()
    if journal.flush(timeout_s=patience_s):
        try:
            histories = {
                journal.run_ids[k]: h for k, h in tracker.history.items() if k in journal.run_ids
            }
            board = log_end(
                config,
                name,
                where,
                client,
                journal,
                tracker.parent_run_id,
                histories,
                status,
                reporter,
                notes,
            )
            ended = True
        except Exception as exc:  # MLflow went away between flush and here
            notes.append(f"leaderboard not written: {exc.__class__.__name__}: {exc}")
        finally:  # the parent run ends only after the report's writes
            problem = reporter.wait()
        if problem:
            notes.append(f"report not written: {problem}")
    journal.set_terminated("parent", status, int(time.time() * 1000))
    spooled = journal.close(close_patience_s=patience_s)
    if not ended:  # 'gradsweep sync' logs it once the writes before it arrived
        _spool_end(journal, config, name, where, status, tracker.history)
    if spooled or not ended:
        notes.append(
            f"MLflow unreachable: {spooled} writes"
            + ("" if ended else " and the study's end (leaderboard, report, pictures)")
            + f" saved to {journal.spool}; run 'gradsweep sync' when it is back"
        )
    notes.extend(f"MLflow rejected: {r}" for r in journal.rejected)
    return board, notes


def log_end(
    config: StudyConfig,
    name: str,
    where: Locations,
    client: MlflowClient,
    journal: Journal,
    parent_run_id: str,
    histories: dict[str, History],
    status: str,
    reporter: ReportProcess,
    notes: list[str],
) -> pd.DataFrame:
    """What the end of a study logs once MLflow has every write before it: orphans closed,
    headline figures, leaderboard files, the report (started in ``reporter``) and the gradient
    pictures (``histories`` by run id). Returns the leaderboard."""
    parent = client.get_run(parent_run_id)
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
        log_pictures(
            client,
            board,
            histories,
            parent_run_id,
            config.diagnostics.plots_top,
            config.diagnostics.plots_diverged,
        )
    return board


def _spool_end(
    journal: Journal,
    config: StudyConfig,
    name: str,
    where: Locations,
    status: str,
    histories: dict[str, History],
) -> None:
    """Save what the end needs (config, status, the in-memory gradient histories by journal
    key) after the spooled writes, for :func:`finish_spooled`."""
    end = {
        "study": name,
        "status": status,
        "tracking_uri": where.tracking_uri,
        "output_dir": str(where.output),
        "optuna_storage": where.optuna_storage,
        "config": config.model_dump(mode="json"),
        "run_ids": journal.run_ids,
        "histories": histories,
    }
    journal.spool.parent.mkdir(parents=True, exist_ok=True)
    with journal.spool.open("a") as f:
        f.write(json.dumps({END: end}) + "\n")


def finish_spooled(path: Path, tracking_uri: str | None = None) -> list[str]:
    """The ends a spool file still holds, once its writes were replayed (``gradsweep sync``):
    each logged as the study's end would have. The file goes when all are done; returns what
    was logged, one line per study."""
    ends = [line[END] for line in read_spool(path) if END in line]
    done = []
    with ReportProcess() as reporter:
        for end in ends:
            uri = tracking_uri or end["tracking_uri"]
            client = MlflowClient(tracking_uri=uri)
            parent = find_parent_run(client, end["study"])
            run_ids = {**end["run_ids"], "parent": parent.info.run_id}
            histories = {
                run_ids[k]: {int(step): v for step, v in h.items()}
                for k, h in end["histories"].items()
                if k in run_ids
            }
            where = Locations(Path(end["output_dir"]), uri, end["optuna_storage"])
            journal = Journal(client, path.with_suffix(".end"), run_ids=run_ids)
            notes: list[str] = []
            try:
                log_end(
                    StudyConfig.model_validate(end["config"]),
                    end["study"],
                    where,
                    client,
                    journal,
                    parent.info.run_id,
                    histories,
                    end["status"],
                    reporter,
                    notes,
                )
            finally:
                problem = reporter.wait()
                journal.close(close_patience_s=30)
            if journal.spooled or journal.rejected:
                raise RuntimeError(f"{end['study']}: the end's writes did not all arrive")
            if problem:
                notes.append(f"report not written: {problem}")
            done.append(
                f"{end['study']}: leaderboard, report and pictures logged"
                + "".join(f"; {n}" for n in notes)
            )
    path.with_suffix(".end").unlink(missing_ok=True)
    path.unlink()
    return done
