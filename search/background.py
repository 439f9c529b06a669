"""The study report, built in a second process beside the pictures at the end of a study.

A study ends with two independent pieces of single-threaded matplotlib work: the gradient-flow
pictures (drawn from the tracker's in-memory histories) and the report (read back from MLflow and
Optuna). Threads would take turns on the GIL, so the report goes to a child process instead, and
the two use both cores while Ray stops.

The child is **forked before the study starts**: the driver then has every module imported (no
import cost in the child) but no Ray session, journal thread or open store connection of this
study yet, so nothing the child inherits is in use by another thread. It then sleeps on a pipe
until the parent asks for the report (or closes it). Where ``fork`` is not available, or the child
is gone, the report is built in-process, as before.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from search.report import build_report

#: How long close() waits for a child that was asked to stop before ending it by its PID.
STOP_GRACE_S = 5.0


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
    gc.disable()  # until what we inherited is frozen (below)
    parent_end.close()  # else the parent's death would never reach us as end-of-file
    # MLflow's telemetry client has a lock and a consumer thread in the parent; neither is safe
    # to use after a fork, and nothing would send its records from here anyway.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
    _forget_inherited_connections()
    # Nothing we inherited is ever collected here: a collection could run the finalizer of an
    # object of a Ray session this process had (or has) and call into Ray from the child.
    gc.freeze()
    gc.enable()
    _warm_up()
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            _build(request)
            conn.send(None)
        except Exception as exc:
            conn.send(f"{exc.__class__.__name__}: {exc}")


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
        self._proc.start()
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

    def wait(self) -> str | None:
        """None when the report was written; otherwise why it wasn't."""
        request, self._request = self._request, None
        if request is None:
            return None
        if self._conn is not None:
            try:
                return self._conn.recv()
            except (EOFError, OSError):  # the child died mid-report: build it here
                self._drop()
        try:
            _build(request)
        except Exception as exc:
            return f"{exc.__class__.__name__}: {exc}"
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
            if self._proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.join()
            self._proc = None

    def __enter__(self) -> ReportProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
