"""Confirmation runs: the best configuration of each level of a factor, retrained with fresh seeds
and scored on the test split.

Choosing the best configuration on validation and reporting that same number is biased upwards
(the winner's curse; Cawley & Talbot, "On Over-fitting in Model Selection and Subsequent
Selection Bias in Performance Evaluation", JMLR 2010). So claims about *which activation is best
when each is tuned* use confirmation runs: the configuration each level won the search with,
trained again with seeds the search never used, judged on held-out test data. They are child runs
of the study's parent tagged ``gradsweep.role=confirmation``; their trials live in an Optuna
study of their own (``NAME-confirm``), so the search's study is left as it was.
"""

from __future__ import annotations

import math
import time
from typing import Any, get_args

import pandas as pd

from search.analysis import observations
from search.errors import UserError
from search.leaderboard import leaderboard
from search.result import StudyResult, study_result
from search.schema import CONFIRMED_TAG, ROLE_CONFIRMATION, ROLE_TRIAL
from search.study import continue_study, open_study
from search.trainable import run_trial
from search.tuner import Trainable
from spaces import StudyConfig
from spaces.config import ConfirmConfig

#: Factors a confirmation can pick the best configuration per level of (the config's choices).
CONFIRMABLE: tuple[str, ...] = get_args(ConfirmConfig.model_fields["factor"].annotation)


def best_per_level(board: pd.DataFrame, factor: str) -> pd.DataFrame:
    """The leaderboard row of the best configuration (mean best validation accuracy over its
    seeds, in the search) of each level of ``factor``."""
    obs, _ = observations(board)
    search = obs[obs["role"] == ROLE_TRIAL]
    if search.empty:
        return board.iloc[0:0]
    means = search.groupby("cell").agg(
        score=("best_val_accuracy", "mean"), trial=("trial", "first"), level=(factor, "first")
    )
    best = means.sort_values("score", ascending=False).groupby("level", dropna=False).head(1)
    rows = board.set_index("run_id").loc[best["trial"]].reset_index()
    return rows.sort_values(factor).reset_index(drop=True)


def _point(row: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """The design point that reruns ``row``'s configuration under ``config``'s search space."""
    point: dict[str, Any] = {"activation": row["activation"], "init": row["init"], "bn": row["bn"]}
    if not isinstance(config.search.lr, float):
        point["lr"] = float(row["lr"])
    alpha = row.get("alpha")
    if isinstance(alpha, float) and not math.isnan(alpha):
        choice = config.search.activations[row["activation"]]
        if choice.alpha is not None and not isinstance(choice.alpha, float | tuple):
            point[f"{row['activation']}_alpha"] = alpha
    for name in ("depth", "width"):
        if len(config.model.choices(name)) > 1:
            point[name] = int(row[name])
    return point


def confirm_study(
    study_name: str,
    *,
    seeds: int = 5,
    factor: str = "activation",
    tracking_uri: str | None = None,
    address: str | None = None,
    progress: bool = False,
    close_patience_s: float = 60.0,
    trainable: Trainable = run_trial,
) -> StudyResult:
    """Retrain the best configuration of each level of ``factor`` with ``seeds`` fresh seeds."""
    if factor not in CONFIRMABLE:
        raise UserError(f"--factor: {factor!r} is not one of {', '.join(CONFIRMABLE)}")
    if not 2 <= seeds <= 64:
        raise UserError(f"--seeds: {seeds} must be between 2 and 64 (they are the replicates)")
    t0 = time.perf_counter()
    client, parent, config, where, address = open_study(study_name, tracking_uri, address)
    board = leaderboard(client, study_name)
    chosen = best_per_level(board, factor)
    if chosen.empty:
        raise UserError(
            f"--study {study_name}: no trial ran every epoch, so there is nothing to confirm"
        )
    used = [s for cells in board["per_seed"] for s in cells]
    first = max([config.training.seed + config.training.seeds - 1, *used]) + 1
    points = [_point(row, config) for row in chosen.to_dict("records")]
    fresh = StudyConfig.model_validate(
        {
            **config.model_dump(mode="json"),
            "design": points,
            "num_samples": len(points),
            "training": {**config.training.model_dump(mode="json"), "seeds": seeds, "seed": first},
            "search": {**config.search.model_dump(mode="json"), "enqueue": []},
            "scheduler": {"name": "fifo"},  # every confirmation runs every epoch
            "budget_minutes": None,
            "confirm": None,
        }
    )
    board, notes = continue_study(
        fresh,
        study_name,
        parent,
        where,
        tag=CONFIRMED_TAG,
        num_samples=len(points),
        run_name=f"{study_name}-confirm-{time.strftime('%H%M%S')}",
        address=address,
        progress=progress,
        close_patience_s=close_patience_s,
        trainable=trainable,
        optuna_study=f"{study_name}-confirm",
        role=ROLE_CONFIRMATION,
    )
    notes.insert(
        0,
        f"confirmed: the best configuration of each of {len(points)} {factor} levels, "
        f"retrained with seeds {first}..{first + seeds - 1} (never used by the search), "
        "scored on the test split",
    )
    return study_result(
        study_name, where, parent.info.experiment_id, parent.info.run_id, board, notes, t0
    )
