"""The MLflow journal against a real SQLite store, a real ``mlflow server`` over HTTP (stopped
and started again for an outage) and an unreachable server."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import pytest
from ray_nodes import DEPLOY, Service, base_env, free_ports, wait_for

from search.journal import MAX_METRICS, Journal, coalesce
from search.schema import CREATE_KEY_TAG
from search.spool import read_spool, replay


@pytest.fixture(autouse=True)
def _mlflow_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's HTTP settings as a study sets them (search.environment): the journal retries,
    so a dead server answers in seconds, not after MLflow's own minutes of retrying."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def _client(tmp_path: Path) -> tuple[mlflow.MlflowClient, str]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_experiment("j", artifact_location=(tmp_path / "a").as_uri())


def test_writes_arrive_in_order(tmp_path: Path) -> None:
    client, experiment = _client(tmp_path)
    journal = Journal(client, tmp_path / "spool.jsonl")
    journal.create_run("t1", experiment, "t001 relu", {"activation": "relu"})
    for epoch in range(1, 6):
        journal.log_batch("t1", metrics=[("val_accuracy", epoch / 10, 1000 + epoch, epoch)])
    journal.set_terminated("t1", "FINISHED")
    assert journal.close() == 0
    run = client.get_run(journal.run_ids["t1"])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3, 4, 5]


def test_a_refused_write_is_skipped_not_spooled(tmp_path: Path) -> None:
    client, experiment = _client(tmp_path)
    journal = Journal(client, tmp_path / "spool.jsonl")
    journal.create_run("t1", experiment, "t001", {})
    journal.log_batch("t1", params={"lr": "0.1"})
    journal.log_batch("t1", params={"lr": "0.2"})  # MLflow refuses to change a param
    journal.log_batch("ghost", metrics=[("x", 1.0, 1, 1)])  # a run that was never created
    journal.set_terminated("t1", "FINISHED")
    assert journal.flush(timeout_s=30)
    assert journal.close() == 0
    assert len(journal.rejected) == 2
    assert client.get_run(journal.run_ids["t1"]).info.status == "FINISHED"
    assert not (tmp_path / "spool.jsonl").exists()


def test_unreachable_server_spools_then_sync_delivers(tmp_path: Path) -> None:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    spool = tmp_path / "spool.jsonl"
    journal = Journal(mlflow.MlflowClient(tracking_uri=dead), spool, max_backoff_s=0.2)
    client, experiment = _client(tmp_path)
    journal.create_run("t1", experiment, "t001 elu", {"activation": "elu"})
    journal.log_batch("t1", metrics=[("val_accuracy", 0.5, 1, 1), ("val_accuracy", 0.6, 2, 2)])
    journal.set_terminated("t1", "FINISHED")
    assert journal.close(close_patience_s=1.0) == 3
    assert [json.loads(line).get("op") for line in spool.read_text().splitlines()] == [
        None,
        "create_run",
        "log_batch",
        "set_terminated",
    ]
    delivered, left = replay(spool, tracking_uri=client.tracking_uri)
    assert (delivered, left) == (3, 0)
    assert not spool.exists()
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FINISHED" and run.info.run_name == "t001 elu"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [
        0.5,
        0.6,
    ]


def test_coalesce_merges_a_runs_batches_and_keeps_its_order() -> None:
    def metrics(key: str, step: int) -> dict:
        return {"op": "log_batch", "key": key, "metrics": [["m", float(step), step, step]]}

    marker = threading.Event()
    items = [
        metrics("a", 1),
        metrics("b", 1),
        metrics("a", 2),
        {"op": "log_batch", "key": "a", "params": [["lr", "0.1"]]},
        {"op": "set_terminated", "key": "b", "status": "FINISHED"},
        metrics("b", 2),  # after b's status: must not move before it
        metrics("a", 3),
        marker,
        metrics("a", 4),  # nothing merges across a flush marker
    ]
    out = coalesce(items)
    ops = [(o["op"], o["key"]) if isinstance(o, dict) else "marker" for o in out]
    assert ops == [
        ("log_batch", "a"),
        ("log_batch", "b"),
        ("set_terminated", "b"),
        ("log_batch", "b"),
        "marker",
        ("log_batch", "a"),
    ]
    assert [m[2] for m in out[0]["metrics"]] == [1, 2, 3]
    assert out[0]["params"] == [["lr", "0.1"]]


def test_coalesce_respects_mlflow_limits_and_duplicate_params() -> None:
    big = {"op": "log_batch", "key": "a", "metrics": [["m", 0.0, 0, i] for i in range(MAX_METRICS)]}
    one = {"op": "log_batch", "key": "a", "metrics": [["m", 0.0, 0, MAX_METRICS]]}
    assert len(coalesce([big, one])) == 2
    p1 = {"op": "log_batch", "key": "a", "params": [["lr", "0.1"]]}
    p2 = {"op": "log_batch", "key": "a", "params": [["lr", "0.2"]]}
    assert len(coalesce([p1, p2])) == 2  # MLflow would refuse the merged batch outright


def test_lingering_journal_writes_every_epoch_in_fewer_calls(tmp_path: Path) -> None:
    client, experiment = _client(tmp_path)
    calls = []
    log_batch = client.log_batch

    def counted(*args: object, **kwargs: object) -> None:
        calls.append(1)
        log_batch(*args, **kwargs)

    client.log_batch = counted  # type: ignore[method-assign]
    journal = Journal(client, tmp_path / "spool.jsonl", linger_s=0.3)
    for key in ("t1", "t2"):
        journal.create_run(key, experiment, key, {})
    assert journal.flush(timeout_s=30)
    for epoch in range(1, 21):  # two trials' epochs, interleaved, as Tune reports them
        for key in ("t1", "t2"):
            journal.log_batch(key, metrics=[("val_accuracy", epoch / 100, 1000 + epoch, epoch)])
    assert journal.close() == 0
    for key in ("t1", "t2"):
        history = client.get_metric_history(journal.run_ids[key], "val_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.timestamp)] == list(range(1, 21))
    assert 2 <= len(calls) < 40, f"{len(calls)} log_batch calls for 40 batches"


def test_a_rejected_merged_batch_loses_only_the_offending_entry(tmp_path: Path) -> None:
    """Three batches of one run go out as one call; MLflow refuses it for one param, so the
    metrics merged beside that param still arrive, and the warning names the param."""
    client, experiment = _client(tmp_path)
    journal = Journal(client, tmp_path / "spool.jsonl", linger_s=1.0)
    journal.create_run("t1", experiment, "t001", {})
    journal.log_batch("t1", params={"lr": "0.1"})
    assert journal.flush(timeout_s=30)
    journal.log_batch("t1", metrics=[("loss", 1.0, 1, 1)])
    journal.log_batch("t1", params={"lr": "0.2", "depth": "3"})  # lr can't change
    journal.log_batch("t1", metrics=[("loss", 0.5, 2, 2)])
    assert len(coalesce(list(journal._queue.queue))) == 1, "one merged call"
    assert journal.close() == 0
    run = client.get_run(journal.run_ids["t1"])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5]
    assert run.data.params == {"lr": "0.1", "depth": "3"}
    assert len(journal.rejected) == 1
    assert journal.rejected[0].startswith("log_batch t1 param 'lr'='0.2': ")


class LostAnswers(mlflow.MlflowClient):
    """A client whose first ``create_run`` reaches the store but whose answer is lost, as when
    the connection drops after the server committed."""

    lost = 0

    def create_run(self, *args: Any, **kwargs: Any) -> Any:
        run = super().create_run(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise ConnectionError("connection reset after the request was sent")
        return run


def test_a_retried_create_does_not_duplicate_the_run(tmp_path: Path) -> None:
    _, experiment = _client(tmp_path)
    client = LostAnswers(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    journal = Journal(client, tmp_path / "spool.jsonl", max_backoff_s=0.1)
    journal.create_run("t1", experiment, "t001", {"activation": "relu"})
    journal.log_batch("t1", metrics=[("loss", 1.0, 1, 1)])
    assert journal.close() == 0
    assert client.lost == 1
    (run,) = client.search_runs([experiment])
    assert run.info.run_id == journal.run_ids["t1"]
    assert run.data.metrics == {"loss": 1.0}
    assert len(run.data.tags[CREATE_KEY_TAG]) == 32


# ---------------------------------------------------------------------------------------------
# Concurrent senders: a real mlflow server over HTTP


@dataclass
class Server:
    """``deploy/start-mlflow.sh`` (one worker, a SQLite store, proxied artifacts) on a loopback
    port; :meth:`stop` and :meth:`start` again on the same port and store make an outage."""

    root: Path
    port: int = field(default_factory=lambda: free_ports(1)[0])
    service: Service | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        with suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
            return r.status == 200
        return False

    def start(self) -> None:
        env = {
            **base_env(),
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{self.root / 'server.db'}",
            "MLFLOW_ARTIFACTS_DESTINATION": str(self.root / "artifacts"),
            "MLFLOW_PORT": str(self.port),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner processes
        }
        self.starts += 1
        log = self.root / f"server-{self.starts}.log"
        self.service = Service.start("mlflow", [str(DEPLOY / "start-mlflow.sh")], env, log)
        wait_for("mlflow server", self.healthy, [self.service], 180)

    def stop(self) -> None:
        """SIGTERM to its group; SIGKILL to what is left after a grace; gone before returning,
        so the port is free to start again."""
        if self.service is None:
            return
        self.service.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.service.members() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.service.signal(signal.SIGKILL)
        self.service.proc.wait(timeout=30)
        self.service = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module; a test that stops it starts it again."""
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Observed(mlflow.MlflowClient):
    """The real client, watched: each run's calls in the order they went out, any run with two
    calls in flight at once, and the most calls in flight at once. Its first two creates wait
    for each other: they only both return when two runs are being delivered at the same time."""

    def __init__(self, tracking_uri: str, together: bool = False) -> None:
        super().__init__(tracking_uri=tracking_uri)
        self.lock = threading.Lock()
        self.calls: dict[str, list[str]] = {}  # run (its name until created) -> calls in order
        self.busy: set[str] = set()
        self.overlapped: list[str] = []  # runs that had two calls in flight at once
        self.in_flight = self.peak = 0
        self.together = threading.Barrier(2, timeout=60) if together else None
        self.creates = 0

    def _call(self, run: str, what: str, call: Callable[[], Any]) -> Any:
        with self.lock:
            if run in self.busy:
                self.overlapped.append(run)
            self.busy.add(run)
            self.calls.setdefault(run, []).append(what)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            return call()
        finally:
            with self.lock:
                self.busy.discard(run)
                self.in_flight -= 1

    def _create(self, experiment_id: str, **kwargs: Any) -> Any:
        with self.lock:
            self.creates += 1
            wait = self.creates <= 2
        if self.together is not None and wait:
            self.together.wait()
        return super().create_run(experiment_id, **kwargs)

    def create_run(self, experiment_id: str, **kwargs: Any) -> Any:
        name = kwargs["run_name"]
        run = self._call(name, "create_run", partial(self._create, experiment_id, **kwargs))
        with self.lock:
            self.calls[run.info.run_id] = self.calls.pop(name)
        return run

    def log_batch(self, run_id: str, **kwargs: Any) -> Any:
        return self._call(run_id, "log_batch", partial(super().log_batch, run_id, **kwargs))

    def log_text(self, run_id: str, *args: Any) -> Any:
        return self._call(run_id, "log_text", partial(super().log_text, run_id, *args))

    def set_terminated(self, run_id: str, **kwargs: Any) -> Any:
        call = partial(super().set_terminated, run_id, **kwargs)
        return self._call(run_id, "set_terminated", call)


