"""The study's searcher in a process of its own, a few trials ahead of Ray Tune.

Every trial's ask and tell pass through Tune's driver, one event loop; TPE's ask over a large
study costs it 30-60 ms of CPU (benchmarks/ask_cost.py), which alone caps a study at 15-30
completions per second however large the cluster (benchmarks/README.md, "Scale"). With
``searcher.ask_ahead: N`` the same searcher (:func:`search.tuner.make_searcher`) runs in a child
process over the same Optuna storage and keeps N trials asked before Tune wants them: the driver
hands one out, and sends each trial's end without waiting for the tell.

What that changes for the search, the price of a driver that keeps up:

- up to N trials wait asked (RUNNING in Optuna) for a slot: TPE's constant liar counts them as
  running, and a suggestion is drawn from what had been told up to N asks before Tune wants it;
- trials asked ahead but never handed out (the time budget ran out, Ctrl+C) go back to WAITING,
  unmarked: the study's next ask (a resume's) hands them out with their parameters;
- a tell lands shortly after Tune's end of the trial: whatever reads what was told (the told
  trials after Ctrl+C, the end of the study) first waits for the tells sent before it.

Ctrl+C is the driver's to handle: the child ignores SIGINT, and the driver asks it to put the
unfinished trials back (:meth:`AskAheadSearch.interrupt`) as the in-driver searcher would. A
child that dies ends the study with an error; its trials stay RUNNING, which resume continues.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from ray.tune.search import Searcher

from search.searcher import ResumingOptunaSearch, sigint_deferred
from search.stores import optuna_storage
from search.tuner import make_searcher
from spaces import StudyConfig
from spaces.objectives import metrics_and_modes

log = logging.getLogger(__name__)
#: How long :meth:`AskAheadSearch.close` waits for the child to put its trials back and end.
CLOSE_TIMEOUT_S = 30.0


class SearcherProcessError(RuntimeError):
    """The searcher process failed to start, or ended in the middle of the study."""


class AskAheadSearch(Searcher):
    """A Tune searcher whose asks and tells run in a child process (see module docstring).

    Same surface as :class:`~search.searcher.ResumingOptunaSearch` for gradsweep (``asked``,
    ``told``, ``close_unfinished``, ``interrupt``) plus :meth:`close`, which ends the child.
    ``limit`` bounds what is ever asked: the study's trials, so a study that runs to its end
    leaves nothing asked ahead.
    """

    def __init__(
        self,
        config: StudyConfig,
        *,
        study_name: str,
        storage_url: str,
        resume: dict[int, dict[str, Any]] | None,
        limit: int,
    ) -> None:
        metrics, modes = metrics_and_modes(config.objectives)
        multi = config.multi_objective
        super().__init__(metric=metrics if multi else metrics[0], mode=modes if multi else "max")
        context = multiprocessing.get_context("spawn")  # the driver runs Ray's threads: no fork
        self._conn, child = context.Pipe()
        args = (child, config, study_name, storage_url, resume, config.searcher.ask_ahead, limit)
        self._process = context.Process(target=serve, args=args, name="gradsweep-searcher")
        self._process.daemon = True  # never outlives the driver
        self._process.start()
        child.close()
        self._started = False
        self._keys: dict[str, str] = {}  # Tune trial id -> the child's key of its asked trial
        self._latest: dict[str, dict[str, Any]] = {}  # Tune trial id -> its latest value, epoch

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher with the Tuner (``tuner.pkl``); the process stays here."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_conn", "_process")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _conn=None, _process=None)  # detached: see ``_call``

    # -- what Tune calls ----------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        with sigint_deferred():  # handed out and recorded as one step
            key, params = self._call("take")
            if isinstance(params, dict):
                self._keys[trial_id] = key
            return params

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Kept here, sent with the trial's end (the in-driver searcher keeps it too)."""
        value = result.get(self.metric) if isinstance(self.metric, str) else None
        if value is not None and trial_id in self._keys:
            epoch = result.get("epoch", result.get("training_iteration", 0))
            self._latest[trial_id] = {self.metric: value, "epoch": epoch}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        key = self._keys.get(trial_id)
        if key is None:
            return
        ended = {k: v for k, v in result.items() if k != "config"} if result else result
        with sigint_deferred():  # a message cut in half would end the searcher
            self._send("complete", key, self._latest.pop(trial_id, None), ended, error)

    def save(self, checkpoint_path: str) -> None:
        """Tune's snapshot of this searcher: which trial is which; the study is in Optuna."""
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"keys": self._keys}, file)

    # -- what gradsweep calls ------------------------------------------------------------------

    @property
    def asked(self) -> int:
        """How many trials this searcher has handed out (not those still asked ahead)."""
        return len(self._keys)

    @property
    def told(self) -> set[str]:
        """Tune trial ids whose end has been told to Optuna (or closed); waits for the tells."""
        ids = {key: trial_id for trial_id, key in self._keys.items()}
        return {ids[key] for key in self._call("told") if key in ids}

    def close_unfinished(self) -> None:
        """Trials asked ahead go back; those Tune stopped unfinished are told PRUNED."""
        self._call("close_unfinished")

    def interrupt(self, retry: bool = True) -> list[int]:
        """After Ctrl+C, as :meth:`ResumingOptunaSearch.interrupt`; trials asked ahead go back
        to WAITING unmarked (they never started)."""
        return self._call("interrupt", retry)

    def close(self) -> None:
        """Trials still asked ahead go back to WAITING, and the child ends."""
        if self._process is None:
            return
        if self._process.is_alive():
            try:
                self._call("stop")
            except SearcherProcessError as exc:
                log.warning("%s", exc)
        self._conn.close()
        self._process.join(CLOSE_TIMEOUT_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()

    # -- the pipe ------------------------------------------------------------------------------

    def _send(self, *message: Any) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, EOFError, OSError) as exc:
            raise self._ended() from exc

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._ended() from exc

    def _call(self, *message: Any) -> Any:
        """The child's answer to ``message``; Ctrl+C waits for it, so none is left unread."""
        if self._process is None:
            raise SearcherProcessError(
                "a searcher unpickled from Tune's snapshot has no process: "
                "gradsweep continues a study from Optuna ('gradsweep resume')"
            )
        with sigint_deferred():
            if not self._started:
                status, value = self._receive()
                if status == "error":
                    raise SearcherProcessError(f"the searcher process could not start: {value}")
                self._started = True
            self._send(*message)
            status, value = self._receive()
        if status == "error":
            raise SearcherProcessError(f"the searcher process failed to {message[0]}: {value}")
        return value

    def _ended(self) -> SearcherProcessError:
        self._process.join(1.0)
        return SearcherProcessError(
            f"the searcher process ended (exit code {self._process.exitcode}); "
            "its trials stay RUNNING in Optuna, and 'gradsweep resume' continues them"
        )


