"""The warm Ray: ``gradsweep ray start`` once, later runs attach to it, ``gradsweep ray stop``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from search import warm_ray

BIN = Path(sys.executable).parent


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state folder of the test's own: a user's warm Ray is neither used nor stopped."""
    folder = tmp_path / "state"
    monkeypatch.setenv("GRADSWEEP_STATE_DIR", str(folder))
    return folder


def _record(state: Path, proc: subprocess.Popen, temp_dir: Path, python: str) -> None:
    state.mkdir(parents=True, exist_ok=True)
    record = warm_ray.WarmRay(
        address="127.0.0.1:1",
        token="t" * 64,
        pid=proc.pid,
        cpus=1,
        temp_dir=str(temp_dir),
        python=python,
        log=str(temp_dir / "ray-start.log"),
        started="2026-01-01T00:00:00",
        boot_id=Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    )
    warm_ray.state_file().write_text(json.dumps(record.__dict__))


def test_a_record_is_used_only_while_its_process_lives_and_with_this_python(
    state: Path, tmp_path: Path
) -> None:
    """The record names a live process (its session is what stop ends) and the interpreter whose
    gradsweep its workers run: a study of another interpreter starts a Ray of its own."""
    temp_dir = tmp_path / "gradsweep-ray-x"
    temp_dir.mkdir()
    # stands in for `ray start --block`: a new session, the temp dir in its command line
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(temp_dir)],
        start_new_session=True,
    )
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    while str(temp_dir).encode() not in cmdline.read_bytes():  # until it has exec'd
        time.sleep(0.01)
    try:
        _record(state, proc, temp_dir, "/elsewhere/bin/python")
        assert warm_ray.running() is not None
        assert warm_ray.usable() is None
        _record(state, proc, temp_dir, sys.executable)
        assert warm_ray.usable() is not None
        stopped = warm_ray.stop()
        assert stopped is not None and stopped.pid == proc.pid
        proc.wait(timeout=15)  # (stop reaped it: it started it, in this process)
        assert not Path(f"/proc/{proc.pid}").exists()
        assert not warm_ray.state_file().exists() and not temp_dir.exists()
        assert warm_ray.running() is None and warm_ray.stop() is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_record_whose_process_has_gone_is_forgotten(state: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    temp_dir = tmp_path / "gradsweep-ray-gone"
    temp_dir.mkdir()
    _record(state, proc, temp_dir, sys.executable)
    assert warm_ray.running() is None
    assert not warm_ray.state_file().exists() and not temp_dir.exists()
    # the record of another boot (a reused pid): not this warm Ray, and nothing signalled
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(temp_dir)])
    try:
        _record(state, alive, temp_dir, sys.executable)
        record = json.loads(warm_ray.state_file().read_text())
        warm_ray.state_file().write_text(json.dumps({**record, "boot_id": "another boot"}))
        assert warm_ray.running() is None and warm_ray.stop() is None
        assert alive.poll() is None
    finally:
        alive.kill()
        alive.wait()
    warm_ray.state_file().write_text("{not json")
    assert warm_ray.running() is None
    assert not warm_ray.state_file().exists()


def test_bad_cpus_is_one_line_exit_2(state: Path) -> None:
    done = subprocess.run(
        [str(BIN / "gradsweep"), "ray", "start", "--cpus", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --cpus: 0 is not a number of CPUs (1 or more)"
    ]
    assert not state.exists() or not warm_ray.state_file().exists()


def _gradsweep(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "gradsweep"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
        **kwargs,  # type: ignore[call-overload]
    )


def _run_pid(config: Path, *flags: str) -> tuple[int, str]:
    """``gradsweep run`` whose pid is known (a driver's log in Ray's session names it)."""
    proc = subprocess.Popen(
        [str(BIN / "gradsweep"), "run", str(config), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return proc.pid, output


def test_runs_attach_to_the_warm_ray_and_leave_it_running(state: Path, tmp_path: Path) -> None:
    """`gradsweep ray start`; two runs drive the warm Ray (their drivers' logs are in its
    session) and leave it running; `--address local` runs on a Ray of its own; `gradsweep ray
    stop` ends every process of it by PID and forgets it."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "search": {"activations": ["relu", "tanh"], "initializers": ["he_normal"]},
                "model": {"depth": 2, "width": 8},
                "training": {"epochs": 1},
                "num_samples": 2,
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    started = _gradsweep("ray", "start", "--cpus", "2")
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        warm = warm_ray.running()
        assert warm is not None and warm.address.startswith("127.0.0.1:")
        assert warm_ray.state_file().stat().st_mode & 0o777 == 0o600  # it holds the token
        again = _gradsweep("ray", "start")
        assert again.returncode == 2
        assert "a warm Ray is running already" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
        daemons = set(warm_ray.processes(warm))

        logs = Path(warm.temp_dir) / "session_latest" / "logs"
        for _ in range(2):
            pid, output = _run_pid(config)
            assert f"Ray: the warm Ray at {warm.address}" in output
            assert list(logs.glob(f"python-core-driver-*_{pid}.log")), "it drove the warm Ray"
            assert "2 trials in" in output
            assert warm_ray.running() == warm
            assert daemons <= set(warm_ray.processes(warm))  # nothing of it was stopped
        # a study running on it: stop is refused, the study goes on
        attached = subprocess.Popen(
            [str(BIN / "gradsweep"), "run", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while attached.pid not in warm_ray.drivers(warm) and time.monotonic() < deadline:
            assert attached.poll() is None, attached.communicate()[0][-3000:]
            time.sleep(0.1)
        refused = _gradsweep("ray", "stop")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"a study is running on the warm Ray (pid {attached.pid})" in refused.stderr
        output, _ = attached.communicate(timeout=300)
        assert attached.returncode == 0 and "2 trials in" in output, output[-3000:]
        assert warm_ray.drivers(warm) == []

        pid, output = _run_pid(config, "--address", "local")
        assert "warm Ray" not in output and "2 trials in" in output
        assert not list(logs.glob(f"python-core-driver-*_{pid}.log"))

        status = _gradsweep("ray", "status")
        assert status.returncode == 0 and warm.address in status.stdout
    finally:
        stopped = _gradsweep("ray", "stop")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert f"stopped the warm Ray at {warm.address}" in stopped.stdout
    deadline = time.monotonic() + 15
    while warm_ray.processes(warm) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert warm_ray.processes(warm) == []
    assert not Path(warm.temp_dir).exists()
    assert _gradsweep("ray", "status").returncode == 1
