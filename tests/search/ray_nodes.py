"""Processes the cluster tests start: Ray nodes from deploy/*.sh, MLflow, drivers.

Each is started in a new session and stopped by killing its process group: never ``ray stop``,
which would stop every Ray on the machine. Shared by ``test_cluster.py`` and ``test_jobs.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from search.warm_ray import PER_NODE_PORTS, free_ports, session_members

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent  # ray, mlflow of the Python running the tests
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


@dataclass
class Service:
    """A command started in a new session (its own process group), logging to ``log``."""

    name: str
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], log: Path) -> Service:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, proc, log)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")

    def signal(self, sig: int) -> None:
        """``sig`` to the leader's group and to every other process of its session (the Ray
        workers' own groups). Safe by PID: until the leader is reaped its pid, the session id,
        can't be reused."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            for pid in self.members():
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def members(self) -> list[int]:
        return session_members(self.proc.pid)


def marked(marker: bytes) -> list[int]:
    """Processes other than this one whose environment holds ``marker`` (this run's token)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def stop_all(services: list[Service], marker: bytes, grace_s: float = 5.0) -> None:
    """SIGTERM every session, SIGKILL what is left after ``grace_s``, then reap the leaders.

    The leaders are reaped last: until then their pids, hence the session ids, can't be reused,
    so the signals only reach processes this module started. Then a sweep by PID for anything
    that carries this run's token yet left its session (a job's driver runs in a session of its
    own, and must be gone by then).
    """
    for service in services:
        service.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(s.members() for s in services) and time.monotonic() < deadline:
        time.sleep(0.2)
    for service in services:
        service.signal(signal.SIGKILL)
    # A killed process with many threads takes a moment to go: not a stray while it is going.
    deadline = time.monotonic() + 10
    while any(s.members() for s in services) and time.monotonic() < deadline:
        time.sleep(0.2)
    for service in services:
        service.proc.wait(timeout=30)
    strays = marked(marker)
    seen = {pid: _cmdline(pid) for pid in strays}
    for pid in strays:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    left: list[int] = []
    while time.monotonic() < deadline:
        left = [p for s in services for p in s.members()] + marked(marker)
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"processes {left} survived SIGKILL"
    assert not strays, f"processes {seen} had left their session (killed by PID)"


def wait_for(
    what: str, ready: Callable[[], bool], services: list[Service], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for service in services:
            service.check_alive()
        if ready():
            return
        time.sleep(0.5)
    logs = "\n".join(s.tail() for s in services)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s\n{logs}")


def reload_ray_auth() -> None:
    """Make this process's Ray read RAY_AUTH_* again.

    Ray caches the mode and token at the first ``ray.init`` of a process (and a local
    ``ray.init`` turns token mode on by itself), so without this a driver that ran a local Ray
    earlier in this pytest process would present another token.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def base_env() -> dict[str, str]:
    """This environment without Ray auth, RAY_ADDRESS or MLflow settings; our venv first."""
    env = {
        k: v for k, v in os.environ.items() if k not in AUTH_VARS and not k.startswith("MLFLOW_")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@dataclass
class RayNodes:
    """A head and one worker started by :func:`start_ray_nodes`."""

    gcs_address: str
    head: Service
    worker: Service
    worker_ports: list[int]

    @property
    def services(self) -> list[Service]:
        return [self.head, self.worker]


def start_ray_nodes(
    root: Path,
    token: str,
    env: dict[str, str],
    services: list[Service],
    dashboard_port: int | None = None,
) -> RayNodes:
    """deploy/start-head.sh and deploy/start-worker.sh, 1 CPU per node, token auth, in the
    foreground (each node's processes are its script's process group); temp dirs under ``root``.

    With ``dashboard_port`` the head runs the dashboard (and its job server) on 127.0.0.1.
    Each node is appended to ``services`` as it starts, for the caller to stop with
    :func:`stop_all` even when this fails half-way; returns once the head is up (the worker may
    still be joining).
    """
    gcs, *head_ports = free_ports(1 + len(PER_NODE_PORTS))
    worker_ports = free_ports(len(PER_NODE_PORTS))
    ray_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_BLOCK": "true"}
    ray_env["RAY_NUM_CPUS"] = "1"
    head_env = {**ray_env, "RAY_TEMP_DIR": str(root / "head"), "RAY_HEAD_PORT": str(gcs)}
    if dashboard_port is None:
        head_env["RAY_INCLUDE_DASHBOARD"] = "false"
    else:
        head_env |= {"RAY_DASHBOARD_HOST": "127.0.0.1", "RAY_DASHBOARD_PORT": str(dashboard_port)}

    def flags(ports: list[int]) -> list[str]:
        return [a for pair in zip(PER_NODE_PORTS, map(str, ports), strict=True) for a in pair]

    head = Service.start(
        "ray-head", [str(DEPLOY / "start-head.sh"), *flags(head_ports)], head_env, root / "head.log"
    )
    services.append(head)
    wait_for("ray head", (root / "head" / "ray_current_cluster").exists, services, timeout_s=60)
    worker_env = {**ray_env, "RAY_TEMP_DIR": str(root / "worker")}
    worker_env["RAY_HEAD_ADDRESS"] = f"127.0.0.1:{gcs}"
    worker = Service.start(
        "ray-worker",
        [str(DEPLOY / "start-worker.sh"), *flags(worker_ports)],
        worker_env,
        root / "worker.log",
    )
    services.append(worker)
    return RayNodes(f"127.0.0.1:{gcs}", head, worker, worker_ports)
