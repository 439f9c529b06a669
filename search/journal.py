"""An ordered, durable journal of MLflow writes: nothing a trial reported is lost.

Every MLflow write of a study is an operation *as data* (create a run, log a batch, set a
status, log a text artifact) addressed by a *key* (a Tune trial id, or ``"parent"``), not by a run
id: the run id only exists once ``create_run`` went through. One background thread takes the
operations in order, and each run's operations are applied in that order:

- over HTTP(S), different runs' operations go out concurrently from a few sender threads, each
  run's in its order: a remote server's time goes to round trips, and one call at a time caps a
  study at a few trials' writes per second, far fewer than a big cluster finishes. A SQLite or
  file store keeps one sender (the consumer itself): concurrent writers there only contend for
  the file's lock. A flush or close is a barrier: what was queued before it is delivered (or
  given up) first;
- a transient failure (server down or restarting, network, a locked SQLite file) is retried with
  capped exponential backoff, for as long as the study runs; later operations wait behind it in
  memory, so order is kept and Ray Tune's event loop never blocks;
- a permanent failure (MLflow rejected the request itself) is logged, counted and skipped; a
  rejected merged batch is split and its parts retried, so only the offending entry is lost;
- run creation is idempotent: each run carries a key made here (``gradsweep.create_key``), and a
  retried create first looks for a run with that key, since the failed try may have succeeded on
  the server with only its answer lost;
- on :meth:`close`, whatever still can't be delivered within ``close_patience_s`` is saved as
  JSON lines to the spool file, each run's operations in their order, and ``gradsweep sync``
  replays it (:mod:`search.spool`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from search.journal_batches import (
    MAX_METRICS,
    MAX_PARAMS,
    MAX_TAGS,
    Op,
    coalesce,
    describe_entry,
    split,
)
from search.schema import CREATE_KEY_TAG

__all__ = ["MAX_METRICS", "MAX_PARAMS", "MAX_TAGS", "Journal", "Op", "apply", "coalesce"]

log = logging.getLogger(__name__)

#: Sender threads to an HTTP(S) tracking server, by default: within MLflow's HTTP connection
#: pool (10 per host), beyond which each extra connection is opened for one call and dropped.
HTTP_WORKERS = 8
#: Error codes with which MLflow rejects a request itself: retrying cannot help.
PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_STATE",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
    "MALFORMED_REQUEST",
}
_CLOSE = object()


def is_permanent(exc: Exception) -> bool:
    """True when MLflow answered and refused the request (as opposed to being unreachable).

    Over HTTP that is a ``RestException``; a SQL store raises ``MlflowException`` itself.
    """
    return isinstance(exc, MlflowException) and exc.error_code in PERMANENT


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def apply(client: MlflowClient, run_ids: dict[str, str], op: Op) -> None:
    """Apply one operation; ``create_run`` records the new run id under the op's key."""
    kind = op["op"]
    if kind == "create_run":
        if op["key"] in run_ids:
            return  # already created (a replay after a partly delivered spool)
        made = op["tags"].get(CREATE_KEY_TAG)
        if made and op.get("tried"):  # an earlier try may have created it
            found = client.search_runs(
                [op["experiment_id"]],
                filter_string=f"tags.`{CREATE_KEY_TAG}` = '{made}'",
                max_results=1,
            )
            if found:
                run_ids[op["key"]] = found[0].info.run_id
                return
        run = client.create_run(
            op["experiment_id"],
            run_name=op["run_name"],
            tags=op["tags"],
            start_time=op.get("start_time"),
        )
        run_ids[op["key"]] = run.info.run_id
        return
    run_id = run_ids[op["key"]]
    if kind == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in op.get("metrics", [])],
            params=[Param(k, v) for k, v in op.get("params", [])],
            tags=[RunTag(k, v) for k, v in op.get("tags", [])],
        )
    elif kind == "set_terminated":
        client.set_terminated(run_id, status=op["status"], end_time=op.get("end_time"))
    elif kind == "log_text":
        client.log_text(run_id, op["text"], op["artifact_file"])
    else:
        raise ValueError(f"unknown journal operation {kind!r}")


