"""A one-line live progress bar for the driver: trials done, running, best so far."""

from __future__ import annotations

from typing import Any

from ray import tune
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ProgressCallback(tune.Callback):
    """Rich progress bar fed by Tune's trial events (no per-step printing)."""

    def __init__(self, total: int, study: str) -> None:
        self.best = float("nan")
        self.running = 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("running {task.fields[running]}  best val acc {task.fields[best]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(study, total=total, running=0, best="-")
        self.progress.start()

    def __getstate__(self) -> dict[str, Any]:
        return {"best": self.best, "running": self.running}  # rich's live display stays behind

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running += 1
        self.progress.update(self.task, running=self.running)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        value = result.get("best_val_accuracy")
        if isinstance(value, float) and not value <= self.best:
            self.best = value
            self.progress.update(self.task, best=f"{value:.4f}")

    def _done(self) -> None:
        self.running = max(0, self.running - 1)
        self.progress.update(self.task, advance=1, running=self.running)
        if not self.progress.console.is_terminal:  # a log (a Ray job's): no bar, a line a trial
            task = self.progress.tasks[0]
            self.progress.console.print(
                f"{task.description}: {task.completed:.0f}/{task.total:.0f} trials done, "
                f"running {self.running}, best val acc {task.fields['best']}",
                highlight=False,
                soft_wrap=True,
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done()

    def close(self) -> None:
        """Ends the live display at the study's end: not at the end of each round (Tune's
        ``on_experiment_end``), and also after Ctrl+C, which skips Tune's own end."""
        self.progress.stop()
