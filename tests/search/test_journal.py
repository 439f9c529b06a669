"""The MLflow journal against a real SQLite store and an unreachable server."""

from __future__ import annotations

import json
import socket
from contextlib import closing
from pathlib import Path

import mlflow

from search.journal import Journal, replay


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
