"""Every user error the CLI knows: one line naming the key or value, exit 2, nothing written,
and no Ray started.

The cases mirror the README's table of user errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cli import main

GOOD = "name: t\nnum_samples: 1\ntraining: {epochs: 1}\n"

# (id, config YAML or None for the 'quick' preset, extra argv, text the one line must contain)
CASES = [
    ("unknown-key", "foo: 1\n", [], "foo: unknown key"),
    ("unknown-nested-key", "model: {deep: 3}\n", [], "model.deep: unknown key"),
    ("unknown-activation", "search: {activations: [swish2]}\n", [], "unknown activation 'swish2'"),
    (
        "unknown-initializer",
        "search: {initializers: [xavier]}\n",
        [],
        "unknown initializer 'xavier'",
    ),
    ("unknown-dataset", "data: {name: mnist9}\n", [], "unknown data set 'mnist9'"),
    (
        "unknown-objective",
        "objectives: [val_accuracy: max, speed: min]\n",
        [],
        "objectives.1: unknown objective 'speed'; allowed: val_accuracy, epoch_seconds, params",
    ),
    (
        "bad-objective-direction",
        GOOD + "objectives: [val_accuracy: max, epoch_seconds: fast]\n",
        [],
        "objectives.1.epoch_seconds: direction 'fast'; allowed: max, min",
    ),
    (
        "asha-secondary-objective-first",
        GOOD + "objectives: [epoch_seconds: min, val_accuracy: max]\nscheduler: {name: asha}\n",
        [],
        "asha stops trials on the primary (first) objective only",
    ),
    (
        "alpha-low-above-high",
        "search: {activations: {elu: {alpha: {low: 2, high: 1}}}}\n",
        [],
        "search.activations.elu.alpha: low (2.0) must be <= high (1.0)",
    ),
    (
        "alpha-negative",
        "search: {activations: {leaky_relu: {alpha: -0.1}}}\n",
        [],
        "alpha of leaky_relu must be >= 0",
    ),
    ("alpha-where-none", "search: {activations: {relu: {alpha: 0.1}}}\n", [], "relu has no alpha"),
    (
        "rrelu-pair-reversed",
        "search: {activations: {rrelu: {alpha: [0.3, 0.1]}}}\n",
        [],
        "alpha of rrelu must satisfy 0 <= lower <= upper",
    ),
    (
        "alpha-not-number",
        "search: {activations: {elu: {alpha: big}}}\n",
        [],
        "search.activations.elu.alpha",
    ),
    (
        "log-range-nonpositive",
        "search: {lr: {low: 0, high: 0.1, log: true}}\n",
        [],
        "search.lr: a log range needs low > 0",
    ),
    ("depth-zero", "model: {depth: 0}\n", [], "model.depth"),
    ("width-zero", "model: {width: 0}\n", [], "model.width"),
    ("num-samples-zero", "num_samples: 0\n", [], "num_samples"),
    ("max-concurrent-zero", "max_concurrent: 0\n", [], "max_concurrent"),
    ("unknown-searcher", "searcher: {name: hyperopt}\n", [], "searcher.name: allowed"),
    (
        "tpe-history-too-short",
        "searcher: {history: 100}\n",
        [],
        "searcher.history: at least 250 trials",
    ),
    (
        "tpe-setting-other-searcher",
        "searcher: {name: random, history: 1000}\n",
        [],
        "history: a TPE setting, but searcher.name is 'random'",
    ),
    (
        "searcher-processes-without-ask-ahead",
        "searcher: {processes: 2}\n",
        [],
        "searcher: processes: 2 needs ask_ahead >= 1 and a sampler other than grid",
    ),
    ("searcher-ask-ahead-too-far", "searcher: {ask_ahead: 100}\n", [], "searcher.ask_ahead"),
    ("unknown-scheduler", "scheduler: {name: pbt}\n", [], "scheduler.name: allowed"),
    ("unknown-optimizer", "training: {optimizer: lbfgs}\n", [], "unknown optimizer 'lbfgs'"),
    ("unknown-bn", "search: {batch_norm: [middle]}\n", [], "search.batch_norm.0: allowed"),
    (
        "fractions-too-large",
        "data: {val_fraction: 0.6, test_fraction: 0.5}\n",
        [],
        "val_fraction + test_fraction must be < 1",
    ),
    ("wrong-type", "training: {epochs: ten}\n", [], "training.epochs"),
    ("bad-study-name", "name: 'my study!'\n", [], "name: use letters"),
    ("yaml-not-mapping", "- a\n- b\n", [], "must hold a mapping"),
    ("broken-yaml", "model: {depth: 3\n", [], "broken YAML"),
    ("set-without-equals", None, ["--set", "training.epochs"], "must look like key.path=value"),
    ("set-unknown-key", None, ["--set", "training.epoch=3"], "training.epoch: unknown key"),
    ("set-unparsable", None, ["--set", "search.activations=[relu"], "cannot parse value"),
    ("num-samples-flag", None, ["--num-samples", "0"], "num_samples"),
    ("unknown-flag", None, ["--bogus"], "No such option: --bogus"),
    (
        "file-missing-path",
        "data: {name: file, options: {path: /nonexistent/x.csv, target: y}}\n",
        [],
        "data.options.path: no readable file",
    ),
    (
        "file-missing-target",
        "data: {name: file, options: {path: TABLE, target: label}}\n",
        [],
        "data.options.target: no column 'label'",
    ),
    (
        "file-non-numeric",
        "data: {name: file, options: {path: TEXT_TABLE, target: y}}\n",
        [],
        "non-numeric feature columns",
    ),
    (
        "file-empty-cells",
        "data: {name: file, options: {path: GAPS_TABLE, target: y}}\n",
        [],
        "gaps.csv has 2 rows with empty, NaN or infinite feature values (columns 'a', 'b')",
    ),
    (
        "file-single-class",
        "data: {name: file, options: {path: ONE_CLASS_TABLE, target: y}}\n",
        [],
        "one_class.csv has only one class ('1'); classification needs at least 2",
    ),
    (
        "file-only-target",
        "data: {name: file, options: {path: TARGET_TABLE, target: y}}\n",
        [],
        "target.csv has no feature columns, only the target",
    ),
    (
        "file-too-few-rows",
        "data: {name: file, options: {path: TINY_TABLE, target: y}}\n",
        [],
        "the stratified split with val_fraction 0.2 and test_fraction 0.2 needs at least 3 rows "
        "per class",
    ),
    (
        "synthetic-one-class",
        "data: {name: synthetic, options: {n_classes: 1, n_informative: 2}}\n",
        [],
        "data.name: 'synthetic' has only one class ('0')",
    ),
    ("options-for-bundled", "data: {name: digits, options: {n: 3}}\n", [], "takes no options"),
    (
        "address-unreachable",
        None,
        ["--address", "127.0.0.1:1"],
        "--address: no Ray cluster reachable at 127.0.0.1:1",
    ),
    ("address-bad-port", None, ["--address", "127.0.0.1:notaport"], "invalid port"),
    (
        "address-bad-scheme",
        None,
        ["--address", "http://127.0.0.1:6379"],
        "must be local, auto, HOST:PORT",
    ),
    (
        "address-auto-dead",
        None,
        ["--address", "auto", "--set", "name=RAYDEAD"],
        "no Ray cluster reachable at 127.0.0.1:1",
    ),
    (
        "tracking-uri-scheme",
        None,
        ["--tracking-uri", "file:///tmp/mlruns"],
        "--tracking-uri: unsupported",
    ),
    (
        "tracking-uri-unreachable",
        None,
        ["--tracking-uri", "http://127.0.0.1:1"],
        "MLflow server http://127.0.0.1:1 is unreachable",
    ),
    (
        "tracking-uri-directory",
        None,
        ["--tracking-uri", "sqlite:///TMP"],
        "does not name a writable SQLite file",
    ),
    ("lr-not-positive", "search: {lr: {low: 0, high: 0.1}}\n", [], "learning rates must be > 0"),
    (
        "enqueue-bad-value",
        "search: {activations: [relu], enqueue: [{activation: relu, lr: fast}]}\n",
        [],
        "enqueue.0.lr: 'fast' must be a positive number",
    ),
    (
        "data-refused-by-sklearn",
        "data: {name: synthetic, options: {n_informative: 30, n_features: 10}}\n",
        [],
        "data.options: Number of informative",
    ),
    ("bad-study-flag", None, ["--study", "a'b"], '--study: "a\'b" must use letters'),
    (
        "optuna-storage-unreachable",
        "optuna_storage: postgresql://postgres@127.0.0.1:1/none\n",
        [],
        "optuna_storage: cannot connect to postgresql+psycopg2://postgres@127.0.0.1:1/none",
    ),
    (
        "tracking-uri-no-database",
        None,
        ["--tracking-uri", "postgresql://postgres@127.0.0.1:5432/gradsweep_no_such_db"],
        "--tracking-uri: cannot connect to postgresql+psycopg2://postgres@127.0.0.1:5432/"
        "gradsweep_no_such_db",
    ),
    (
        "tracking-uri-wrong-port",
        None,
        ["--tracking-uri", "postgresql://postgres@127.0.0.1:1/gradsweep"],
        "--tracking-uri: cannot connect to postgresql+psycopg2://postgres@127.0.0.1:1/gradsweep",
    ),
    # Permission bits don't stop root, so the unwritable places are ones that stop root too.
    (
        "output-dir-under-a-file",
        None,
        ["--set", "output_dir=TMP/table.csv/out"],
        "table.csv is a file",
    ),
    (
        "output-dir-not-writable",
        None,
        ["--set", "output_dir=/sys/gradsweep-out"],
        "output_dir: cannot write in /sys",
    ),
    (
        "optuna-storage-scheme",
        "optuna_storage: redis://127.0.0.1\n",
        [],
        "optuna_storage: unsupported",
    ),
]


def _rows(row: str, n: int = 20) -> str:
    return "\n".join(row.format(i=i, j=i * 2, y=i % 2) for i in range(n))


# The tables a config names by placeholder: placeholder -> (file name, CSV text).
TABLES = {
    "TABLE": ("table.csv", "a,b,y\n" + _rows("{i},{j},{y}")),
    "TEXT_TABLE": ("text.csv", "a,b,y\n" + _rows("{i},x{i},{y}")),
    "GAPS_TABLE": ("gaps.csv", "a,b,y\n,1,0\n2,inf,1\n" + _rows("{i},{j},{y}")),
    "ONE_CLASS_TABLE": ("one_class.csv", "a,b,y\n" + _rows("{i},{j},1")),
    "TARGET_TABLE": ("target.csv", "y\n" + _rows("{y}")),
    "TINY_TABLE": ("tiny.csv", "a,b,y\n" + _rows("{i},{j},{y}", 3)),
}
INPUTS = {"study.yaml", *(name for name, _ in TABLES.values())}


def _prepare(tmp_path: Path, config: str | None, argv: list[str]) -> list[str]:
    for name, text in TABLES.values():
        (tmp_path / name).write_text(text)
    source = "quick"
    if config is not None:
        for placeholder in sorted(TABLES, key=len, reverse=True):  # TEXT_TABLE before TABLE
            config = config.replace(placeholder, str(tmp_path / TABLES[placeholder][0]))
        (tmp_path / "study.yaml").write_text(config)
        source = str(tmp_path / "study.yaml")
    return ["run", source, *[a.replace("TMP", str(tmp_path)) for a in argv]]


def _nothing_written(tmp_path: Path) -> None:
    made = {p.name for p in tmp_path.iterdir()} - INPUTS
    assert made == set(), f"bad input wrote {made}"


@pytest.mark.parametrize(
    ("config", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_run_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config: str | None,
    argv: list[str],
    expected: str,
) -> None:
    import search.ray_session

    started: list[str | None] = []

    def connect(address: str | None, num_cpus: int | None = None) -> bool:
        started.append(address)
        raise RuntimeError("Ray was started for bad input")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(search.ray_session, "connect", connect)
    if "name=RAYDEAD" in argv:  # 'auto' finds its cluster through RAY_ADDRESS: a dead one here
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    code = main(_prepare(tmp_path, config, argv))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert started == [], "bad input is refused before Ray starts"
    assert code == 2
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out
    _nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "no-such-preset"], "neither a file nor a preset"),
        (["run", "TMP"], "cannot read"),
        (["run"], "Missing argument 'config'"),
        (["leaderboard", "--study", "x", "--format", "xml"], "--format: 'xml' is not one of"),
        (["leaderboard", "--study", "x", "--top", "0"], "--top"),
        (
            ["leaderboard", "--study", "x", "--tracking-uri", "sqlite:///TMP/none.db"],
            "no MLflow database",
        ),
    ],
    ids=[
        "missing-config",
        "unreadable-config",
        "no-config",
        "bad-format",
        "bad-top",
        "no-database",
    ],
)
def test_other_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main([a.replace("TMP", str(tmp_path)) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_unknown_study_in_existing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # creates the (empty) store
    code = main(["leaderboard", "--study", "nope", "--tracking-uri", uri])
    captured = capsys.readouterr()
    assert code == 2
    assert "--study: no study named 'nope'" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("out_dir", "expected"),
    [
        ("TMP/mlflow.db/report", "mlflow.db is a file"),
        ("/sys/gradsweep-report", "cannot write in /sys"),
    ],
    ids=["under-a-file", "not-writable"],
)
def test_report_out_dir_not_writable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    out_dir: str,
    expected: str,
) -> None:
    import mlflow

    from search.schema import ROLE_STUDY, ROLE_TAG, STUDY_TAG

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("gradsweep", artifact_location=str(tmp_path / "art"))
    client.create_run(experiment, tags={STUDY_TAG: "s", ROLE_TAG: ROLE_STUDY})
    before = sorted(tmp_path.rglob("*"))
    argv = ["report", "--study", "s", "--tracking-uri", uri, "--out-dir"]
    code = main([*argv, out_dir.replace("TMP", str(tmp_path))])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and "--out-dir: " in lines[0] and expected in lines[0], captured.err
    assert sorted(tmp_path.rglob("*")) == before


def test_console_script_prints_one_line_without_traceback(tmp_path: Path) -> None:
    """The real entry point, in a subprocess: no traceback reaches the terminal."""
    (tmp_path / "bad.yaml").write_text("search: {activations: [nope]}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown activation 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_ray_failing_to_start_leaves_no_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MLflow and Optuna stores open while Ray starts; when Ray then fails (an attach
    refused after the address answered, say), what opening created is removed again."""
    import search.ray_session
    from search.errors import UserError

    def refuse(address: str | None) -> bool:
        time.sleep(2)  # the stores are being created meanwhile
        raise UserError("--address: cannot attach to Ray at 127.0.0.1:6379: refused")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(search.ray_session, "connect", refuse)
    code = main(_prepare(tmp_path, GOOD, []))
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines == ["error: --address: cannot attach to Ray at 127.0.0.1:6379: refused"]
    _nothing_written(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("resources.cpu=512", "resources.cpu: 512 per trial, but the largest Ray node has"),
        ("resources.gpu=1", "resources.gpu: 1 per trial, but no Ray node has a GPU"),
    ],
    ids=["cpu", "gpu"],
)
def test_resources_no_node_can_place(tmp_path: Path, override: str, expected: str) -> None:
    """A trial no node can ever place would wait forever: refused once Ray is up, with the
    stores opened meanwhile removed again."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "quick", "--set", override],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []
