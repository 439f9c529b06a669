"""The spool file: MLflow writes (and a study's end) the journal could not deliver, replayed by
``gradsweep sync`` once the server is back."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from search.journal import Journal, Op

log = logging.getLogger(__name__)


def spool_path(output_dir: Path, study: str) -> Path:
    """Where a study's undeliverable MLflow writes are saved."""
    return output_dir / "mlflow-spool" / f"{study}.jsonl"


def replay(
    path: Path, tracking_uri: str | None = None, patience_s: float = 30.0
) -> tuple[int, int]:
    """Replay a spool file into MLflow; returns (delivered, still spooled).

    The file is rewritten with what could not be delivered, or removed when all went through.
    """
    from search.environment import configure

    configure()  # MLflow's own HTTP retries off: the journal retries
    run_ids: dict[str, str] = {}
    ops: list[Op] = []
    ends: list[dict[str, Any]] = []  # a study's end, kept for search.ending.finish_spooled
    uri = tracking_uri
    for line in read_spool(path):
        if "header" in line:
            run_ids.update(line["header"]["run_ids"])
            uri = uri or line["header"]["tracking_uri"]
        elif "op" in line:
            ops.append(line)
        else:
            ends.append(line)
    path.with_suffix(".retry").unlink(missing_ok=True)
    journal = Journal(MlflowClient(tracking_uri=uri), path.with_suffix(".retry"), run_ids)
    for op in ops:
        journal.submit(op)
    left = journal.close(close_patience_s=patience_s)
    retry = path.with_suffix(".retry")
    if ends:  # after the writes it needs; with the run ids the replay learnt
        with retry.open("a") as f:
            for end in ends:
                for body in end.values():
                    body["run_ids"] = {**body.get("run_ids", {}), **journal.run_ids}
                f.write(json.dumps(end) + "\n")
    if left or ends:
        os.replace(retry, path)
    else:
        path.unlink()
    return len(ops) - left, left


def read_spool(path: Path) -> list[dict[str, Any]]:
    """The lines of a spool file, skipping one cut short by a crash while spooling."""
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping a truncated line in %s", path)
    return lines
