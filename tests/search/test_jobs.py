"""Studies as Ray jobs, end to end: a real head (job server on 127.0.0.1, token auth) and worker.

The nodes come from deploy/start-head.sh and start-worker.sh (``tests/search/ray_nodes.py``), the
CLI runs in this process as a user's laptop would run it (HTTP to the job server only), and both
sides see one MLflow store: an absolute SQLite path in the test's temp dir.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import mlflow
import optuna
import pytest
import yaml
from jsonschema.protocols import Validator
from ray_nodes import (
    ROOT,
    Service,
    base_env,
    free_ports,
    start_ray_nodes,
    stop_all,
    wait_for,
)

from search import jobs
from search.cli import main
from search.tracking import PARENT_TAG, STUDY_TAG
from spaces import load_config

pytestmark = pytest.mark.slow
TRIALS = 4
#: Small trials: what is tested is the way in and out of the cluster, not the training.
TINY = [
    *("--set", f"num_samples={TRIALS}", "--set", "model.depth=2", "--set", "model.width=16"),
    *("--set", "training.epochs=2", "--set", "diagnostics.enabled=false"),
]


@dataclass
class JobCluster:
    url: str  # the job server, as a laptop reaches it
    gcs_address: str
    token: str
    root: Path
    services: list[Service]

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def submit_args(self, study: str) -> list[str]:
        out = self.root / f"out-{study}"
        return [
            *("submit", "quick", *TINY, "--set", f"output_dir={out}"),
            *("--tracking-uri", self.tracking_uri, "--study", study, "--address", self.url),
        ]


def _answers(url: str, token: str) -> bool:
    request = urllib.request.Request(
        f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster() -> Iterator[JobCluster]:
    """Head with the dashboard's job server on 127.0.0.1 and a worker, 1 CPU each."""
    root = Path(tempfile.mkdtemp(prefix="gsj-", dir="/tmp"))  # short: Ray's socket paths
    token = secrets.token_hex(32)
    env = base_env()
    # The head runs `gradsweep run` as the job's entrypoint: this checkout's code.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    (dashboard,) = free_ports(1)
    services: list[Service] = []
    try:
        nodes = start_ray_nodes(root, token, env, services, dashboard_port=dashboard)
        url = f"http://127.0.0.1:{dashboard}"
        wait_for("job server", lambda: _answers(url, token), services, timeout_s=60)
        wait_for(
            "worker node",
            lambda: "Ray runtime started" in nodes.worker.log.read_text(errors="replace"),
            services,
            timeout_s=60,
        )
        yield JobCluster(url, nodes.gcs_address, token, root, services)
    finally:
        stop_all(services, f"RAY_AUTH_TOKEN={token}".encode())
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def laptop(cluster: JobCluster, monkeypatch: pytest.MonkeyPatch) -> JobCluster:
    """This process as the submitting machine: the token in RAY_AUTH_TOKEN, nothing else."""
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "GRADSWEEP_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    return cluster


