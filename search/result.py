"""What a study gives back: its result to a script, or, after Ctrl+C, what was interrupted and how
to continue it; both counted from Optuna, which an MLflow outage leaves whole."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd

from search.ask_ahead import StudySearcher
from search.environment import Locations, redact
from search.errors import StudyInterrupted
from search.schema import ROLE_TRIAL
from search.spool import read_spool, spool_path


@dataclass
class StudyResult:
    """What a finished study gives back to a script."""

    study_name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    optuna_storage: str
    leaderboard: pd.DataFrame
    output_dir: Path
    seconds: float
    notes: list[str] = field(default_factory=list)  # what a user should know (spooled writes, ...)
    ran: bool = True  # False: a resume found nothing left to run and changed nothing
    finished: int = 0  # trials Optuna holds as finished (the leaderboard may lack them: spooled)
    spooled: int = 0  # MLflow writes waiting in the spool file for 'gradsweep sync'


def interruption(
    storage: optuna.storages.BaseStorage,
    study: str,
    searcher: StudySearcher | None,
    num_samples: int,
    role: str,
    where: Locations,
) -> StudyInterrupted:
    """After Ctrl+C: no Optuna trial left RUNNING (a search's go back to WAITING, which resume
    continues; a confirmation's end FAIL), and what to tell the user."""
    stopped = searcher.interrupt(retry=role == ROLE_TRIAL) if searcher is not None else []
    asked = searcher.asked if searcher is not None else 0
    finished = _finished_trials(storage, study)
    if finished is None:  # the storage went away: say what is known
        finished = asked - len(stopped)
    interrupted = StudyInterrupted(study, finished, len(stopped), max(0, num_samples - asked))
    interrupted.resume_flags = ["--tracking-uri", str(redact(where.tracking_uri))]
    interrupted.resumable = role == ROLE_TRIAL
    return interrupted


def study_result(
    name: str,
    where: Locations,
    experiment_id: str,
    parent_run_id: str,
    board: pd.DataFrame,
    notes: list[str],
    t0: float,
) -> StudyResult:
    """What a run, resume or confirmation of study ``name`` gives back, timed from ``t0``."""
    return StudyResult(
        study_name=name,
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        tracking_uri=where.tracking_uri,
        optuna_storage=where.optuna_storage,
        leaderboard=board,
        output_dir=where.output,
        seconds=time.perf_counter() - t0,
        notes=notes,
        finished=_finished_trials(where.optuna_storage, name) or 0,
        spooled=_spooled(spool_path(where.output, name)),
    )


def _finished_trials(storage: str | optuna.storages.BaseStorage, study: str) -> int | None:
    """Trials of ``study`` in a final state, from Optuna (which an MLflow outage leaves whole);
    None when the storage can't be read."""
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except Exception:
        return None
    return sum(t.state.is_finished() for t in trials)


def _spooled(path: Path) -> int:
    """How many writes a spool file holds (its headers and study ends aside)."""
    if not path.exists():
        return 0
    return sum("op" in line for line in read_spool(path))
