"""Studies as Ray jobs: submit, list, follow and stop them from your own machine.

The client speaks to the head's job server (the dashboard port, 8265) over HTTP with Ray's
:class:`~ray.job_submission.JobSubmissionClient`; it needs no Ray node, no shared file system and
no route to the GCS. What runs on the head is plain ``gradsweep run CONFIG --address auto``:

- the config is checked here, then its resolved form is shipped as the job's ``working_dir`` (one
  small YAML file), so a config or preset that exists only on this machine runs as it is;
- the study name is chosen here (``--study``, else NAME-timestamp) and kept in the job's metadata,
  so it can be printed at once and found again by ``gradsweep jobs``;
- ``gradsweep stop`` asks Ray to stop the job; Ray sends SIGTERM to the entrypoint, which
  ``gradsweep run`` treats as Ctrl+C (parent run KILLED, trials closed ``interrupted``, resumable),
  and Ray's SIGKILL comes only after :data:`STOP_GRACE_S` (set per job: Ray's default is 3 s, too
  short for a study to close its runs).

The token is sent as an ``Authorization: Bearer`` header taken from ``RAY_AUTH_TOKEN``; without it
Ray's own lookup (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``)
applies.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml

from search import environment, preflight
from search.environment import redact
from search.errors import UserError
from spaces import StudyConfig

#: Job metadata keys: what ``gradsweep jobs`` shows without asking MLflow.
STUDY_KEY = "gradsweep.study"
CONFIG_KEY = "gradsweep.config"
TRIALS_KEY = "gradsweep.num_samples"
TRACKING_KEY = "gradsweep.tracking_uri"
#: The resolved config, alone in the job's working dir (the entrypoint's current directory).
CONFIG_FILE = "gradsweep-study.yaml"
#: Seconds between Ray's SIGTERM and its SIGKILL: the study closes its runs, leaderboard and
#: report in this time (Ray reads RAY_JOB_STOP_WAIT_TIME_S from the job's runtime env).
STOP_GRACE_S = 120
#: Where a relative ``output_dir`` lands on the cluster: the image's WORKDIR, whose
#: ``gradsweep-runs`` is the storage volume shared by every node (docker-compose.yml, KubeRay).
CLUSTER_WORKDIR = "/app"
#: A line ``gradsweep run`` prints into a job's log per finished trial (search/progress.py).
_DONE = re.compile(r"(\d+)/(\d+) trials done")
_SUMMARY = re.compile(r"^study \S+ - (\d+) trials (?:finished )?in ", re.MULTILINE)
#: Ray's client loggers that print each upload and socket close at INFO.
_CHATTY = ("ray.dashboard", "ray._private.runtime_env.packaging")


def _redact(url: str | None) -> str:
    return redact(url) or ""


#: As ``gradsweep run`` will check it on the head, but before anything is submitted.
check_study_name = preflight.check_study_name


@contextmanager
def _talking_to(address: str) -> Iterator[None]:
    """Turn the job server's refusals and network errors into one-line :class:`UserError`."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        first = str(exc).split("\n", 1)[0]
        raise UserError(
            f"--address: the job server at {address} refused the token ({first}); set "
            "RAY_AUTH_TOKEN to the cluster's token"
        ) from None
    except (ConnectionError, requests.RequestException, aiohttp.ClientError) as exc:
        raise UserError(
            f"--address: no Ray job server answers at {address} "
            f"({exc.__class__.__name__}); is the head up and its dashboard port reachable?"
        ) from None
    except RuntimeError as exc:  # the server answered with an error status
        text = " ".join(str(exc).split())
        raise UserError(f"job server at {address}: {text}") from None


def job_server_address(address: str | None) -> str:
    """The job server's URL: ``--address``, else ``RAY_ADDRESS``; it must be http(s)://HOST:PORT."""
    value = environment.ray_address(address) or ""
    if not value:
        raise UserError("--address: give the head's job server, e.g. http://127.0.0.1:8265")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(
            f"--address: {value!r} is not a job server address; use http://HEAD:8265 "
            "(the Ray dashboard port)"
        )
    return value.rstrip("/")


def connect(address: str | None, token: str | None = None) -> Any:
    """A :class:`JobSubmissionClient` on ``address`` whose token the server has accepted.

    Ray's constructor asks the server for its version with the token, so a wrong token or an
    absent server fails here, before anything is uploaded.
    """
    import logging

    from ray.job_submission import JobSubmissionClient

    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    url = job_server_address(address)
    token = token if token is not None else environment.ray_auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _talking_to(url):
        return JobSubmissionClient(url, headers=headers)


def cluster_output_dir(config: StudyConfig, output_dir: str | None = None) -> str:
    """Where the study writes on the cluster: a path every node sees.

    A relative path would land in the job's working dir, a temporary folder of the head alone,
    so it is taken relative to :data:`CLUSTER_WORKDIR`. Cluster paths are POSIX paths whatever
    this machine is.
    """
    path = PurePosixPath(output_dir or config.output_dir)
    return str(path if path.is_absolute() else PurePosixPath(CLUSTER_WORKDIR) / path)


def default_study_name(config: StudyConfig) -> str:
    """NAME-timestamp, as ``gradsweep run`` names a study, but chosen here so it can be shown."""
    return f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _runtime_env(tracking_uri: str | None, stop_grace_s: int) -> dict[str, Any]:
    env = {"RAY_JOB_STOP_WAIT_TIME_S": str(stop_grace_s)}
    if tracking_uri:  # an environment variable: kept out of the entrypoint that lists show
        env["GRADSWEEP_TRACKING_URI"] = tracking_uri
    return {"env_vars": env}


