"""Pre-flight checks: everything a user can get wrong, checked before anything is created.

Each check raises :class:`~search.errors.UserError` with one line naming the flag or key and what
is allowed, so bad input never leaves a half-made run, database or directory behind.
"""

from __future__ import annotations

import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from search.environment import ray_address, redact
from search.errors import UserError
from spaces import StudyConfig
from trainers import DataError, Splits

#: How long a study waits for an autoscaling cluster to add a node its trials fit on.
AUTOSCALE_WAIT_S = 300.0
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_study_name(name: str) -> None:
    """Study names become file names, Ray experiment names and MLflow filter values."""
    if not STUDY_NAME.fullmatch(name) or len(name) > 120:
        raise UserError(f"--study: {name!r} must use letters, digits, '_', '.' and '-'")


def check_tracking_uri(uri: str) -> None:
    """Fail fast when ``uri`` can't be a working tracking store."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status != 200:
                    raise UserError(
                        f"--tracking-uri: {uri} answered HTTP {response.status} on /health"
                    )
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"--tracking-uri: MLflow server {uri} is unreachable ({reason})"
            ) from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = Path.cwd() / path
        parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
        if path.is_dir() or parent is None or not parent.is_dir():
            raise UserError(f"--tracking-uri: {uri} does not name a writable SQLite file")
    elif uri.startswith(("postgresql://", "postgresql+psycopg2://", "mysql://")):
        _connect(uri, "--tracking-uri")
    else:
        raise UserError(
            f"--tracking-uri: unsupported {redact(uri)!r}; use sqlite:///PATH, http(s)://HOST:PORT "
            "or postgresql://..."
        )


def check_storage(url: str) -> None:
    """Fail fast on an Optuna storage URL SQLAlchemy cannot use, or a database that is not
    there (a server database is connected to; a SQLite file is not created here)."""
    if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql")):
        raise UserError(
            f"optuna_storage: unsupported {redact(url)!r}; use sqlite:///PATH or postgresql://..."
        )
    if not url.startswith("sqlite:///"):
        _connect(url, "optuna_storage")


def _connect(url: str, key: str) -> None:
    """Connect to a database server once, with a short timeout: the stores themselves retry
    for minutes before they give up, with a traceback."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{key}: cannot connect to {redact(url)}: {first}") from None


def check_writable(path: Path, key: str) -> None:
    """Fail fast when folder ``path`` can't be created or written in (``key`` names where it
    came from); the study would otherwise find out only after its stores opened.

    Tried, not judged from permission bits, which root ignores: a probe file in the nearest
    existing folder is created and removed, so nothing is left behind.
    """
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{key}: {path} can't be a folder: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"{key}: cannot write in {existing} ({exc.strerror or exc})") from None


def check_address(address: str) -> None:
    """Fail fast when ``address`` names a Ray cluster that isn't there (``local``: a Ray of the
    study's own, started by it)."""
    if address == "local":
        return
    if address == "auto":
        current = Path("/tmp/ray/ray_current_cluster")
        found = ray_address(None) or ""
        if found in ("", "auto"):
            found = current.read_text().strip() if current.is_file() else ""
        if not found:
            raise UserError("--address auto: no running Ray cluster found on this machine")
        address = found
    target = address if "://" in address else f"tcp://{address}"
    parsed = urlparse(target)
    if parsed.scheme not in ("tcp", "ray") or not parsed.hostname:
        raise UserError(f"--address: {address!r} must be local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        port = parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    except ValueError:
        raise UserError(f"--address: {address!r} has an invalid port") from None
    try:
        with socket.create_connection((parsed.hostname, port), timeout=3):
            pass
    except OSError as exc:
        raise UserError(
            f"--address: no Ray cluster reachable at {parsed.hostname}:{port} "
            f"({exc.strerror or exc})"
        ) from None


def check_resources(cpu: float, gpu: float, nodes: list[dict[str, float]]) -> None:
    """Refuse a per-trial request that no node of the cluster can ever place: Tune would wait
    for it forever ("0/2 running"). ``nodes`` are the live nodes' total resources."""

    def most(key: str) -> float:
        return max((node.get(key, 0.0) for node in nodes), default=0.0)

    for key, want, name in (("CPU", cpu, "cpu"), ("GPU", gpu, "gpu")):
        if want > most(key):
            has = (
                f"the largest Ray node has {most(key):g} {key}" + ("" if most(key) == 1 else "s")
                if most(key)
                else f"no Ray node has a {key}"
            )
            raise UserError(
                f"resources.{name}: {want:g} per trial, but {has}; allowed: at most {most(key):g}"
            )
    if not any(node.get("CPU", 0.0) >= cpu and node.get("GPU", 0.0) >= gpu for node in nodes):
        raise UserError(
            f"resources: a trial asks for {cpu:g} CPUs and {gpu:g} GPUs on one node, but no Ray "
            "node has both; lower resources.cpu or resources.gpu"
        )


def await_resources(
    cpu: float,
    gpu: float,
    nodes: Callable[[], list[dict[str, float]]],
    *,
    autoscaling: bool,
    say: Callable[[str], None],
    request: Callable[[dict[str, float]], None] = lambda bundle: None,
    wait_s: float = AUTOSCALE_WAIT_S,
    poll_s: float = 5.0,
) -> None:
    """:func:`check_resources`, except on an autoscaling cluster, where a node that fits may
    still come: ask the autoscaler for one (``request``), say so, and wait at most ``wait_s``
    before refusing as :func:`check_resources` does."""
    try:
        check_resources(cpu, gpu, nodes())
        return
    except UserError as exc:
        if not autoscaling:
            raise
        refused = exc
    say(
        f"warning: {refused}; the cluster autoscales, so gradsweep asked it for such a node and "
        f"waits up to {wait_s:g} s for it"
    )
    request({"CPU": cpu, "GPU": gpu} if gpu else {"CPU": cpu})
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        try:
            check_resources(cpu, gpu, nodes())
            return
        except UserError as exc:
            refused = exc
    raise UserError(f"{refused} (waited {wait_s:g} s for the autoscaler)")


def check(tracking_uri: str, storage: str, address: str | None) -> None:
    """The quick checks of a study's locations (the data set is loaded while Ray starts)."""
    check_tracking_uri(tracking_uri)
    check_storage(storage)
    if address:
        check_address(address)


def load_data(config: StudyConfig) -> Splits:
    """The study's data set, or the one-line reason it can't be loaded."""
    try:
        return config.data.load()
    except DataError as exc:
        raise UserError(str(exc)) from None
