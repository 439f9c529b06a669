"""The study report, built in a second process beside the pictures at the end of a study.

A study ends with two independent pieces of single-threaded matplotlib work: the gradient-flow
pictures (drawn from the tracker's in-memory histories) and the report (read back from MLflow and
Optuna). Threads would take turns on the GIL, so the report goes to a child process instead, and
the two use both cores while Ray stops.

The child is **forked before the study starts**: the driver then has every module imported (no
import cost in the child) but no Ray session, journal thread or open store connection of this
study yet. (A script that called ``ray.init`` itself, or the tests, fork a process that runs Ray:
the child never calls into it, and no inherited object is ever collected there.) It then sleeps on
a pipe until the parent asks for the report (or closes it). Where ``fork`` is not available, or
the child is gone, the report is built in-process, as before.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from search.report import build_report

#: How long close() waits for a child that was asked to stop before ending it by its PID.
STOP_GRACE_S = 5.0
#: How long wait() waits for a report before ending its process: against a hung child, far above
#: what a report takes (benchmarks/README.md).
REPORT_TIMEOUT_S = 600.0


def _one_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"


def _build(request: dict[str, Any]) -> None:
    build_report(
        MlflowClient(tracking_uri=request["tracking_uri"]),
        request["study_name"],
        Path(request["directory"]),
        optuna_storage=request["optuna_storage"],
    )


def _warm_up() -> None:
    """What the report loads on first use -- Optuna's importance (scikit-learn), its plots,
    matplotlib's fonts on the first draw -- now, while the study starts, not when it is due."""
    import io

    import matplotlib.pyplot as plt
    import optuna.importance
    import optuna.visualization.matplotlib  # noqa: F401

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.set_title("warm-up")
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def _forget_inherited_connections() -> None:
    """SQLAlchemy's rule for a forked child: pools it inherited are dropped without closing
    their connections (they belong to the parent), so the child opens its own."""
    import sqlalchemy

    for obj in gc.get_objects():
        if isinstance(obj, sqlalchemy.engine.Engine):
            obj.dispose(close=False)


def _serve(conn: Connection, parent_end: Connection) -> None:
    """The child: one report per request, an error line back (None when it went well)."""
    parent = os.getppid()
    parent_end.close()  # else the parent's death would never reach us as end-of-file
    # MLflow's telemetry client has a lock and a consumer thread in the parent; neither is safe
    # to use after a fork, and nothing would send its records from here anyway.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
    _forget_inherited_connections()
    # Started with collection off (see ReportProcess); nothing we inherited is ever collected
    # here: that could run the finalizer of an object of a Ray session of the parent and call
    # into a Ray core worker whose threads this process does not have.
    gc.freeze()
    gc.enable()
    with contextlib.suppress(Exception):  # only a head start: the report loads them anyway
        _warm_up()
    while True:
        try:
            # A copy of the pipe's other end in some later fork of the parent would hide its
            # death from recv(): look at who our parent is, too.
            while not conn.poll(1.0):
                if os.getppid() != parent:
                    return
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            _build(request)
            answer = None
        except Exception as exc:
            answer = _one_line(exc)
        with contextlib.suppress(OSError):  # the parent died meanwhile
            conn.send(answer)


class ReportProcess:
    """A forked report builder for one study (see module docstring). Use as a context manager.

    ``start(...)`` hands it the report to build; ``wait()`` returns None when it was written, or
    why not. Without a usable child both run the report in this process.
    """

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._proc: Any = None
        self._request: dict[str, Any] | None = None
        if sys.platform != "linux":  # fork is only safe enough, and cheap, on Linux
            return
        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe()
        self._proc = context.Process(
            target=_serve, args=(child_end, parent_end), name="gradsweep-report", daemon=True
        )
        # The child starts with garbage collection off, until it froze what it inherited.
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._proc.start()
        finally:
            if enabled:
                gc.enable()
        child_end.close()
        self._conn = parent_end

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(
        self, tracking_uri: str, study_name: str, directory: Path, optuna_storage: str | None
    ) -> None:
        """Ask for the report; returns at once when a child builds it."""
        self._request = {
            "tracking_uri": tracking_uri,
            "study_name": study_name,
            "directory": str(directory),
            "optuna_storage": optuna_storage,
        }
        if self._conn is not None:
            try:
                self._conn.send(self._request)
                return
            except OSError:  # the child died: build it here instead
                self._drop()

    def wait(self, timeout_s: float = REPORT_TIMEOUT_S) -> str | None:
        """None when the report was written; otherwise why it wasn't, in one line."""
        request, self._request = self._request, None
        if request is None:
            return None
        if self._conn is not None:
            deadline = time.monotonic() + timeout_s
            try:
                while not self._conn.poll(0.2):
                    if not self._proc.is_alive():
                        raise EOFError
                    if time.monotonic() > deadline:
                        self._kill()
                        return f"its process gave no answer within {timeout_s:g} s"
                return self._conn.recv()
            except (EOFError, OSError):  # the child died mid-report: build it here
                self._drop()
        try:
            _build(request)
        except Exception as exc:
            return _one_line(exc)
        return None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Stop the child: asked first, then ended by its PID if it does not go."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._drop()
        if self._proc is not None:
            self._proc.join(STOP_GRACE_S)
            self._kill()

    def _kill(self) -> None:
        """End the child by its PID (if still there) and reap it."""
        self._drop()
        if self._proc is not None:
            if self._proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.join()
            self._proc = None

    def __enter__(self) -> ReportProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
