"""The MLflow journal against a real SQLite store and an unreachable server."""

from __future__ import annotations

import json
import socket
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import mlflow

from search.journal import MAX_METRICS, Journal, coalesce
from search.schema import CREATE_KEY_TAG
from search.spool import replay


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
