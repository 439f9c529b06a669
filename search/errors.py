"""The exceptions the CLI turns into words: a user error (one line, exit 2), an interrupt."""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix: ``str()`` is the one line to print (key or value, allowed)."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl+C (or SIGTERM) during a study, after its end ran: ``str()`` says what was
    interrupted and how to resume. A ``KeyboardInterrupt``, so that it still ends the process
    with exit code 130 wherever it is not caught."""

    def __init__(self, study: str, finished: int, interrupted: int, not_started: int) -> None:
        super().__init__(study)
        self.study, self.finished = study, finished
        self.interrupted, self.not_started = interrupted, not_started
        self.resume_flags: list[str] = []  # where to find the study again (--tracking-uri ...)
        self.resumable = True  # False for a confirmation, which nothing resumes

    @property
    def resume_command(self) -> str:
        return " ".join(["gradsweep resume --study", self.study, *self.resume_flags])

    def __str__(self) -> str:
        said = f"interrupted: study {self.study}: {self.finished} trials finished, "
        if not self.resumable:
            return f"{said}{self.interrupted} interrupted (closed FAIL), {self.not_started} not run"
        return (
            said + f"{self.interrupted} interrupted (resume continues them from their "
            f"checkpoints), {self.not_started} not started\nresume with: {self.resume_command}"
        )