def submit_study(
    client: Any,
    config: StudyConfig,
    *,
    study: str,
    tracking_uri: str | None = None,
    output_dir: str | None = None,
    stop_grace_s: int = STOP_GRACE_S,
) -> str:
    """Submit ``config`` as ``gradsweep run`` on the cluster; returns the job id."""
    resolved = config.model_dump(mode="json")
    resolved["output_dir"] = cluster_output_dir(config, output_dir)
    runtime_env = _runtime_env(tracking_uri, stop_grace_s)
    metadata = {
        STUDY_KEY: study,
        CONFIG_KEY: config.name,
        TRIALS_KEY: str(config.num_samples),
        TRACKING_KEY: _redact(tracking_uri),
    }
    command = ["gradsweep", "run", CONFIG_FILE, "--address", "auto", "--study", study]
    with tempfile.TemporaryDirectory(prefix="gradsweep-job-") as tmp:
        (Path(tmp) / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
        runtime_env["working_dir"] = tmp
        return client.submit_job(
            entrypoint=shlex.join(command), runtime_env=runtime_env, metadata=metadata
        )


def submit_resume(
    client: Any,
    study: str,
    *,
    tracking_uri: str | None = None,
    num_samples: str = "",
    stop_grace_s: int = STOP_GRACE_S,
) -> str:
    """Submit ``gradsweep resume --study STUDY`` on the cluster; returns the job id."""
    metadata = {
        STUDY_KEY: study,
        CONFIG_KEY: "resume",
        TRIALS_KEY: num_samples,
        TRACKING_KEY: _redact(tracking_uri),
    }
    command = ["gradsweep", "resume", "--study", study, "--address", "auto"]
    return client.submit_job(
        entrypoint=shlex.join(command),
        runtime_env=_runtime_env(tracking_uri, stop_grace_s),
        metadata=metadata,
    )


@dataclass
class JobRow:
    """One line of ``gradsweep jobs``."""

    job_id: str
    study: str
    status: str
    started: str
    trials: str
    entrypoint: str


def trials_done(logs: str, total: str = "") -> str:
    """'done/total' from the lines ``gradsweep run`` prints into its log, '' if none yet."""
    found = _DONE.findall(logs)
    if found:
        done, of = found[-1]
        return f"{done}/{of}"
    summary = _SUMMARY.findall(logs)
    if summary:
        return f"{summary[-1]}/{total or summary[-1]}"
    return f"0/{total}" if total else ""


def _started(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def list_jobs(client: Any, everything: bool = False) -> list[JobRow]:
    """The cluster's gradsweep jobs (every job with ``everything``), newest first.

    Trials done come from each study's own log (one request per job): no MLflow query, and it
    works for a study whose tracking store this machine cannot reach.
    """
    rows = []
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    for job in jobs:
        meta = job.metadata or {}
        if STUDY_KEY not in meta and not everything:
            continue
        job_id = job.submission_id or job.job_id or "-"
        trials = ""
        if STUDY_KEY in meta and job.submission_id:
            logs = client.get_job_logs(job.submission_id)
            trials = trials_done(logs, meta.get(TRIALS_KEY, ""))
        rows.append(
            JobRow(
                job_id,
                meta.get(STUDY_KEY, "-"),
                str(job.status),
                _started(job.start_time),
                trials or "-",
                job.entrypoint,
            )
        )
    return rows


def find_job(client: Any, job: str) -> Any:
    """The job ``job`` names: a submission id, or a study name (its newest job)."""
    from ray.exceptions import AuthenticationError

    try:
        return client.get_job_info(job)
    except AuthenticationError:
        raise
    except RuntimeError:  # no such id: maybe a study name
        pass
    matches = [j for j in client.list_jobs() if (j.metadata or {}).get(STUDY_KEY) == job]
    if not matches:
        raise UserError(f"{job!r} is neither a job id nor a study submitted to this cluster")
    return max(matches, key=lambda j: j.start_time or 0)


def follow(client: Any, job_id: str, write: Callable[[str], Any]) -> str:
    """Write the job's log as it grows until the job ends; returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
    # The log stream ends with the job; its status may lag behind by a poll.
    status = client.get_job_status(job_id)
    for _ in range(50):
        if status.is_terminal():
            break
        time.sleep(0.2)
        status = client.get_job_status(job_id)
    return str(status)


def stop(client: Any, job_id: str, timeout_s: float | None = None) -> str:
    """Ask Ray to stop the job and wait until it has (the study closes its runs meanwhile).

    Returns the final status, or the current one if ``timeout_s`` passed first.
    """
    client.stop_job(job_id)
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else STOP_GRACE_S + 30)
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return str(status)


def talking_to(address: str | None) -> AbstractContextManager[None]:
    """The error translation of :func:`connect`, for the calls after it (CLI use)."""
    return _talking_to(job_server_address(address))


@contextmanager
def session(address: str | None) -> Iterator[tuple[str, Any]]:
    """The job server's address and a connected client, with the calls made inside turned into
    one-line :class:`UserError` as :func:`connect` does (what every job command needs)."""
    url = job_server_address(address)
    client = connect(url)
    with _talking_to(url):
        yield url, client
