"""The shape of the MLflow journal's batches: merged while queued, split when MLflow refuses one.

A study queues a ``log_batch`` per trial and epoch; :func:`coalesce` merges a run's batches into
as few calls as MLflow's limits allow, and when MLflow rejects a merged batch :func:`split`
bisects it down to the entry it refuses, so only that entry is lost (:mod:`search.journal`).
"""

from __future__ import annotations

from typing import Any

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits

#: One journal operation, as data (see :mod:`search.journal`).
Op = dict[str, Any]


def _mergeable(a: Op, b: Op) -> bool:
    """Two batches of one run fit in one ``log_batch`` call: within MLflow's limits, and no
    param or tag key twice (MLflow refuses a batch that names a param twice)."""
    for field, limit in (("metrics", MAX_METRICS), ("params", MAX_PARAMS), ("tags", MAX_TAGS)):
        x, y = a.get(field, []), b.get(field, [])
        if len(x) + len(y) > limit:
            return False
        if field != "metrics" and {k for k, _ in x} & {k for k, _ in y}:
            return False
    return True


def coalesce(items: list[Any]) -> list[Any]:
    """Merge queued ``log_batch`` operations of the same run into fewer calls.

    A study reports every epoch of every trial; on SQLite each call is a transaction that
    competes with the trials for the same cores. Order within a run is kept: a batch only merges
    into the run's latest batch when no other operation of that run came in between, and
    nothing merges across a control marker (flush, close). Runs are independent, so a batch may
    move ahead of another run's operations.
    """
    out: list[Any] = []
    open_batch: dict[str, int] = {}  # run key -> index in out of its batch that may still grow
    for item in items:
        if not isinstance(item, dict):
            open_batch.clear()
            out.append(item)
            continue
        key = item.get("key")
        if item["op"] != "log_batch":
            open_batch.pop(key, None)
            out.append(item)
            continue
        i = open_batch.get(key)
        if i is not None and _mergeable(out[i], item):
            merged = dict(out[i])
            for field in ("metrics", "params", "tags"):
                if field in item:
                    merged[field] = [*merged.get(field, []), *item[field]]
            out[i] = merged
            continue
        open_batch[key] = len(out)
        out.append(item)
    return out


def _entries(op: Op) -> list[tuple[str, Any]]:
    return [(f, e) for f in ("params", "tags", "metrics") for e in op.get(f, [])]


def split(op: Op) -> tuple[Op, Op] | None:
    """A ``log_batch`` of several entries cut in two halves (in order), or None for one entry
    or another operation: a rejected merged batch is bisected down to the entry MLflow refuses."""
    entries = _entries(op) if op["op"] == "log_batch" else []
    if len(entries) < 2:
        return None
    half = len(entries) // 2
    parts = []
    for chunk in (entries[:half], entries[half:]):
        part: Op = {"op": "log_batch", "key": op["key"]}
        for field, entry in chunk:
            part.setdefault(field, []).append(entry)
        parts.append(part)
    return parts[0], parts[1]


def describe_entry(op: Op) -> str:
    """The one entry of a batch, to name it in a warning (`` param 'lr'``), else nothing."""
    entries = _entries(op) if op["op"] == "log_batch" else []
    if len(entries) != 1:
        return ""
    field, entry = entries[0]
    return (
        f" {field[:-1]} {entry[0]!r}={entry[1]!r}"
        if field != "metrics"
        else f" metric {entry[0]!r}"
    )
