"""The report on a real planted study: a deep logistic net that can't train against ELU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import mlflow
import pytest

from search import background, run_study
from search.background import ReportProcess
from search.report import build_report
from search.schema import PARENT_TAG
from spaces import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def planted(local_ray: None, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("planted")
    points = [{"activation": a, "bn": bn} for a in ("elu", "logistic") for bn in ("none", "before")]
    config = load_config(
        {
            "name": "planted",
            "search": {
                "activations": ["elu", "logistic"],
                "initializers": ["matched"],
                "batch_norm": ["none", "before"],
                "lr": 0.003,
            },
            "design": points,
            "model": {"depth": 14, "width": 32},
            "training": {"epochs": 2, "seeds": 3},
            "output_dir": str(out),
        }
    )
    with pytest.MonkeyPatch.context() as patch:  # who builds the end-of-study report
        patch.setattr(background, "_build", _recording(out / "report-built-by"))
        result = run_study(config)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    report = build_report(client, result.study_name, out / "report", result.optuna_storage)
    return result, client, report


def _recording(path: Path, child: Callable[[], None] | None = None) -> Callable[[dict], None]:
    """``background._build`` that first writes which process runs it to ``path`` (and runs
    ``child()`` there when that is not this test's process)."""
    build, test_pid = background._build, os.getpid()

    def recorded(request: dict) -> None:
        path.write_text(str(os.getpid()))
        if child is not None and os.getpid() != test_pid:
            child()
        build(request)

    return recorded


def test_planted_claim_is_held(planted) -> None:
    _, _, report = planted
    claim = report.claims.set_index("claim").loc["elu > logistic (matched init)"]
    assert (claim["cells_a"], claim["seeds_a"], claim["cells_b"], claim["seeds_b"]) == (2, 6, 2, 6)
    assert claim["strata"] == 2  # bn none and before: each compared within its own placement
    assert claim["ci_low"] > 0
    assert claim["verdict"] == "held"


def test_report_files_exist_and_images_load(planted) -> None:
    _, _, report = planted
    md = (report.directory / "report.md").read_text()
    assert "elu > logistic" in md and "## By activation" in md
    for name in (
        "metric_by_activation.png",
        "init_by_bn.png",
        "importance.png",
        "optimization_history.png",
    ):
        image = matplotlib.image.imread(report.directory / name)
        assert image.shape[0] > 100 and image.shape[1] > 100, name
    assert report.importance and set(report.importance) <= {"activation", "bn", "init"}
    assert max(report.importance, key=report.importance.get) in ("activation", "bn")


def test_report_tables_agree_with_mlflow(planted) -> None:
    result, client, report = planted
    runs = client.search_runs(
        [result.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'"
    )
    by_activation: dict[str, list[float]] = {}
    for run in runs:  # every seed of every trial is an observation
        by_activation.setdefault(run.data.params["activation"], []).extend(
            v for k, v in run.data.metrics.items() if k.endswith("/best_val_accuracy")
        )
    table = report.factors["activation"].set_index("level")
    for activation, values in by_activation.items():
        assert table.loc[activation, "n"] == len(values) == 6
        assert table.loc[activation, "mean"] == pytest.approx(sum(values) / len(values))
    assert (result.leaderboard["outcome"] == "completed").sum() == len(runs)
    parent = client.get_run(result.parent_run_id)
    assert "importance/activation" in parent.data.metrics
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert "report/report.md" in logged and "report/claims.csv" in logged


def test_report_command_prints_the_claims_table(
    planted, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from search.cli import main

    result, _, _ = planted
    monkeypatch.setenv("COLUMNS", "250")
    code = main(
        [
            "report",
            "--study",
            result.study_name,
            "--tracking-uri",
            result.tracking_uri,
            "--out-dir",
            str(tmp_path / "again"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "elu > logistic (matched init)" in out and "held" in out
    assert (tmp_path / "again" / "claims.csv").is_file()


def test_no_real_difference_is_not_significant(local_ray: None, tmp_path) -> None:
    """A real null study: leaky ReLU with slope 0 *is* ReLU: "leaky_relu > relu" must not hold."""
    # each learning rate once per activation, 3 seeds each: no confound between the two groups
    points = [
        {"activation": a, "lr": 0.001 * 2.0**k} for k in range(3) for a in ("relu", "leaky_relu")
    ]
    config = load_config(
        {
            "name": "null",
            "search": {
                "activations": {"relu": {}, "leaky_relu": {"alpha": 0.0}},
                "initializers": ["matched"],
                "lr": {"low": 0.001, "high": 0.01, "log": True},
            },
            "design": points,
            "model": {"depth": 4, "width": 32},
            "training": {"epochs": 2, "seeds": 3},
            "searcher": {"name": "random"},
            "output_dir": str(tmp_path),
        }
    )
    result = run_study(config)
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    report = build_report(client, result.study_name, tmp_path / "report", result.optuna_storage)
    claim = report.claims.set_index("claim").loc["leaky_relu > relu (matched init)"]
    assert claim["strata"] == 3 and claim["seeds_a"] == 9 and claim["seeds_b"] == 9
    assert claim["verdict"] == "not significant"
    assert claim["ci_low"] <= 0 <= claim["ci_high"]


# -- the end-of-study report, built in a forked process (search.background) ---------------------


def _alive(pid: int) -> bool:
    """Running or sleeping: not gone, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_study_wrote_its_report_in_another_process(planted) -> None:
    result, _, _ = planted
    directory = result.output_dir / "reports" / result.study_name
    assert "elu > logistic (matched init)" in (directory / "report.md").read_text()
    built_by = int((result.output_dir / "report-built-by").read_text())
    assert built_by != os.getpid()  # the forked report process, not a fallback in the driver


def test_report_process_builds_the_report_beside_this_one(
    planted, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _, _ = planted
    monkeypatch.setattr(background, "_build", _recording(tmp_path / "built-by"))
    with ReportProcess() as reporter:
        pid = reporter.pid
        assert pid is not None and pid != os.getpid() and _alive(pid)
        reporter.start(result.tracking_uri, result.study_name, tmp_path, result.optuna_storage)
        assert reporter.wait() is None
    assert "## By activation" in (tmp_path / "report.md").read_text()
    assert int((tmp_path / "built-by").read_text()) == pid
    assert not _alive(pid)  # asked to stop and reaped on close


def test_report_process_failure_is_one_line_not_an_exception(planted, tmp_path) -> None:
    result, _, _ = planted
    with ReportProcess() as reporter:
        reporter.start(result.tracking_uri, "no-such-study", tmp_path, result.optuna_storage)
        problem = reporter.wait()
    assert problem is not None and "no-such-study" in problem and "\n" not in problem


def test_report_built_here_when_its_process_died_before(planted, tmp_path) -> None:
    result, _, _ = planted
    with ReportProcess() as reporter:
        os.kill(reporter.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(reporter.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        reporter.start(result.tracking_uri, result.study_name, tmp_path, result.optuna_storage)
        assert reporter.wait() is None
    assert (tmp_path / "report.md").is_file()


def test_report_built_here_when_its_process_dies_mid_report(
    planted, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _, _ = planted
    monkeypatch.setattr(
        background, "_build", _recording(tmp_path / "built-by", child=lambda: os._exit(3))
    )
    with ReportProcess() as reporter:
        reporter.start(result.tracking_uri, result.study_name, tmp_path, result.optuna_storage)
        assert reporter.wait() is None
    assert int((tmp_path / "built-by").read_text()) == os.getpid()  # the fallback, here
    assert (tmp_path / "report.md").is_file()


def test_a_hung_report_process_is_ended_not_waited_for(
    planted, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _, _ = planted
    monkeypatch.setattr(
        background, "_build", _recording(tmp_path / "built-by", child=lambda: time.sleep(600))
    )
    t0 = time.monotonic()
    with ReportProcess() as reporter:
        pid = reporter.pid
        reporter.start(result.tracking_uri, result.study_name, tmp_path, result.optuna_storage)
        problem = reporter.wait(timeout_s=3)
    assert problem is not None and "no answer within 3 s" in problem
    assert time.monotonic() - t0 < 60
    assert not _alive(pid)
    assert not (tmp_path / "report.md").exists()  # no half-made fallback after a timeout


def test_report_process_ends_when_its_parent_is_killed() -> None:
    """A driver killed with SIGKILL leaves no report process behind: it sees its pipe close."""
    script = (
        "from search.background import ReportProcess\n"
        "import time\n"
        "r = ReportProcess()\n"
        "print(r.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
