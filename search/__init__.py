"""How many configurations are scheduled and recorded: Ray Tune, Optuna, MLflow, the CLI.

The top floor: imports ``spaces`` and ``trainers``; nothing imports it. The public names load on
first use, so that a Ray worker importing ``search.trainable`` does not pay for MLflow, pandas
and matplotlib, which only the driver needs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.errors import UserError
    from search.leaderboard import leaderboard, render
    from search.result import StudyResult
    from search.study import resume_study, run_study

_WHERE = {
    "UserError": "search.errors",
    "leaderboard": "search.leaderboard",
    "render": "search.leaderboard",
    "StudyResult": "search.result",
    "resume_study": "search.study",
    "run_study": "search.study",
}
__all__ = ["StudyResult", "UserError", "leaderboard", "render", "resume_study", "run_study"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