def _runs(tracking_uri: str, study: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{STUDY_TAG}` = '{study}'",
    )


def _job_id(text: str) -> str:
    found = re.search(r"job (raysubmit_\w+)", text)
    assert found, text
    return found.group(1)


def _one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Submitted, waited for, listed


@pytest.fixture(scope="module")
def finished(cluster: JobCluster) -> tuple[str, str, str]:
    """``gradsweep submit quick ... --wait``: (study, job id, what it printed)."""
    study = f"jobs-a-{secrets.token_hex(2)}"
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_TOKEN", cluster.token)
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.delenv("GRADSWEEP_TRACKING_URI", raising=False)
    log = cluster.root / f"{study}.out"
    try:
        saved = sys.stdout
        with log.open("w") as out:
            sys.stdout = out
            try:
                code = main([*cluster.submit_args(study), "--wait"])
            finally:
                sys.stdout = saved
    finally:
        mp.undo()
    text = log.read_text()
    assert code == 0, text[-3000:]
    return study, _job_id(text), text


def test_submit_wait_runs_the_study_on_the_cluster(laptop: JobCluster, finished) -> None:
    study, job_id, text = finished
    assert f"study {study}" in text and f"gradsweep logs {job_id}" in text
    assert f"study {study} - {TRIALS} trials in" in text  # the head's summary, followed here
    # The whole log of `gradsweep run` on the head (stdout and stderr): no library chatter. The
    # job created the SQLite store, so MLflow's "Creating initial ... tables" would be here.
    for chatter in ("Creating initial", "View run", "INFO mlflow", "alembic.runtime"):
        assert chatter not in text, chatter
    runs = _runs(laptop.tracking_uri, study)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == TRIALS
    assert {r.info.status for r in children} == {"FINISHED"}
    client = jobs.connect(laptop.url)
    info = client.get_job_info(job_id)
    assert info.metadata[jobs.STUDY_KEY] == study
    assert info.entrypoint.startswith("gradsweep run gradsweep-study.yaml --address auto")
    assert laptop.tracking_uri not in info.entrypoint  # sent in the runtime env instead


def test_jobs_lists_the_study(laptop: JobCluster, finished, capsys) -> None:
    study, job_id, _ = finished
    assert main(["jobs", "--address", laptop.url]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if job_id in line)
    assert study in row and "SUCCEEDED" in row and f"{TRIALS}/{TRIALS}" in row


def test_jobs_reads_ray_address(
    laptop: JobCluster, finished, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --address: RAY_ADDRESS, as the README's laptop exports it."""
    _, job_id, _ = finished
    monkeypatch.setenv("RAY_ADDRESS", laptop.url)
    assert main(["jobs"]) == 0
    assert job_id in capsys.readouterr().out


def test_logs_by_study_name(laptop: JobCluster, finished, capsys) -> None:
    study, _, _ = finished
    assert main(["logs", study, "--address", laptop.url]) == 0
    assert f"{study}: {TRIALS}/{TRIALS} trials done" in capsys.readouterr().out


def test_logs_follow_of_an_ended_job_prints_it_and_returns(
    laptop: JobCluster, finished, capsys
) -> None:
    study, job_id, _ = finished
    assert main(["logs", job_id, "--follow", "--address", laptop.url]) == 0
    said = capsys.readouterr().out
    assert f"{study}: {TRIALS}/{TRIALS} trials done" in said
    assert f"study {study} - {TRIALS} trials in" in said  # to the log's end


# ---------------------------------------------------------------------------------------------
# Stopped mid-run, then resumed


def test_stop_ends_the_study_as_ctrl_c_and_resubmit_finishes_it(laptop: JobCluster, capsys) -> None:
    study = f"jobs-b-{secrets.token_hex(2)}"
    # One trial at a time, each a few seconds without early stops: the stop lands while the
    # study still has trials to run (with 2-epoch trials the last three could finish between
    # seeing "1/4 trials done" and the stop, and the study then rightly ends FINISHED).
    slow = ("training.epochs=100", "scheduler.name=fifo", "max_concurrent=1")
    assert main([*laptop.submit_args(study), *(a for s in slow for a in ("--set", s))]) == 0
    job_id = _job_id(capsys.readouterr().out)
    client = jobs.connect(laptop.url)

    def one_trial_done() -> bool:
        if client.get_job_status(job_id).is_terminal():
            raise AssertionError(client.get_job_logs(job_id)[-3000:])
        return f"1/{TRIALS} trials done" in client.get_job_logs(job_id)

    wait_for("the first trial", one_trial_done, laptop.services, timeout_s=150)
    assert main(["stop", job_id, "--address", laptop.url]) == 0
    said = capsys.readouterr().out
    assert "STOPPED" in said and f"gradsweep resubmit --study {study}" in said
    assert "stopping the study as after Ctrl+C" in client.get_job_logs(job_id)

    # As after Ctrl+C: parent KILLED, no run left RUNNING, unfinished trials 'interrupted'.
    runs = _runs(laptop.tracking_uri, study)
    parent = next(r for r in runs if PARENT_TAG not in r.data.tags)
    assert parent.info.status == "KILLED"
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    for run in runs:  # FIFO: no early stops; an early-stopped trial would be FINISHED anyway
        if run.info.status == "KILLED" and PARENT_TAG in run.data.tags:
            assert run.data.tags["gradsweep.outcome"] == "interrupted"
    storage = f"sqlite:///{laptop.root / f'out-{study}' / 'optuna.db'}"
    states = [t.state for t in optuna.load_study(study_name=study, storage=storage).trials]
    assert 1 <= states.count(optuna.trial.TrialState.COMPLETE) < TRIALS, states

    # The command `stop` printed: `gradsweep resubmit`, i.e. `gradsweep resume --study NAME` run
    # on the head as a job, finishes it.
    argv = ["resubmit", "--study", study, "--tracking-uri", laptop.tracking_uri, "--wait"]
    assert main([*argv, "--address", laptop.url]) == 0, capsys.readouterr()
    said = capsys.readouterr().out
    resumed = _job_id(said)
    assert resumed != job_id and f"study {study}" in said
    assert f"study {study} - {TRIALS} trials in" in said  # the resumed study's summary
    info = client.get_job_info(resumed)
    assert info.entrypoint == f"gradsweep resume --study {study} --address auto"
    assert info.metadata[jobs.STUDY_KEY] == study
    assert info.metadata[jobs.TRIALS_KEY] == str(TRIALS)  # carried over from the first job
    runs = _runs(laptop.tracking_uri, study)
    parent = next(r for r in runs if PARENT_TAG not in r.data.tags)
    assert parent.info.status == "FINISHED"
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    finished_trials = [r for r in runs if PARENT_TAG in r.data.tags and r.info.status == "FINISHED"]
    assert len(finished_trials) == TRIALS
    states = [t.state for t in optuna.load_study(study_name=study, storage=storage).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS, states


# ---------------------------------------------------------------------------------------------
# User errors: one line, exit 2, nothing submitted


def test_wrong_token_is_one_line(laptop: JobCluster, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    before = len(jobs.connect(laptop.url, token=laptop.token).list_jobs())
    for argv in (["jobs"], [*laptop.submit_args("never")[:-2]]):
        assert main([*argv, "--address", laptop.url]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "refused the token" in line and "RAY_AUTH_TOKEN" in line
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert main(["jobs", "--address", laptop.url]) == 2
    assert "refused the token" in _one_error_line(capsys.readouterr().err)
    assert len(jobs.connect(laptop.url, token=laptop.token).list_jobs()) == before


def test_bad_config_is_caught_before_submitting(laptop: JobCluster, capsys) -> None:
    client = jobs.connect(laptop.url)
    before = len(client.list_jobs())
    argv = ["submit", "quick", "--set", "model.deep=3", "--address", laptop.url]
    assert main(argv) == 2
    assert "model.deep: unknown key" in _one_error_line(capsys.readouterr().err)
    assert main(["submit", "quick", "--study", "no spaces", "--address", laptop.url]) == 2
    assert "--study" in _one_error_line(capsys.readouterr().err)
    assert len(client.list_jobs()) == before


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:6379", "not a job server address"),
        ("http://127.0.0.1:{free}", "no Ray job server answers"),
    ],
)
def test_bad_address_is_one_line(laptop: JobCluster, capsys, address: str, message: str) -> None:
    address = address.format(free=free_ports(1)[0])
    assert main(["jobs", "--address", address]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_unknown_job_is_one_line(laptop: JobCluster, capsys) -> None:
    assert main(["stop", "raysubmit_nosuchjob", "--address", laptop.url]) == 2
    assert "neither a job id nor a study" in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------
# Pieces without a cluster


def test_study_name_rule_is_the_runs() -> None:
    from search import preflight

    assert jobs.check_study_name is preflight.check_study_name


def test_relative_output_dir_lands_in_the_images_shared_storage() -> None:
    config = load_config("quick")
    assert jobs.cluster_output_dir(config) == "/app/gradsweep-runs"
    assert jobs.cluster_output_dir(config, "/mnt/nfs/runs") == "/mnt/nfs/runs"
    assert jobs.cluster_output_dir(load_config("quick", ["output_dir=/data/x"])) == "/data/x"


def test_trials_done_from_a_log() -> None:
    log = "s: 1/4 trials done, running 1\ns: 2/4 trials done, running 0\n"
    assert jobs.trials_done(log, "4") == "2/4"
    assert jobs.trials_done("study s - 3 trials in 12 s\n", "4") == "3/4"
    outage = "study s - 3 trials finished in 12 s; 40 MLflow writes queued for 'gradsweep sync"
    assert jobs.trials_done(outage, "4") == "3/4"
    assert jobs.trials_done("Running entrypoint\n", "4") == "0/4"


# ---------------------------------------------------------------------------------------------
# Kubernetes on paper: deploy/kuberay-rayjob.yaml (no Kubernetes here: the CRD's schema, then
# what gradsweep needs of it)

#: KubeRay releases whose RayJob schema is in tests/search/data (README there): the oldest the
#: manifest works with (authOptions.secretName came in v1.6.0) and the newest.
KUBERAY = ("v1.6.0", "v1.7.0")


def _manifest() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())


def _strict(schema: object) -> object:
    """Unknown fields made errors, as ``kubectl apply`` (strict field validation) makes them:
    an object schema that lists its properties allows no others, unless the CRD keeps unknown
    fields (``x-kubernetes-preserve-unknown-fields``) or says what else it takes itself
    (``additionalProperties``, e.g. labels and resource quantities). The top-level ``metadata``
    lists none (the API server checks it as ObjectMeta) and stays open."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def _problems(validator: Validator, manifest: dict) -> set[str]:
    return {
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(manifest)
    }


@pytest.mark.parametrize("release", KUBERAY)
def test_kuberay_manifest_fits_the_crd(release: str) -> None:
    path = Path(__file__).parent / "data" / f"kuberay-{release}-rayjob-v1.schema.json.gz"
    schema = _strict(json.loads(gzip.decompress(path.read_bytes())))
    validator = jsonschema.Draft4Validator(schema)  # OpenAPI 3.0's dialect (boolean exclusives)
    manifest = _manifest()
    assert _problems(validator, manifest) == set()
    # The check bites: a misspelt key at the top and deep in a pod template, a wrong enum value.
    typo = copy.deepcopy(manifest)
    typo["spec"]["submisionMode"] = "K8sJobMode"
    worker = typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["volumeMount"] = []
    typo["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    problems = " | ".join(sorted(_problems(validator, typo)))
    assert "'submisionMode' was unexpected" in problems, problems
    assert "containers.0: Additional properties are not allowed ('volumeMount'" in problems
    assert "authOptions.mode: 'tokens' is not one of" in problems


def test_kuberay_rayjob_manifest() -> None:
    manifest = _manifest()
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
    assert spec["entrypoint"].startswith("gradsweep run ")
    assert "--address auto" in spec["entrypoint"]
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert int(env_vars["RAY_JOB_STOP_WAIT_TIME_S"]) >= 60  # time to close the runs on stop
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "gradsweep-ray-token"}
    assert cluster["rayVersion"] == "2.60.0"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert isinstance(group["rayStartParams"], dict)
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].startswith("gradsweep:")
        env = {e["name"] for e in container["env"]}
        assert {"GRADSWEEP_TRACKING_URI", "GRADSWEEP_OPTUNA_STORAGE"} <= env
        assert not env & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # authOptions sets them
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"] for v in pod["volumes"]}
        assert set(mounts) <= volumes
        assert mounts["ray-storage"] == "/app/gradsweep-runs"  # shared, as in docker-compose.yml
    assert cluster["workerGroupSpecs"][0]["replicas"] >= 1


# ---------------------------------------------------------------------------------------------
# SIGTERM as Ctrl+C, without Ray: the mask, the interrupt, the children


SIGTERM_PROBE = """
import os, signal, subprocess, sys, time
from search.cli import sigterm_as_ctrl_c as _sigterm_as_ctrl_c
def status(pid):
    return [l for l in open(f"/proc/{pid}/status") if l.startswith("SigBlk")][0].split()[1]
for sigint in (signal.default_int_handler, signal.SIG_IGN):  # SIG_IGN: started with `&`
    signal.signal(signal.SIGINT, sigint)
    with _sigterm_as_ctrl_c():
        child = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: None)  # as Ray starts its own
        print("parent", status(os.getpid()), "child", status(child.pid), flush=True)
        child.kill()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
            print("not interrupted")
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    print("after", status(os.getpid()), signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
          signal.getsignal(signal.SIGINT) == sigint)
"""


def test_sigterm_interrupts_the_main_thread_as_ctrl_c() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_PROBE],
        env={**base_env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    blocked, unblocked = f"{1 << (signal.SIGTERM - 1):016x}", f"{0:016x}"
    once = [
        f"parent {blocked} child {unblocked}",  # Ray's processes still take SIGTERM
        "KeyboardInterrupt",
        f"after {unblocked} True True",  # as it was before
    ]
    assert done.stdout.splitlines() == once * 2
    assert done.stderr.count("stopping the study as after Ctrl+C") == 2