class Journal:
    """The study's MLflow writer (see module docstring). Thread-safe ``submit``; one consumer,
    which hands each run's operations to ``workers`` sender threads.

    ``linger_s``: after the first operation of a quiet spell, wait this long so that the
    operations behind it go out merged (:func:`coalesce`); :meth:`flush` and :meth:`close` wait
    for it at most once. ``workers``: runs delivered at once; by default 8 over HTTP(S) and 1
    otherwise (then the consumer applies every operation itself, in the order queued).
    """

    def __init__(
        self,
        client: MlflowClient,
        spool: Path,
        run_ids: dict[str, str] | None = None,
        max_backoff_s: float = 5.0,
        linger_s: float = 0.0,
        workers: int | None = None,
    ) -> None:
        self.client, self.spool, self.max_backoff_s = client, spool, max_backoff_s
        self.linger_s = linger_s
        remote = str(client.tracking_uri).startswith(("http:", "https:"))
        self.workers = workers or (HTTP_WORKERS if remote else 1)
        self.run_ids: dict[str, str] = dict(run_ids or {})  # each key written by its own create
        self.rejected: list[str] = []  # permanent failures, for the closing summary
        self.spooled = 0
        self.retried = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._deadline: float | None = None
        self._left: list[Op] = []  # given up: to the spool, each run's operations in order
        self._lock = threading.Lock()  # rejected, retried and _left, shared by the senders
        self._hurry = threading.Event()  # set while a flush or close waits: no lingering
        # Daemon threads, as the consumer: a process that never closes its journal still exits.
        self._runs: queue.Queue[list[Op] | None] = queue.Queue()
        self._senders = [
            threading.Thread(target=self._send, name=f"gradsweep-journal-{i}", daemon=True)
            for i in range(self.workers if self.workers > 1 else 0)
        ]
        for sender in self._senders:
            sender.start()
        self._thread = threading.Thread(target=self._work, name="gradsweep-journal", daemon=True)
        self._thread.start()

    # -- producers ------------------------------------------------------------------------------
    def submit(self, op: Op) -> None:
        self._queue.put(op)

    def create_run(
        self,
        key: str,
        experiment_id: str,
        run_name: str,
        tags: dict[str, str],
        start_time: int | None = None,
    ) -> None:
        """Queue a run's creation; ``start_time`` (ms) is when it really began, not when the
        write reaches MLflow, so the UI shows true durations."""
        self.submit(
            {
                "op": "create_run",
                "key": key,
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": start_time,
                "tags": {**tags, CREATE_KEY_TAG: uuid.uuid4().hex},
            }
        )

    def log_batch(
        self,
        key: str,
        metrics: list[tuple[str, float, int, int]] = (),  # type: ignore[assignment]
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Queue a batch, split to MLflow's per-call limits."""
        for part in _chunks(sorted((params or {}).items()), MAX_PARAMS):
            self.submit({"op": "log_batch", "key": key, "params": part})
        for part in _chunks(sorted((tags or {}).items()), MAX_TAGS):
            self.submit({"op": "log_batch", "key": key, "tags": part})
        for part in _chunks(list(metrics), MAX_METRICS):
            self.submit({"op": "log_batch", "key": key, "metrics": part})

    def set_terminated(self, key: str, status: str, end_time: int | None = None) -> None:
        """Queue a run's end; ``end_time`` (ms): when it really ended."""
        self.submit({"op": "set_terminated", "key": key, "status": status, "end_time": end_time})

    def log_text(self, key: str, text: str, artifact_file: str) -> None:
        self.submit({"op": "log_text", "key": key, "text": text, "artifact_file": artifact_file})

    # -- control --------------------------------------------------------------------------------
    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every operation queued so far was delivered; False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        return done.wait(timeout_s) and not self._left

    def close(self, close_patience_s: float = 60.0) -> int:
        """Deliver what can be delivered within ``close_patience_s``, spool the rest to disk.

        Returns how many operations were spooled (0 when everything reached MLflow).
        """
        self._deadline = time.monotonic() + close_patience_s
        self._queue.put(_CLOSE)
        self._hurry.set()
        self._thread.join()
        if self._left:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            header = {"tracking_uri": self.client.tracking_uri, "run_ids": self.run_ids}
            with self.spool.open("a") as f:
                f.write(json.dumps({"header": header}) + "\n")
                for op in self._left:
                    f.write(json.dumps(op) + "\n")
            self.spooled = len(self._left)
            log.warning("MLflow unreachable: %d writes saved to %s", self.spooled, self.spool)
        return self.spooled

    # -- consumer -------------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                items = [self._queue.get()]
                if self.linger_s and isinstance(items[0], dict):
                    # Let a few epochs' results gather into one write; flush() and close() cut it.
                    self._hurry.wait(self.linger_s)
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                ops: list[Op] = []
                for item in coalesce(items):
                    if isinstance(item, dict):
                        ops.append(item)
                        continue
                    self._deliver_all(ops)  # a marker waits for everything queued before it
                    ops = []
                    if item is _CLOSE:
                        return
                    self._hurry.clear()
                    item.set()
                self._deliver_all(ops)
        finally:
            for _ in self._senders:
                self._runs.put(None)

    def _deliver_all(self, ops: list[Op]) -> None:
        """Deliver ``ops``: each run's in order, different runs at once when there are senders;
        returns once all were delivered, rejected or given up."""
        if not self._senders:
            self._deliver_in_order(ops)
            return
        runs: dict[str, list[Op]] = {}
        for op in ops:
            runs.setdefault(op["key"], []).append(op)
        for run in runs.values():
            self._runs.put(run)
        self._runs.join()

    def _send(self) -> None:
        """A sender thread: one run's operations at a time."""
        while (run := self._runs.get()) is not None:
            try:
                self._deliver_in_order(run)
            except Exception:  # a bug, not MLflow (apply's errors are handled): say it, live on
                log.exception("journal sender failed on run %s", run[0].get("key"))
            finally:
                self._runs.task_done()

    def _deliver_in_order(self, ops: list[Op]) -> None:
        for op in ops:
            with self._lock:
                if self._left:  # already giving up: keep order, spool everything after
                    self._left.append(op)
                    continue
            self._deliver(op)

    def _reject(self, op: Op, why: object) -> None:
        what = f"{op['op']} {op.get('key')}{describe_entry(op)}"
        log.warning("MLflow rejected %s: %s", what, why)
        with self._lock:
            self.rejected.append(f"{what}: {why}")

    def _deliver(self, op: Op) -> None:
        if op["op"] != "create_run" and op["key"] not in self.run_ids:
            # Its run was refused (or never asked for): this can never succeed, and spooling
            # it would hold every later write of the study behind it.
            self._reject(op, "its run does not exist")
            return
        backoff = 0.25
        while True:
            try:
                apply(self.client, self.run_ids, op)
                return
            except Exception as exc:
                if is_permanent(exc):
                    halves = split(op)
                    if halves is None:
                        self._reject(op, exc)
                    for half in halves or ():  # a merged batch: only the offending entry is lost
                        self._deliver(half)
                    return
                op["tried"] = True  # a create that failed may still have created the run
                if self._deadline is not None and time.monotonic() > self._deadline:
                    with self._lock:
                        self._left.append(op)
                    return
                with self._lock:
                    self.retried += 1
                log.info(
                    "MLflow write failed (%s); retrying in %.1f s", exc.__class__.__name__, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
