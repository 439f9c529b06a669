"""How many configurations are scheduled and recorded: Ray Tune, Optuna, MLflow, the CLI.

The top floor: imports ``spaces`` and ``trainers``; nothing imports it.
"""

from search.errors import UserError
from search.leaderboard import leaderboard, render
from search.study import StudyResult, run_study

__all__ = ["StudyResult", "UserError", "leaderboard", "render", "run_study"]