# -- the child ---------------------------------------------------------------------------------


def serve(
    conn: Connection,
    config: StudyConfig,
    study_name: str,
    storage_url: str,
    resume: dict[int, dict[str, Any]] | None,
    ahead: int,
    limit: int,
) -> None:
    """The child: opens the searcher, then answers the driver and asks ahead between requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's (module docstring)
    try:
        storage = optuna_storage(storage_url)
        searcher = make_searcher(config, study_name=study_name, storage=storage, resume=resume)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", None))
    _Server(searcher, ahead, limit).run(conn)


class _Server:
    """The searcher's side of the pipe: ``ready`` holds the trials asked ahead, in order."""

    def __init__(self, searcher: ResumingOptunaSearch, ahead: int, limit: int) -> None:
        self.searcher = searcher
        self.ahead = ahead
        self.left = limit  # asks still allowed
        self.ready: deque[tuple[str, Any]] = deque()
        self.count = 0
        self.failing = False  # an ask ahead failed: the next take asks, and says why

    def run(self, conn: Connection) -> None:
        while True:
            while self._ahead_wanted() and not conn.poll():
                try:
                    self.ready.append(self._ask())
                except Exception as exc:
                    log.warning("could not ask a trial ahead: %s", exc)
                    self.failing = True
            try:
                op, *args = conn.recv()
            except EOFError:  # the driver is gone: its trials stay as they are (resume)
                return
            try:
                value = getattr(self, f"do_{op}")(*args)
            except Exception as exc:
                if op == "complete":  # nobody waits for it; the searcher's tell never raises
                    log.warning("could not tell a trial's end: %s", exc)
                    continue
                value, status = f"{type(exc).__name__}: {exc}", "error"
            else:
                status = "ok"
            if op != "complete":
                conn.send((status, value))
            if op == "stop":
                return

    def _ahead_wanted(self) -> bool:
        return not self.failing and self.left > 0 and len(self.ready) < self.ahead

    def _ask(self) -> tuple[str, Any]:
        key = f"a{self.count}"
        self.count += 1
        params = self.searcher.suggest(key)  # a trial left half-asked is the searcher's to close
        self.left -= 1
        return key, params

    def _release(self) -> None:
        while self.ready:
            key, params = self.ready.popleft()
            if isinstance(params, dict):
                self.searcher.release(key)

    def do_take(self) -> tuple[str, Any]:
        if self.ready:
            return self.ready.popleft()
        if self.left <= 0:
            raise RuntimeError("asked for more trials than the study holds")
        asked = self._ask()
        self.failing = False
        return asked

    def do_complete(
        self, key: str, latest: dict[str, Any] | None, result: dict[str, Any] | None, error: bool
    ) -> None:
        if latest is not None:
            self.searcher.on_trial_result(key, latest)
        self.searcher.on_trial_complete(key, result, error)

    def do_told(self) -> set[str]:
        return self.searcher.told

    def do_close_unfinished(self) -> None:
        self._release()
        self.searcher.close_unfinished()

    def do_interrupt(self, retry: bool) -> list[int]:
        self._release()
        return self.searcher.interrupt(retry)

    def do_stop(self) -> None:
        self._release()


#: The searcher of a study's rounds: in the driver, or in a process of its own.
StudySearcher = ResumingOptunaSearch | AskAheadSearch


def open_searcher(
    config: StudyConfig,
    *,
    study_name: str,
    storage: Any,
    storage_url: str,
    resume: dict[int, dict[str, Any]] | None,
    limit: int,
) -> StudySearcher:
    """The study's searcher: ``searcher.ask_ahead`` trials ahead in a process of its own
    (:meth:`AskAheadSearch.close` ends it), or, when 0, in the driver over ``storage``."""
    if config.searcher.ask_ahead:
        return AskAheadSearch(
            config, study_name=study_name, storage_url=storage_url, resume=resume, limit=limit
        )
    return make_searcher(config, study_name=study_name, storage=storage, resume=resume)
