"""A local Ray kept running between studies: ``gradsweep ray start`` starts it once, and every
later ``gradsweep run`` (or resume, confirm) on this machine without ``--address`` attaches to it
instead of starting and stopping a Ray of its own, which saves Ray's start and stop on each study
(``benchmarks/README.md`` measures how much).

It is as closed as the embedded Ray of :mod:`search.ray_session`: its node is addressed as
127.0.0.1 and it requires a token of its own, kept in a state file only this user can read,
where a study that attaches reads it. ``gradsweep ray stop`` ends it by PID (its own session of
processes), never with ``ray stop``, which would stop every Ray on the machine.

Its trials run in processes that the warm Ray starts, so they see the environment that
``gradsweep ray start`` was given, not the one of the study that uses them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass
from pathlib import Path

from search import environment
from search.errors import UserError
from search.ray_session import LOOPBACK, NO_PRESTART

#: ``ray start`` flags of the ports a node opens: each its own free port, so a warm Ray and a
#: study's embedded one (``--address local``) never reach for the same fixed default.
_NODE_PORTS = (
    "--port",
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--ray-client-server-port",  # a head's default, 10001, is a real cluster head's too
)
_PREFIX = "gradsweep-ray-"  # of the folder Ray keeps its session in
#: What ``ray start`` prints once every process of the node is up.
_STARTED = b"Ray runtime started"


@dataclass(frozen=True)
class WarmRay:
    """The record of a running warm Ray, as its state file holds it."""

    address: str
    token: str
    pid: int  # the ``ray start --block`` process: its session holds every process of the node
    cpus: int
    temp_dir: str
    python: str  # the interpreter whose Ray runs it: a study with another one can't attach
    log: str
    started: str


def state_dir() -> Path:
    """``GRADSWEEP_STATE_DIR``, else ``$XDG_STATE_HOME/gradsweep``, else
    ``~/.local/state/gradsweep``."""
    explicit = os.environ.get("GRADSWEEP_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(base) / "gradsweep"


def state_file() -> Path:
    return state_dir() / "warm-ray.json"


def running() -> WarmRay | None:
    """The warm Ray, if one is running; the record of one that has gone is removed."""
    path = state_file()
    try:
        warm = WarmRay(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        path.unlink(missing_ok=True)  # unreadable: nothing can attach to it
        return None
    if _alive(warm):
        return warm
    path.unlink(missing_ok=True)
    _remove(warm.temp_dir)
    return None


def usable() -> WarmRay | None:
    """The warm Ray a study started here would attach to: a running one whose workers run this
    interpreter (another one's gradsweep and Ray may differ)."""
    warm = running()
    return warm if warm is not None and warm.python == sys.executable else None


def start(num_cpus: int | None = None, timeout_s: float = 120.0) -> WarmRay:
    """Start the warm Ray (``num_cpus`` logical CPUs: the machine's by default) and record it.

    Refused if one is running already. Returns once every process of the node is up; if it
    does not come up within ``timeout_s``, whatever it started is stopped again.
    """
    if num_cpus is not None and num_cpus < 1:
        raise UserError(f"--cpus: {num_cpus} is not a number of CPUs (1 or more)")
    warm = running()
    if warm is not None:
        raise UserError(
            f"a warm Ray is running already ({warm.address}, pid {warm.pid}, {warm.cpus} CPUs); "
            "'gradsweep ray stop' stops it"
        )
    environment.configure()  # the settings a study gives its Ray, for this one's processes too
    cpus = num_cpus or os.cpu_count() or 1
    token = secrets.token_hex(32)
    temp_dir = tempfile.mkdtemp(prefix=_PREFIX)  # short: Ray's sockets live under it
    ports = free_ports(len(_NODE_PORTS))
    ray_bin = Path(sys.executable).with_name("ray")
    argv = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--block"]
    argv += ["--node-ip-address", LOOPBACK, "--include-dashboard", "false"]
    argv += ["--disable-usage-stats", "--num-cpus", str(cpus), "--temp-dir", temp_dir]
    argv += ["--system-config", json.dumps(NO_PRESTART)]
    for flag, port in zip(_NODE_PORTS, ports, strict=True):
        argv += [flag, str(port)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    log = Path(temp_dir) / "ray-start.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    warm = WarmRay(
        address=f"{LOOPBACK}:{ports[0]}",
        token=token,
        pid=proc.pid,
        cpus=cpus,
        temp_dir=temp_dir,
        python=sys.executable,
        log=str(log),
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    deadline = time.monotonic() + timeout_s
    while _STARTED not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            _end(warm)
            proc.wait(timeout=30)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise UserError(f"the warm Ray did not start: {tail[0]}")
        time.sleep(0.1)
    _write_state(warm)
    return warm


def stop() -> WarmRay | None:
    """Stop the warm Ray and forget it; None if none was running."""
    warm = running()
    if warm is None:
        return None
    _end(warm)
    state_file().unlink(missing_ok=True)
    _remove(warm.temp_dir)
    return warm


def processes(warm: WarmRay) -> list[int]:
    """Every live process of the warm Ray: its daemons and the workers running trials."""
    return session_members(warm.pid)


def _end(warm: WarmRay, grace_s: float = 10.0) -> None:
    """SIGTERM to the node's processes, SIGKILL to what is left after ``grace_s``.

    By session: Ray starts each worker in a process group of its own, but in the session of the
    ``ray start`` process, whose pid is the session id.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(warm.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while session_members(warm.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in session_members(warm.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while session_members(warm.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):  # started by this process: reap it
        os.waitpid(warm.pid, os.WNOHANG)


def _alive(warm: WarmRay) -> bool:
    """The recorded process is still this warm Ray's ``ray start`` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{warm.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return warm.temp_dir.encode() in cmdline and session_members(warm.pid) != []


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``, from /proc.

    By session, not process group: Ray starts each worker in a process group of its own, but in
    its raylet's session."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _remove(temp_dir: str) -> None:
    """The warm Ray's folder (only one :func:`start` made: a damaged record can't name another)."""
    if Path(temp_dir).name.startswith(_PREFIX):
        shutil.rmtree(temp_dir, ignore_errors=True)


def _write_state(warm: WarmRay) -> None:
    """The record, readable by this user only (it holds the token), replaced atomically."""
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".warm-ray-")
    with os.fdopen(fd, "w") as handle:  # mkstemp creates it 0600
        json.dump(asdict(warm), handle)
    os.replace(tmp, path)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together while choosing)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(n)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]
