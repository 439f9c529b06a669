"""The PostgreSQL the cluster tests use: skipped on a laptop without one, a loud failure where
it is expected (``CI`` set, or ``GRADSWEEP_EXPECT_POSTGRES=1``: ``.ci/run`` sets it)."""

from __future__ import annotations

import os
from typing import Any

import pytest

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def expected() -> bool:
    """Whether a missing PostgreSQL is a failure rather than a reason to skip."""
    return bool(os.environ.get("CI")) or os.environ.get("GRADSWEEP_EXPECT_POSTGRES") == "1"


def admin_connection(pg: dict[str, Any] = PG) -> Any:
    """A psycopg2 connection to the ``postgres`` database, or a skip where none is expected."""
    try:
        import psycopg2
    except ImportError as exc:
        if expected():
            raise RuntimeError(f"PostgreSQL expected, but psycopg2 is missing: {exc}") from exc
        pytest.skip("psycopg2 not installed")
    try:
        return psycopg2.connect(dbname="postgres", connect_timeout=5, **pg)
    except psycopg2.OperationalError as exc:
        where = f"{pg['host']}:{pg['port']}"
        if expected():
            raise RuntimeError(
                f"PostgreSQL expected (CI or GRADSWEEP_EXPECT_POSTGRES=1) but not reachable at "
                f"{where}: {exc}"
            ) from exc
        pytest.skip(f"PostgreSQL not reachable at {where}: {exc}")