EPOCHS = 10


def _trial(
    journal: Journal, key: str, experiment: str, epochs: range = range(1, EPOCHS + 1)
) -> None:
    """A trial's writes as the tracker queues them: create, params, one batch per epoch (each
    with the ``epoch`` tag, so batches never merge and the last one written wins), its layer
    table, its end."""
    if epochs.start == 1:
        journal.create_run(key, experiment, key, {"trial": key})
        journal.log_batch(key, params={"lr": "0.01", "depth": "4"})
    for epoch in epochs:
        journal.log_batch(
            key,
            metrics=[("val_accuracy", epoch / 100, 1000 + epoch, epoch)],
            tags={"epoch": str(epoch)},
        )
    if epochs.stop == EPOCHS + 1:
        journal.log_text(key, f"layer table of {key}", "layers.txt")
        journal.set_terminated(key, "FINISHED")


def _check_delivered(client: mlflow.MlflowClient, experiment: str, keys: list[str]) -> None:
    """Every trial's run once, finished, every epoch in MLflow, the last one written last, its
    layer table beside it."""
    runs = client.search_runs([experiment], max_results=1000)
    assert sorted(r.info.run_name for r in runs) == sorted(keys), "one run per trial"
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), run.info.run_name
        assert run.data.tags["epoch"] == str(EPOCHS), f"{run.info.run_name}: a batch came late"
        assert run.data.params == {"lr": "0.01", "depth": "4"}
        assert run.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["layers.txt"]


