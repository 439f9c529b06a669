"""Process settings a study needs, and where each location comes from (flag, env, config, default).

Importing ``search`` changes nothing: :func:`configure` applies the settings when a study (or a
replay) starts. Every environment fallback is resolved here and nowhere else.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from spaces import StudyConfig

#: Settings for the libraries a study drives; ``setdefault``, so a user's own value wins.
_SETTINGS = {
    # Tune's new console output prints tables even at verbose=0; gradsweep shows its own progress.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Tune swallows the first Ctrl+C and returns normally: the study would look FINISHED.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # The log monitor re-lists the session's log folder often to forward worker output, which
    # gradsweep never asks for (log_to_driver=False): the slow listing interval is enough.
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    # Results live in MLflow; Ray's CSV/JSON/TensorBoard loggers would write every result again.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Tune snapshots its experiment state (every trial's last result and metric statistics, as
    # JSON) on the driver's loop every 10 s or more, stalling every trial's report meanwhile;
    # gradsweep never restores it (resume reads Optuna, MLflow and the checkpoints): once an
    # hour, and always at the end.
    "TUNE_GLOBAL_CHECKPOINT_S": "3600",
    # A function trainable's tune.report waits until the driver's loop has taken the result and
    # asked for the next one: with short epochs every trial idles for that round trip, and the
    # loop handles a result at a time. Buffered, a trial trains on and the driver takes up to
    # a second's results at once (a checkpoint or the trial's end sends them at once; ASHA sees
    # them up to a second late).
    "TUNE_RESULT_BUFFER_LENGTH": "100",
    "TUNE_RESULT_BUFFER_MIN_TIME_S": "1",
    # The journal does the retrying; MLflow's own HTTP retries would hide an outage for minutes.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # A study talks to the hosts the user named and nothing else (an offline laptop, a cluster
    # behind a firewall): no usage reports from MLflow or Ray.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Reading a study's config.json back would draw a "Downloading artifacts" bar.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Over HTTP, every ended run would cost a get_run round trip to print two link lines.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
#: Loggers whose messages would land in the middle of gradsweep's own output.
_QUIET_LOGGERS = (
    # the ResultGrid that fit() returns (which gradsweep does not read) finds no logger files
    "ray.tune.analysis.experiment_analysis",
    # a new local cluster's token-auth notice
    "ray._private.authentication.authentication_token_setup",
)


def configure() -> None:
    """Apply the settings above to this process (idempotent)."""
    for key, value in _SETTINGS.items():
        os.environ.setdefault(key, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_address(flag: str | None) -> str | None:
    """``--address``, else ``RAY_ADDRESS`` (as ``ray.init()`` reads it), else None = local."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def ray_auth_token() -> str:
    """``RAY_AUTH_TOKEN``, the token a job server wants, else ``""`` (Ray's own lookup then)."""
    return os.environ.get("RAY_AUTH_TOKEN", "")


def with_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://``: SQLAlchemy 2.1 would pick psycopg 3,
    which gradsweep does not install; psycopg2 is what it ships with."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def default_tracking_uri(output_dir: Path) -> str:
    """``sqlite:///<output>/mlflow.db``: MLflow 3 refuses its old ./mlruns file store."""
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def tracking_uri(flag: str | None, configured: str | None, output_dir: Path) -> str:
    """``--tracking-uri``, else ``GRADSWEEP_TRACKING_URI``, else the config's, else the default."""
    uri = flag or os.environ.get("GRADSWEEP_TRACKING_URI") or configured
    return with_driver(uri or default_tracking_uri(output_dir))


def optuna_storage(configured: str | None, output_dir: Path) -> str:
    """``GRADSWEEP_OPTUNA_STORAGE`` (where a password may live), else the config's, else
    ``sqlite:///<output>/optuna.db``."""
    url = os.environ.get("GRADSWEEP_OPTUNA_STORAGE") or configured
    return with_driver(url or f"sqlite:///{output_dir / 'optuna.db'}")


@dataclass(frozen=True)
class Locations:
    """Where a study's records go."""

    output: Path  # absolute: databases, Ray results, reports, spool
    tracking_uri: str
    optuna_storage: str


def locate(config: StudyConfig, tracking_uri_flag: str | None = None) -> Locations:
    """The study's output dir, tracking URI and Optuna storage (see the functions above)."""
    output = Path(config.output_dir).expanduser().resolve()
    return Locations(
        output,
        tracking_uri(tracking_uri_flag, config.tracking.uri, output),
        optuna_storage(config.optuna_storage, output),
    )


def redact(url: str | None) -> str | None:
    """A URL without its password: secrets never reach MLflow, logs or the terminal."""
    if not url:
        return url
    password = urlparse(url).password
    return url.replace(f":{password}@", ":***@") if password else url
