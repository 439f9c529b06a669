"""Picking a study up after its driver died: what finished, what to resume, what to close.

The Optuna study is the record of which configurations exist; MLflow holds what each attempt
logged; Ray holds the checkpoints. Resuming reconciles the three instead of unpickling Ray's
experiment state (``Tuner.restore`` would execute pickles from the storage path):

- Optuna trials COMPLETE, PRUNED or FAIL are finished and never run again;
- Optuna trials still RUNNING (driver killed) or WAITING with ``gradsweep.interrupted`` (put
  back after Ctrl+C) were
  interrupted: each runs again under its own number and parameters, from its last checkpoint, in
  a new child run tagged ``gradsweep.resumed`` (and ``gradsweep.resumed_from``, the latest
  interrupted attempt's run, when that reached MLflow);
- a child run left RUNNING is closed: KILLED ``interrupted`` when its trial resumes, or the status
  matching its Optuna trial when only the final MLflow write was lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from optuna.trial import TrialState

from search.checkpoints import CHECKPOINT_FILE, RESUME_KEY
from search.leaderboard import child_runs
from search.schema import (
    FROM_OPTUNA,
    INTERRUPTED,
    INTERRUPTED_ATTR,
    ORPHANED,
    OUTCOME_TAG,
    OUTCOMES,
    RAY_TRIAL_PATH_TAG,
    REASON_TAG,
    RESUMED_FROM_TAG,
    RESUMED_TAG,
    TRIAL_NUMBER_TAG,
)


@dataclass
class ResumePlan:
    """What a resume will do."""

    finished: int
    #: Optuna trial number -> extra config constants (the checkpoint to continue from)
    resume: dict[int, dict[str, str]] = field(default_factory=dict)
    #: Optuna trial number -> tags of its new child run
    tags: dict[int, dict[str, str]] = field(default_factory=dict)


def latest_checkpoint(trial_path: str) -> str | None:
    """The newest ``checkpoint_*`` directory of a Ray trial that holds a complete checkpoint."""
    if not trial_path or not Path(trial_path).is_dir():
        return None
    found = sorted(
        p for p in Path(trial_path).glob("checkpoint_*") if (p / CHECKPOINT_FILE).is_file()
    )
    return str(found[-1]) if found else None


def _close(client: MlflowClient, run: Run, status: str, outcome: str, reason: str) -> None:
    client.log_batch(
        run.info.run_id, tags=[RunTag(OUTCOME_TAG, outcome), RunTag(REASON_TAG, reason)]
    )
    client.set_terminated(run.info.run_id, status=status)


def close_orphans(
    client: MlflowClient, parent: Run, reason: str, interrupted: bool = False
) -> list[str]:
    """Close every child run still RUNNING with ``reason``: FAILED ``orphaned``, or (after a
    Ctrl+C) KILLED ``interrupted``, which resume continues and the leaderboard hides."""
    status, outcome = ("KILLED", INTERRUPTED) if interrupted else ("FAILED", ORPHANED)
    closed = []
    for run in child_runs(client, parent):
        if run.info.status == "RUNNING":
            _close(client, run, status, outcome, reason)
            closed.append(run.info.run_id)
    return closed


def find_checkpoint(ray_root: Path, study: str, number: int, trial_path: str = "") -> str | None:
    """The newest checkpoint of Optuna trial ``number``: in its run's Ray trial directory, else in
    any ``t<number>_*`` trial directory of this study's Ray experiments (the run may never have
    reached MLflow before the driver died)."""
    found = latest_checkpoint(trial_path)
    if found:
        return found
    experiments = [ray_root / study, *ray_root.glob(f"{study}-resume-*")]  # this study's only
    candidates = [
        c
        for e in experiments
        for d in e.glob(f"t{number:03d}_*")
        if (c := latest_checkpoint(str(d)))
    ]
    return max(candidates, key=lambda c: Path(c).stat().st_mtime) if candidates else None


def plan_resume(
    client: MlflowClient, parent: Run, study: optuna.Study, ray_root: Path
) -> ResumePlan:
    """Close the stale child runs and list the interrupted trials with their checkpoints."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    plan = ResumePlan(finished=sum(t.state in FROM_OPTUNA for t in trials.values()))
    interrupted = {
        n
        for n, t in trials.items()
        if t.state == TrialState.RUNNING
        or (t.state == TrialState.WAITING and t.user_attrs.get(INTERRUPTED_ATTR))
    }  # an enqueued trial never asked also WAITs: Optuna's ask() hands it out as new
    attempts: dict[int, Run] = {}  # trial number -> its latest interrupted attempt's run
    for run in child_runs(client, parent):
        number = int(run.data.tags.get(TRIAL_NUMBER_TAG, -1))
        trial = trials.get(number)
        if run.info.status == "RUNNING":
            if trial is None:
                _close(client, run, "FAILED", ORPHANED, "no Optuna trial matches this run")
                continue
            if trial.state in FROM_OPTUNA:
                outcome = FROM_OPTUNA[trial.state]
                reason = "closed on resume: the driver died before writing this final status"
                _close(client, run, OUTCOMES[outcome][0], outcome, reason)
                continue
            reason = "driver lost; the trial resumed in a new run"
            _close(client, run, "KILLED", INTERRUPTED, reason)
        elif number not in interrupted or run.data.tags.get(OUTCOME_TAG) != INTERRUPTED:
            continue  # finished, or an attempt of a trial that finished later
        if number not in attempts or run.info.start_time > attempts[number].info.start_time:
            attempts[number] = run
    for number in interrupted:
        run = attempts.get(number)  # None: asked by Optuna, but its run never reached MLflow
        path = run.data.tags.get(RAY_TRIAL_PATH_TAG, "") if run else ""
        checkpoint = find_checkpoint(ray_root, study.study_name, number, path)
        plan.resume[number] = {RESUME_KEY: checkpoint} if checkpoint else {}
        plan.tags[number] = {RESUMED_TAG: "true"}
        if run is not None:
            plan.tags[number][RESUMED_FROM_TAG] = run.info.run_id
    return plan