@pytest.mark.slow
def test_runs_go_out_concurrently_each_in_order(server: Server, tmp_path: Path) -> None:
    client = Observed(server.url, together=True)
    experiment = client.create_experiment("concurrent")
    journal = Journal(client, tmp_path / "spool.jsonl", linger_s=60)
    assert journal.workers > 1, "several senders over HTTP by default"
    keys = [f"t{i:02d}" for i in range(24)]
    for key in keys:
        _trial(journal, key, experiment)
    assert journal.flush(timeout_s=300), "flush cuts the linger and waits for every write"
    _check_delivered(client, experiment, keys)
    assert client.together is not None and not client.together.broken, "2 creates at once"
    assert client.overlapped == [], "a run never has two calls in flight"
    expected = ["create_run", *["log_batch"] * EPOCHS, "log_text", "set_terminated"]
    assert all(calls == expected for calls in client.calls.values()), client.calls
    assert journal.close() == 0 and journal.rejected == []


def test_a_sqlite_store_keeps_one_writer(tmp_path: Path) -> None:
    """Concurrent writers to one SQLite file only contend for its lock."""
    _, experiment = _client(tmp_path)
    client = Observed(f"sqlite:///{tmp_path / 'mlflow.db'}")
    journal = Journal(client, tmp_path / "spool.jsonl")
    assert journal.workers == 1
    keys = [f"t{i}" for i in range(4)]
    for key in keys:
        _trial(journal, key, experiment)
    assert journal.close() == 0
    _check_delivered(client, experiment, keys)
    assert client.peak == 1


