"""Nothing lost: a SIGKILLed driver resumes, an MLflow outage loses no metric point.

Real processes: the driver is `python -m search.cli` in its own process group (so killing it
takes its embedded Ray with it, and nothing else); the MLflow server is deploy/start-mlflow.sh.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.schema import OUTCOME_TAG, PARENT_TAG, RESUMED_FROM_TAG, STUDY_TAG

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(
    argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _wait(what: str, ready: Callable[[], bool], timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not reached in {timeout_s:.0f} s\n{tail}")


def _config(tmp_path: Path, name: str, **extra: object) -> Path:
    config = {
        "name": name,
        "data": {"name": "synthetic", "options": {"n_samples": 20000, "n_features": 40}},
        "search": {
            "activations": ["relu", "elu", "tanh"],
            "initializers": ["he_normal"],
            "lr": 0.003,
        },
        "model": {"depth": 4, "width": 128},
        "training": {"epochs": 6, "batch_size": 32, "checkpoint_min_seconds": 0},
        "diagnostics": {"enabled": False},
        "num_samples": 6,
        "max_concurrent": 2,
        "output_dir": str(tmp_path / "out"),
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _mid_trial(ray_dir: Path, number: int, epochs: int = 6) -> bool:
    """Trial ``number`` has checkpointed 2 or 3 of its ``epochs`` epochs: it can resume from a
    checkpoint and has epochs left. Not "at least 2": Optuna learns of a trial's end up to a
    second after its last checkpoint (Tune buffers results), so a trial with all its
    checkpoints can still look RUNNING and then finish before the signal lands."""
    done = len(list(ray_dir.glob(f"t{number:03d}_*/checkpoint_*/checkpoint.pt")))
    return 2 <= done <= epochs - 3


def _children(client: mlflow.MlflowClient, study: str):
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`gradsweep.role` = 'study'",
    )
    assert len(parents) == 1, "exactly one parent run per study"
    parent = parents[0]
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )
    return parent, children


def test_driver_loss_then_resume(tmp_path: Path) -> None:
    # Trials k and k+3 are twins (same configuration, same seed): a resumed trial must end exactly
    # where its uninterrupted twin ended. Two trials run at a time, so twins are never both cut.
    twins = [{"activation": a} for a in ("relu", "elu", "tanh") * 2]
    config = _config(
        tmp_path,
        "drv",
        search={
            "activations": ["relu", "elu", "tanh"],
            "initializers": ["he_normal"],
            "lr": 0.003,
            "enqueue": twins,
        },
    )
    db = tmp_path / "out" / "optuna.db"
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    driver = _start(
        [sys.executable, "-m", "search.cli", "run", str(config), "--study", "drv"], tmp_path, log
    )

    def ready_to_kill() -> bool:
        """Two trials finished, and a running one has checkpointed at least 2 epochs."""
        trials = optuna.load_study(study_name="drv", storage=f"sqlite:///{db}").trials
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        done = sum(t.state in TERMINAL for t in trials)
        ray_dir = tmp_path / "out" / "ray" / "drv"
        return done >= 2 and any(_mid_trial(ray_dir, n) for n in running)

    try:
        _wait("2 finished trials and a running checkpointed one", ready_to_kill, 300, log)
    finally:
        _kill_group(driver)
    before = optuna.load_study(study_name="drv", storage=f"sqlite:///{db}").trials
    finished_before = {t.number for t in before if t.state in TERMINAL}
    interrupted = {t.number for t in before if t.state == TrialState.RUNNING}
    assert finished_before and interrupted and len(before) < 6 + 1
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent_before, children_before = _children(client, "drv")
    ended_before = {
        r.data.tags["optuna.trial_number"]: r.info.end_time
        for r in children_before
        if r.info.status != "RUNNING"
    }

    resume = subprocess.run(
        [sys.executable, "-m", "search.cli", "resume", "--study", "drv", "--tracking-uri", uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]

    after = optuna.load_study(study_name="drv", storage=f"sqlite:///{db}").trials
    assert sorted(t.number for t in after) == list(range(6)), "no duplicate, none missing"
    assert all(t.state in TERMINAL for t in after)
    parent, children = _children(client, "drv")
    assert parent.info.run_id == parent_before.info.run_id
    assert parent.info.status == "FINISHED"
    assert [r for r in children if r.info.status == "RUNNING"] == []
    live = [r for r in children if r.data.tags.get(OUTCOME_TAG) != "interrupted"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in live) == list(range(6))
    for run in live:  # finished trials were not re-run
        number = run.data.tags["optuna.trial_number"]
        if int(number) in finished_before and number in ended_before:
            assert run.info.end_time == ended_before[number]
            assert "gradsweep.resumed" not in run.data.tags
    resumed = [r for r in live if "gradsweep.resumed" in r.data.tags]
    assert {int(r.data.tags["optuna.trial_number"]) for r in resumed} == interrupted
    continued = 0
    for run in resumed:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == list(range(steps[0], 7)), "one point per epoch it ran"
        continued += steps[0] > 1
    assert continued >= 1, "at least one interrupted trial continued from its checkpoint"
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in live}
    for run in resumed:  # resumed == uninterrupted, to 1e-6
        number = int(run.data.tags["optuna.trial_number"])
        twin = by_number[(number + 3) % 6]
        assert twin.data.params["activation"] == run.data.params["activation"]
        mine = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
        theirs = {m.step: m.value for m in client.get_metric_history(twin.info.run_id, "val_loss")}
        for step, value in mine.items():
            assert value == pytest.approx(theirs[step], rel=1e-6, abs=1e-6), f"epoch {step}"
        for key in ("best_val_accuracy", "test_accuracy"):
            assert run.data.metrics[key] == pytest.approx(twin.data.metrics[key], abs=1e-6)
    board = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path))
    assert len(Path(board).read_text().strip().splitlines()) == 7


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=2) as r:
        return r.status == 200


def _mlflow_server(tmp_path: Path) -> tuple[str, list[str], dict[str, str], Path]:
    """URL, command, environment and log of a one-worker ``mlflow server`` (the compose stack's
    start script) on a free loopback port, its store and artifacts in ``tmp_path``."""
    port = _free_port()
    env = {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'server.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow"),
    }
    start = [str(ROOT / "deploy" / "start-mlflow.sh")]
    return f"http://127.0.0.1:{port}", start, env, tmp_path / "server.log"


def test_mlflow_outage_loses_no_metric_point(tmp_path: Path) -> None:
    url, start, server_env, server_log = _mlflow_server(tmp_path)
    server = _start(start, tmp_path, server_log, server_env)
    driver = None
    try:
        _wait("mlflow server", lambda: _healthy(url), 90, server_log)
        config = _config(
            tmp_path, "outage", num_samples=4, training={"epochs": 8, "batch_size": 32}
        )
        log = tmp_path / "driver.log"
        driver = _start(
            [
                sys.executable,
                "-m",
                "search.cli",
                "run",
                str(config),
                "--study",
                "outage",
                "--tracking-uri",
                url,
            ],
            tmp_path,
            log,
        )
        client = mlflow.MlflowClient(tracking_uri=url)
        _wait(
            "first epochs in MLflow",
            lambda: any(
                client.get_metric_history(r.info.run_id, "val_accuracy")
                for r in _children(client, "outage")[1]
            ),
            240,
            log,
        )
        _kill_group(server, signal.SIGTERM)  # the outage: ~10 s without a tracking server
        time.sleep(10)
        server = _start(start, tmp_path, server_log, server_env)
        _wait("mlflow server back", lambda: _healthy(url), 90, server_log)
        assert driver.poll() is None, "the outage must fall inside the search"
        assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
        _, children = _children(client, "outage")
        assert len(children) == 4
        for run in children:
            assert run.info.status == "FINISHED"
            epochs = int(run.data.metrics["epochs_run"])
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
            assert steps == list(range(1, epochs + 1)), f"{run.info.run_name}: {steps}"
        assert not list((tmp_path / "out" / "mlflow-spool").glob("*.jsonl")), "nothing left to sync"
    finally:
        if driver is not None and driver.poll() is None:
            _kill_group(driver)
        _kill_group(server, signal.SIGTERM)


def test_resume_of_a_finished_study_changes_nothing(tmp_path: Path) -> None:
    """Nothing is left to run: the parent keeps its status and end time (the MLflow UI shows
    the study's real duration), and resume says so in one line, without a download bar."""
    from search import run_study
    from spaces import load_config

    config = load_config(
        {
            "name": "done",
            "search": {"activations": ["relu"], "initializers": ["he_normal"], "lr": 0.01},
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": 1},
            "diagnostics": {"enabled": False},
            "num_samples": 2,
            "output_dir": str(tmp_path / "out"),
        }
    )
    result = run_study(config, study_name="done")
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    before, children_before = _children(client, "done")
    assert before.info.status == "FINISHED"
    argv = ["resume", "--study", "done", "--tracking-uri", result.tracking_uri]
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert said == ["nothing to resume: all 2 trials of done have finished"], said
    after, children_after = _children(client, "done")
    assert (after.info.status, after.info.end_time) == (before.info.status, before.info.end_time)
    assert after.data.tags == before.data.tags
    assert sorted((r.info.run_id, r.info.end_time) for r in children_after) == sorted(
        (r.info.run_id, r.info.end_time) for r in children_before
    )


def test_resume_continues_the_sampler(tmp_path: Path) -> None:
    """After a SIGKILLed driver, the resumed search draws new configurations: a sampler seeded
    as at the start would hand out trials #0, #1, ... again."""
    config = _config(
        tmp_path,
        "cont",
        search={
            "activations": ["relu", "elu", "tanh"],
            "initializers": ["he_normal"],
            "lr": {"low": 1e-3, "high": 1e-1, "log": True},
        },
        searcher={"name": "random", "seed": 0},
        training={"epochs": 2, "batch_size": 32, "checkpoint_min_seconds": 0},
    )
    storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    log = tmp_path / "driver.log"
    driver = _start(
        [sys.executable, "-m", "search.cli", "run", str(config), "--study", "cont"], tmp_path, log
    )

    def two_finished() -> bool:
        trials = optuna.load_study(study_name="cont", storage=storage).trials
        return sum(t.state in TERMINAL for t in trials) >= 2

    try:
        _wait("2 finished trials", two_finished, 300, log)
    finally:
        _kill_group(driver)
    before = optuna.load_study(study_name="cont", storage=storage).trials
    assert len(before) < 6, "the kill came before every trial was asked"
    resume = subprocess.run(
        [sys.executable, "-m", "search.cli", "resume", "--study", "cont", "--tracking-uri", uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    after = optuna.load_study(study_name="cont", storage=storage).trials
    assert sorted(t.number for t in after) == list(range(6))
    earlier = [t.params for t in before]
    new = [t.params for t in after if t.number >= len(before)]
    assert new, "the resume asked for new trials"
    repeated = [p for p in new if p in earlier]
    assert repeated == [], f"new trials repeat earlier ones: {repeated}"


def test_ctrl_c_says_how_to_resume_and_leaves_no_trial_running(tmp_path: Path) -> None:
    """Ctrl+C: one message naming the study, its counts and the resume command; the interrupted
    Optuna trials wait (not RUNNING); running that command continues them from their checkpoints
    in new runs tagged with the interrupted attempt, one live run per trial."""
    config = _config(tmp_path, "intr")
    storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    log = tmp_path / "driver.log"
    driver = _start(
        [sys.executable, "-m", "search.cli", "run", str(config), "--study", "intr"], tmp_path, log
    )

    def ready() -> bool:
        """A trial finished, and a running one has checkpointed at least 2 epochs."""
        trials = optuna.load_study(study_name="intr", storage=storage).trials
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        ray_dir = tmp_path / "out" / "ray" / "intr"
        return any(t.state in TERMINAL for t in trials) and any(
            _mid_trial(ray_dir, n) for n in running
        )

    try:
        _wait("a finished trial and a running checkpointed one", ready, 300, log)
        os.kill(driver.pid, signal.SIGINT)  # Ctrl+C reaches the driver
        assert driver.wait(timeout=180) == 130, log.read_text()[-3000:]
    finally:
        _kill_group(driver)
    said = log.read_text()
    trials = optuna.load_study(study_name="intr", storage=storage).trials
    waiting = {t.number for t in trials if t.state == TrialState.WAITING}
    finished = sum(t.state in TERMINAL for t in trials)
    assert [t.number for t in trials if t.state == TrialState.RUNNING] == []
    assert waiting, "the running trials were put back for resume"
    head = (
        f"interrupted: study intr: {finished} trials finished, {len(waiting)} interrupted "
        f"(resume continues them from their checkpoints), {6 - len(trials)} not started"
    )
    assert head in said, said[-3000:]
    command = next(line for line in said.splitlines() if line.startswith("resume with: "))
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert command == f"resume with: gradsweep resume --study intr --tracking-uri {uri}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    _, before = _children(client, "intr")
    killed = {r.info.run_id: r for r in before if r.data.tags.get(OUTCOME_TAG) == "interrupted"}
    assert all(r.info.status == "KILLED" for r in killed.values()) and killed

    argv = command.removeprefix("resume with: gradsweep ").split()
    resume = subprocess.run(
        [sys.executable, "-m", "search.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    after = optuna.load_study(study_name="intr", storage=storage).trials
    assert sorted(t.number for t in after) == list(range(6)), "no duplicate, none missing"
    assert all(t.state in TERMINAL for t in after)
    parent, children = _children(client, "intr")
    live = [r for r in children if r.data.tags.get(OUTCOME_TAG) != "interrupted"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in live) == list(range(6))
    resumed = [r for r in live if "gradsweep.resumed" in r.data.tags]
    assert {int(r.data.tags["optuna.trial_number"]) for r in resumed} == waiting
    continued = 0
    attempts = {r.data.tags["optuna.trial_number"]: r.info.run_id for r in killed.values()}
    for run in resumed:  # each names its interrupted attempt, if that reached MLflow
        number = run.data.tags["optuna.trial_number"]
        assert run.data.tags.get(RESUMED_FROM_TAG) == attempts.get(number), number
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        continued += steps[0] > 1
    assert continued >= 1, "an interrupted trial continued from its checkpoint"
    board = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path))
    assert len(Path(board).read_text().strip().splitlines()) == 1 + 6, "one row per trial"


def test_after_an_outage_sync_logs_the_end_of_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow goes away mid-study and stays away: the summary counts the trials Optuna saw
    finish and says how many writes wait for sync; after the server is back, ``gradsweep sync``
    delivers them and then logs what the study's end would have: leaderboard files, headline
    figures, report and pictures on the parent, gradient pictures on the children."""
    from search import run_study
    from search.cli.study import _summary
    from search.plots import PARENT_FIGURE, TRIAL_FIGURE
    from spaces import load_config

    url, start, server_env, server_log = _mlflow_server(tmp_path)
    servers = [_start(start, tmp_path, server_log, server_env)]
    try:
        _wait("mlflow server", lambda: _healthy(url), 90, server_log)
        config = load_config(
            _config(tmp_path, "away", num_samples=3, diagnostics={"enabled": True}),
        )
        client = mlflow.MlflowClient(tracking_uri=url)

        def outage() -> None:  # once the first epochs arrived, the server goes for good
            _wait(
                "first epochs in MLflow",
                lambda: any(
                    client.get_metric_history(r.info.run_id, "val_accuracy")
                    for r in _children(client, "away")[1]
                ),
                240,
            )
            _kill_group(servers[0], signal.SIGTERM)

        killer = threading.Thread(target=outage)
        killer.start()
        result = run_study(config, tracking_uri=url, study_name="away", close_patience_s=3)
        killer.join()
        assert servers[0].poll() is not None, "the outage fell inside the search"
        assert result.finished == 3 and result.spooled > 0
        capsys.readouterr()
        _summary(result)
        said = capsys.readouterr().out
        assert "study away - 3 trials finished in" in said, said
        assert f"{result.spooled} MLflow writes queued for 'gradsweep sync" in said, said

        servers.append(_start(start, tmp_path, server_log, server_env))
        _wait("mlflow server back", lambda: _healthy(url), 90, server_log)
        sync = subprocess.run(
            [sys.executable, "-m", "search.cli", "sync", "--output-dir", str(tmp_path / "out")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert sync.returncode == 0, sync.stdout[-3000:] + sync.stderr[-3000:]
        assert "away: leaderboard, report and pictures logged" in sync.stdout, sync.stdout
        assert not list((tmp_path / "out" / "mlflow-spool").iterdir()), "nothing left to sync"
        parent, children = _children(client, "away")
        logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"leaderboard.csv", "leaderboard.md", "report", PARENT_FIGURE} <= logged, logged
        assert parent.data.metrics["study/trials"] == 3
        assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
        pictured = [
            r
            for r in children
            if TRIAL_FIGURE in {a.path for a in client.list_artifacts(r.info.run_id, "diagnostics")}
        ]
        assert len(pictured) == 3, "every trial's gradient picture (plots_top is 5)"
    finally:
        for server in servers:
            _kill_group(server, signal.SIGTERM)
