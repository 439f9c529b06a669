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
import fcntl
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
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass
from pathlib import Path

from search import environment
from search.errors import UserError
from search.ray_session import LOOPBACK, NO_PRESTART

#: ``ray start`` flags of the ports every node opens: two Ray nodes on one machine (a warm Ray
#: and a study's own, ``--address local``) each need their own, not the fixed defaults.
PER_NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)
#: The warm Ray's: a head's too (its GCS, and the client server whose default, 10001, is a real
#: cluster head's).
_NODE_PORTS = ("--port", *PER_NODE_PORTS, "--ray-client-server-port")
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
    boot_id: str  # /proc/sys/kernel/random/boot_id when it started


def state_dir() -> Path:
    """``GRADSWEEP_STATE_DIR``, else ``$XDG_STATE_HOME/gradsweep``, else
    ``~/.local/state/gradsweep``."""
    explicit = os.environ.get("GRADSWEEP_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(base) / "gradsweep"


def state_file() -> Path:
    """This machine's record: a home folder shared by several machines holds one per host."""
    return state_dir() / f"warm-ray-{socket.gethostname()}.json"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One look at, start, stop or clean-up of the record at a time on this machine: two starts
    at once would both find no warm Ray, and one of them would run unrecorded."""
    path = state_dir() / f".warm-ray-{socket.gethostname()}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def running() -> WarmRay | None:
    """The warm Ray, if one is running; a record of one that has gone, or that can't be read,
    is removed."""
    if not state_file().exists():
        return None
    with _locked():
        return _running()


def _running() -> WarmRay | None:
    """:func:`running`, with the lock held."""
    warm = _read()
    if warm is not None and _alive(warm):
        return warm
    state_file().unlink(missing_ok=True)
    if warm is not None:
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
    does not come up within ``timeout_s``, or the start is interrupted, whatever it started is
    stopped again.
    """
    if num_cpus is not None and num_cpus < 1:
        raise UserError(f"--cpus: {num_cpus} is not a number of CPUs (1 or more)")
    with _locked():
        warm = _running()
        if warm is not None:
            raise UserError(
                f"a warm Ray is running already ({warm.address}, pid {warm.pid}, {warm.cpus} "
                "CPUs); 'gradsweep ray stop' stops it"
            )
        warm = _launch(num_cpus or os.cpu_count() or 1, timeout_s)
        _write_state(warm)
    return warm


def stop(force: bool = False) -> WarmRay | None:
    """Stop the warm Ray and forget it; None if none was running.

    Refused while a study runs on it (its driver would lose Ray and end without closing its
    runs), unless ``force``; refused, keeping the record, if any of its processes survives.
    """
    with _locked():
        warm = _running()
        if warm is None:
            return None
        studies = drivers(warm)
        if studies and not force:
            raise UserError(
                f"a study is running on the warm Ray (pid {', '.join(map(str, studies))}); "
                "stop it first (Ctrl+C), or 'gradsweep ray stop --force'"
            )
        left = _end(warm)
        if left:
            raise UserError(f"processes {left} of the warm Ray survived SIGKILL; record kept")
        state_file().unlink(missing_ok=True)
        _remove(warm.temp_dir)
    return warm


def drivers(warm: WarmRay) -> list[int]:
    """Processes driving the warm Ray now (a study attached to it): each driver leaves a log
    named by its pid in the session's log folder."""
    logs = Path(warm.temp_dir) / "session_latest" / "logs"
    pids = {int(p.stem.rsplit("_", 1)[1]) for p in logs.glob("python-core-driver-*_*.log")}
    return sorted(pid for pid in pids if _is_driver(pid, warm))


def _is_driver(pid: int, warm: WarmRay) -> bool:
    """``pid`` lives and holds a file of the warm Ray's session open (a driver keeps its
    core-driver log open while it is connected)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    return pid != os.getpid() and any(_points_into(fd, warm.temp_dir) for fd in fds)


def _points_into(fd: Path, folder: str) -> bool:
    try:
        return os.readlink(fd).startswith(folder)
    except OSError:
        return False


def _launch(cpus: int, timeout_s: float) -> WarmRay:
    """``ray start --block`` in a session of its own, up and answering; or nothing left."""
    environment.configure()  # the settings a study gives its Ray, for this one's processes too
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
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # in no argv, no log
    log = Path(temp_dir) / "ray-start.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=temp_dir,  # holds no user folder busy for the days it may run
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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
        boot_id=_boot_id(),
    )
    deadline = time.monotonic() + timeout_s
    try:
        while _STARTED not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise UserError(f"the warm Ray did not start: {tail[0]}")
            time.sleep(0.1)
    except BaseException:  # not started, timed out, or Ctrl+C: nothing is left running
        _end(warm)
        proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return warm


def processes(warm: WarmRay) -> list[int]:
    """Every live process of the warm Ray: its daemons and the workers running trials."""
    return session_members(warm.pid)


def _end(warm: WarmRay, grace_s: float = 10.0) -> list[int]:
    """SIGTERM to the node's processes, then SIGKILL to what is left, again until none is or
    ``grace_s`` more passed; returns the survivors.

    By session: Ray starts each worker in a process group of its own, but in the session of the
    ``ray start`` process, whose pid is the session id.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(warm.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while session_members(warm.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    deadline = time.monotonic() + grace_s
    while (left := session_members(warm.pid)) and time.monotonic() < deadline:
        for pid in left:  # a process forked meanwhile is in the next pass
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):  # started by this process: reap it
        os.waitpid(warm.pid, os.WNOHANG)
    return session_members(warm.pid)


def _alive(warm: WarmRay) -> bool:
    """The recorded process is still this warm Ray's ``ray start``: same boot, its own folder
    in its command line (not a reused pid), and its session still has processes."""
    if warm.boot_id != _boot_id() or not Path(warm.temp_dir).name.startswith(_PREFIX):
        return False
    try:
        argv = Path(f"/proc/{warm.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return warm.temp_dir.encode() in argv and session_members(warm.pid) != []


def _boot_id() -> str:
    """This boot of this machine (pids are reused across boots)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _read() -> WarmRay | None:
    """This machine's record, or None (an unreadable one is no record)."""
    try:
        return WarmRay(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


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