def _wait(what: str, done: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen in {timeout_s:.0f} s")
        time.sleep(0.1)


@pytest.mark.slow
def test_an_outage_mid_way_loses_nothing(server: Server, tmp_path: Path) -> None:
    """The server goes away while runs are half written and new ones start, and comes back:
    the senders retry, each run's writes arrive once and in order, no run is created twice."""
    client = mlflow.MlflowClient(tracking_uri=server.url)
    experiment = client.create_experiment("outage")
    journal = Journal(client, tmp_path / "spool.jsonl", max_backoff_s=0.5)
    first = [f"a{i:02d}" for i in range(12)]
    for key in first:
        _trial(journal, key, experiment, range(1, 4))
    assert journal.flush(timeout_s=120)
    server.stop()
    try:
        later = [f"b{i:02d}" for i in range(6)]
        for key in first:
            _trial(journal, key, experiment, range(4, EPOCHS + 1))
        for key in later:
            _trial(journal, key, experiment)
        _wait("a retried write", lambda: journal.retried > 0)
    finally:
        server.start()
    assert journal.close(close_patience_s=300) == 0
    assert journal.rejected == []
    _check_delivered(client, experiment, first + later)


@pytest.mark.slow
def test_after_an_outage_the_spool_keeps_each_runs_order(server: Server, tmp_path: Path) -> None:
    """The server stays away past the close: what was not delivered is spooled, each run's
    writes in their order, and the replay (concurrent as well) delivers all of it."""
    client = mlflow.MlflowClient(tracking_uri=server.url)
    experiment = client.create_experiment("spooled")
    spool = tmp_path / "spool.jsonl"
    journal = Journal(client, spool, max_backoff_s=0.2)
    first = [f"a{i:02d}" for i in range(12)]
    for key in first:
        _trial(journal, key, experiment, range(1, 4))
    assert journal.flush(timeout_s=120)
    server.stop()
    try:
        later = [f"b{i:02d}" for i in range(6)]
        for key in first:
            _trial(journal, key, experiment, range(4, EPOCHS + 1))
        for key in later:
            _trial(journal, key, experiment)
        spooled = journal.close(close_patience_s=1)
        assert spooled > 0
        ops = [line for line in read_spool(spool) if "op" in line]
        assert len(ops) == spooled
        for key in first + later:
            mine = [op for op in ops if op["key"] == key]
            batches = [op for op in mine if op["op"] == "log_batch" and "tags" in op]
            epochs = [int(dict(op["tags"])["epoch"]) for op in batches]
            assert epochs == sorted(epochs) and epochs[-1] == EPOCHS, (key, epochs)
            assert mine[-1]["op"] == "set_terminated", key
            assert (mine[0]["op"] == "create_run") == key.startswith("b"), key
    finally:
        server.start()
    delivered, left = replay(spool, tracking_uri=server.url)
    assert (delivered, left) == (spooled, 0)
    assert not spool.exists()
    _check_delivered(client, experiment, first + later)
