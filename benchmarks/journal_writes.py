"""The journal alone: how fast a study's MLflow writes reach a real ``mlflow server`` over HTTP,
with one sender and with several (issue 21).

``--trials`` trials' writes, as the tracker queues them (create with its tags, params, one batch
per epoch, the end's batch, the layer table as a text artifact, the end), are queued at once into a
:class:`search.journal.Journal` and timed until :meth:`~search.journal.Journal.close` returns:
the backlog a study's end waits for. The server runs on a fresh PostgreSQL database
(``scale.database``, dropped afterwards; ``--backend sqlite`` for a file) with ``--server-workers``
workers; each ``--workers`` setting writes its own experiment on the same server, in the order
given. Queued at once, a trial's batches merge (:func:`search.journal.coalesce`) into about
four calls; ``--per-epoch`` makes every epoch its own call (as when trials report slower than
the journal's linger), thirteen calls a trial.

Printed per setting: wall, trials/s, MLflow calls/s (the journal's, not the artifact upload's
own requests) and queued operations/s, with the load average. Run from the repository root:
``PYTHONPATH=. .venv/bin/python benchmarks/journal_writes.py --trials 500 --workers 1,8``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import quiet_libraries
from mlflow import MlflowClient
from scale import database, mlflow_server

from search.environment import configure
from search.journal import Journal

METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy", "epoch_seconds")


class Counted(MlflowClient):
    """The real client, counting the calls the journal makes."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__(tracking_uri=tracking_uri)
        self.calls = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def create_run(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        return super().create_run(*args, **kwargs)

    def log_batch(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        return super().log_batch(*args, **kwargs)

    def log_text(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        return super().log_text(*args, **kwargs)

    def set_terminated(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        return super().set_terminated(*args, **kwargs)


def queue_trial(journal: Journal, key: str, experiment: str, epochs: int, per_epoch: bool) -> int:
    """One trial's writes, shaped as the tracker's; returns how many operations were queued."""
    now = int(time.time() * 1000)
    tags = {f"tag_{i}": f"value {i}" for i in range(12)}
    journal.create_run(key, experiment, f"{key} relu", tags, now)
    params = {f"param_{i}": str(i / 7) for i in range(14)}
    journal.log_batch(key, params=params)
    for epoch in range(1, epochs + 1):
        metrics = [(name, epoch / 100, now + epoch, epoch) for name in METRICS]
        # the same tag in every batch: a batch never merges with the one before it
        journal.log_batch(key, metrics=metrics, tags={"epoch": str(epoch)} if per_epoch else {})
    journal.log_batch(
        key,
        metrics=[("epochs_run", float(epochs), now, epochs), ("best_val_accuracy", 0.9, now, 0)],
        tags={"gradsweep.outcome": "completed"},
    )
    table = "\n".join(f"| layer {i} | {i * 0.01:.4f} | {i * 0.02:.4f} |" for i in range(40))
    journal.log_text(key, table, "diagnostics/layers.md")
    journal.set_terminated(key, "FINISHED", now + 1000)
    return epochs + 5


@contextlib.contextmanager
def server(backend: str, tmp: Path, workers: int) -> Iterator[str]:
    if backend == "sqlite":
        with mlflow_server(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "artifacts", workers) as url:
            yield url
        return
    with (
        database(f"gs_journal_{os.getpid()}") as db,
        mlflow_server(db, tmp / "artifacts", workers) as url,
    ):
        yield url


def measure(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    client = Counted(url)
    experiment = client.create_experiment(f"journal-{workers}-{time.time_ns()}")
    journal = Journal(client, tmp / f"spool-{workers}.jsonl", workers=workers)
    t0 = time.perf_counter()
    ops = sum(
        queue_trial(journal, f"t{i:05d}", experiment, args.epochs, args.per_epoch)
        for i in range(args.trials)
    )
    spooled = journal.close(close_patience_s=600)
    wall = time.perf_counter() - t0
    assert spooled == 0 and not journal.rejected, (spooled, journal.rejected[:3])
    assert len(journal.run_ids) == args.trials
    return {
        "wall": wall,
        "trials_s": args.trials / wall,
        "calls_s": client.calls / wall,
        "calls": client.calls,
        "ops_s": ops / wall,
        "retried": journal.retried,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10, help="batches per trial")
    parser.add_argument("--workers", default="1,8", help="journal senders, one setting per run")
    parser.add_argument("--per-epoch", action="store_true", help="no batch merges: 13 calls")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--server-workers", type=int, default=2, help="mlflow server workers")
    args = parser.parse_args()
    configure()  # MLflow's HTTP settings as a study's
    quiet_libraries()
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with (
        tempfile.TemporaryDirectory(prefix="gradsweep-journal-") as tmp,
        server(args.backend, Path(tmp), args.server_workers) as url,
    ):
        for workers in (int(w) for w in args.workers.split(",")):
            r = measure(url, workers, args, Path(tmp))
            print(
                f"workers {workers}: {args.trials} trials in {r['wall']:.1f} s = "
                f"{r['trials_s']:.1f} trials/s, {r['calls']} calls = {r['calls_s']:.0f} "
                f"calls/s, {r['ops_s']:.0f} ops/s, {r['retried']} retried [load {r['load']:.1f}]"
            )
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
