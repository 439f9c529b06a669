"""The study's searcher in processes of its own, a few trials ahead of Ray Tune.

Every trial's ask and tell pass through Tune's driver, one event loop; TPE's ask over a large
study costs it 30-60 ms of CPU (benchmarks/ask_cost.py), which alone caps a study at 15-30
completions per second however large the cluster (benchmarks/README.md, "Asking ahead"). With
``searcher.ask_ahead: N`` the same searcher (:func:`search.tuner.make_searcher`) runs in a child
process over the same Optuna storage and keeps N trials asked before Tune wants them: the driver
hands one out, and sends each trial's end without waiting for the tell. One such process asks
one trial at a time; ``searcher.processes: P`` runs P of them, taken from in turn, each with its
own sampler seed (else they would draw the same start-up trials) and its share of the trials.

What that changes for the search, the price of a driver that keeps up:

- up to N x P trials wait asked (RUNNING in Optuna) for a slot: TPE's constant liar counts them
  as running, and a suggestion is drawn from what had been told up to N x P asks before it runs;
- trials asked ahead but never handed out (the time budget ran out, Ctrl+C) go back to WAITING,
  unmarked: the study's next ask (a resume's) hands them out with their parameters;
- a tell lands shortly after Tune's end of the trial: whatever reads what was told (the told
  trials after Ctrl+C, the end of the study) first waits for the tells sent before it;
- the study's enqueued points (``search.enqueue``, ``design``) are enqueued by the first process
  before any other starts, so they are still asked before any other trial (a design runs each of
  its cells once); a grid needs one process.

Ctrl+C is the driver's to handle: the children ignore SIGINT, and the driver asks them to put
the unfinished trials back (:meth:`AskAheadSearch.interrupt`) as the in-driver searcher would. A
child that dies ends the study with an error; its trials stay RUNNING, which resume continues.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import warnings
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from ray.tune.search import Searcher

from search.schema import OBJECTIVE
from search.searcher import ResumingOptunaSearch, sigint_deferred
from search.stores import optuna_storage
from search.tuner import MODE, make_searcher
from spaces import StudyConfig
from spaces.objectives import metrics_and_modes

log = logging.getLogger(__name__)
#: How long :meth:`AskAheadSearch.close` waits for the child to put its trials back and end.
CLOSE_TIMEOUT_S = 30.0
_LOGGERS = ("optuna", "ray", "ray.tune", "sqlalchemy")  # whose levels the children take


class SearcherProcessError(RuntimeError):
    """A searcher process failed to start, or ended in the middle of the study."""


class _Child:
    """One searcher process and the driver's end of its pipe: requests in order, one answer
    to each request but ``complete`` (nobody waits for a tell)."""

    def __init__(self, target_args: tuple[Any, ...], index: int) -> None:
        context = multiprocessing.get_context("spawn")  # the driver runs Ray's threads: no fork
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=serve,
            args=(child, _chatter(), *target_args),
            name=f"gradsweep-searcher-{index}",
        )
        self.process.daemon = True  # never outlives the driver
        self.process.start()
        child.close()
        self.started = False

    def send(self, *message: Any) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, EOFError, OSError) as exc:
            raise self._ended() from exc

    def wait_started(self) -> None:
        """Until the child has opened its searcher (and enqueued the study's points)."""
        with sigint_deferred():
            if not self.started:
                status, value = self._receive()
                if status == "error":
                    raise SearcherProcessError(f"a searcher process could not start: {value}")
                self.started = True

    def call(self, *message: Any) -> Any:
        """The child's answer to ``message``; Ctrl+C waits for it, so none is left unread."""
        self.wait_started()
        with sigint_deferred():
            self.send(*message)
            status, value = self._receive()
        if status == "error":
            raise SearcherProcessError(f"a searcher process failed to {message[0]}: {value}")
        return value

    def close(self) -> None:
        """Its trials asked ahead go back to WAITING, and it ends."""
        if self.process.is_alive():
            try:
                self.call("stop")
            except SearcherProcessError as exc:
                log.warning("%s", exc)
        self.conn.close()
        self.process.join(CLOSE_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()

    def _receive(self) -> tuple[str, Any]:
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise self._ended() from exc

    def _ended(self) -> SearcherProcessError:
        self.process.join(1.0)
        return SearcherProcessError(
            f"a searcher process ended (exit code {self.process.exitcode}); "
            "its trials stay RUNNING in Optuna, and 'gradsweep resume' continues them"
        )


class AskAheadSearch(Searcher):
    """A Tune searcher whose asks and tells run in child processes (see module docstring).

    Same surface as :class:`~search.searcher.ResumingOptunaSearch` for gradsweep (``asked``,
    ``told``, ``close_unfinished``, ``interrupt``) plus :meth:`close`, which ends the children.
    ``limit`` bounds what is ever asked: the study's trials, so a study that runs to its end
    leaves nothing asked ahead. Trials are taken from the ``searcher.processes`` children in
    turn, each asking its share of ``limit``.
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
        multi = config.multi_objective  # as make_searcher's
        super().__init__(metric=metrics if multi else OBJECTIVE, mode=modes if multi else MODE)
        n, ahead = config.searcher.processes, config.searcher.ask_ahead
        shares = [limit // n + (i < limit % n) for i in range(n)]  # what turns give each
        self._children: list[_Child] = []
        for i, share in enumerate(shares):
            self._children.append(
                _Child((*_share(config, resume, i, n), study_name, storage_url, ahead, share), i)
            )
            if i == 0 and n > 1:  # it creates the study (and enqueues its points) alone
                self._children[0].wait_started()
        self._next = 0  # the child the next trial is taken from
        #: Tune trial id -> (child, the child's key of its asked trial)
        self._keys: dict[str, tuple[int, str]] = {}
        self._latest: dict[str, dict[str, Any]] = {}  # running trial's id -> its last result

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher with the Tuner (``tuner.pkl``); the processes stay here."""
        return {k: v for k, v in self.__dict__.items() if k != "_children"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _children=[])  # detached: see ``_each``

    # -- what Tune calls ----------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        child = self._each()[self._next]
        with sigint_deferred():  # handed out and recorded as one step
            key, params = child.call("take")
            if isinstance(params, dict):
                self._keys[trial_id] = (self._next, key)
                self._next = (self._next + 1) % len(self._children)
            return params

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Kept here, and sent with the trial's end for the searcher to read as it would have."""
        if trial_id in self._keys:
            self._latest[trial_id] = result

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._keys:
            return
        index, key = self._keys[trial_id]
        with sigint_deferred():  # a message cut in half would end the searcher
            latest = _sent(self._latest.pop(trial_id, None))
            self._each()[index].send("complete", key, latest, _sent(result), error)

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
        return {
            ids[index, key]
            for index, child in enumerate(self._each())
            for key in child.call("told")
            if (index, key) in ids
        }

    def close_unfinished(self) -> None:
        """Trials asked ahead go back; those Tune stopped unfinished are told PRUNED."""
        for child in self._each():
            child.call("close_unfinished")

    def interrupt(self, retry: bool = True) -> list[int]:
        """After Ctrl+C, as :meth:`ResumingOptunaSearch.interrupt`; trials asked ahead go back
        to WAITING unmarked (they never started)."""
        return sorted(n for child in self._each() for n in child.call("interrupt", retry))

    def close(self) -> None:
        """Trials still asked ahead go back to WAITING, and the children end."""
        for child in self._children:
            child.close()

    def _each(self) -> list[_Child]:
        if not self._children:
            raise SearcherProcessError(
                "a searcher unpickled from Tune's snapshot has no process: "
                "gradsweep continues a study from Optuna ('gradsweep resume')"
            )
        return self._children


def _sent(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A result as it goes to a child: without the trial's config, which the searcher has."""
    return {k: v for k, v in result.items() if k != "config"} if result else result


def _share(
    config: StudyConfig, resume: dict[int, dict[str, Any]] | None, index: int, processes: int
) -> tuple[StudyConfig, dict[int, dict[str, Any]] | None]:
    """Child ``index``'s config and trials to resume: its own sampler seed (else every child
    would draw the same random start-up trials), every ``processes``-th trial to resume, and
    the enqueued points (``resume`` None) in the first child only."""
    own = dict(list((resume or {}).items())[index::processes])
    if index == 0:
        return config, None if resume is None else own
    seed = config.searcher.seed + 7919 * index  # a prime apart: no overlap with nearby seeds
    searcher = config.searcher.model_copy(update={"seed": seed})
    return config.model_copy(update={"searcher": searcher}), own


# -- the child ---------------------------------------------------------------------------------


def _chatter() -> tuple[list[Any], dict[str, int]]:
    """The driver's warning filters and library log levels (the CLI's ``quiet``), which a
    spawned child would not inherit."""
    return list(warnings.filters), {n: logging.getLogger(n).level for n in _LOGGERS}


def serve(
    conn: Connection,
    chatter: tuple[list[Any], dict[str, int]],
    config: StudyConfig,
    resume: dict[int, dict[str, Any]] | None,
    study_name: str,
    storage_url: str,
    ahead: int,
    limit: int,
) -> None:
    """The child: opens the searcher, then answers the driver and asks ahead between requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's (module docstring)
    warnings.filters[:], levels = chatter
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
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


#: The searcher of a study's rounds: in the driver, or in processes of its own.
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
    """The study's searcher: ``searcher.ask_ahead`` trials ahead in processes of its own
    (:meth:`AskAheadSearch.close` ends them), or, when 0, in the driver over ``storage``."""
    if config.searcher.ask_ahead:
        return AskAheadSearch(
            config, study_name=study_name, storage_url=storage_url, resume=resume, limit=limit
        )
    return make_searcher(config, study_name=study_name, storage=storage, resume=resume)
