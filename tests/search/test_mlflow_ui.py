"""What a person sees of a study in the MLflow UI: a real study, a real server, headless Chromium.

The other tests read MLflow through its client; this one reads it through the UI people use to
compare runs, so a change that keeps the data right but the screen wrong (runs not nested,
names cut to nothing, val accuracy missing, pictures not logged) is caught. It also writes down
what the UI showed (``ui-observations.json``) beside its screenshots, in the test's tmp folder.

Waits: the UI is a single-page app that loads, then fetches runs and keeps polling, so the page
never goes "network idle" and a fixed sleep is either slow or flaky. Every step waits instead
for the element it needs next (Playwright's ``expect(...)`` retries until it shows or
``UI_TIMEOUT_MS`` passes). Selectors are visible text and ARIA roles, not CSS class names,
which MLflow's build renames.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from search import StudyResult, run_study
from search.parent_run import parent_run_name
from search.stores import ui_url
from spaces import load_config

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's Chromium, driven headless; no Playwright-downloaded browser, no network side trips.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
UI_TIMEOUT_MS = 20_000  # one element, once the UI's code is loaded
#: The first page: all of the UI's script chunks come first, then the runs' search, from one
#: server worker that shares the cores with whatever else runs.
FIRST_LOAD_TIMEOUT_MS = 120_000
TIP_TIMEOUT_MS = 8_000
SERVER_START_S = 180  # ~10 s on an idle host; far more while other suites load the cores
EPOCHS = 2
POINTS = [  # two that learn, two that ASHA is likely to stop after the first epoch
    {"activation": "elu", "init": "he_normal", "bn": "none", "lr": 0.01},
    {"activation": "relu", "init": "he_normal", "bn": "before", "lr": 0.01},
    {"activation": "logistic", "init": "glorot_uniform", "bn": "none", "lr": 0.0001},
    {"activation": "tanh", "init": "glorot_uniform", "bn": "none", "lr": 0.0001},
]

if not CHROMIUM.is_file():
    # `make test` installs it first and says so (GRADSWEEP_EXPECT_BROWSER=1), as CI does: there a
    # missing browser is a failure, never a skip; a bare pytest on a laptop skips this module.
    if os.environ.get("CI") or os.environ.get("GRADSWEEP_EXPECT_BROWSER") == "1":
        raise RuntimeError(f"{CHROMIUM} missing, but a browser is expected here")
    pytest.skip(f"{CHROMIUM} missing: 'make browser' installs it", allow_module_level=True)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots and observations: the test's tmp folder, never the repository."""
    return tmp_path_factory.mktemp("mlflow-ui")


@pytest.fixture(scope="module")
def store(out: Path) -> str:
    """The study's MLflow store, made (tables and all) before the server and the study start,
    so the two can start side by side without both creating its tables."""
    uri = f"sqlite:///{out / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_process(store: str, out: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """``mlflow server`` on the store, on 127.0.0.1 only, started now (it takes ~10 s to import,
    which the study overlaps) and stopped by its PID at the end of the module."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    with (out / "mlflow-server.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                str(mlflow_bin),
                "server",
                "--backend-store-uri",
                store,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the uvicorn worker it starts goes with it
        )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """End the server's process group (the group we started, by its leader's PID): SIGTERM, and
    SIGKILL for what is still there after a grace period. The server leaves its job consumers
    (huey) running for a while after it exits itself."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()


@pytest.fixture(scope="module")
def study(
    local_ray: None, store: str, server_process: tuple[subprocess.Popen, str], out: Path
) -> StudyResult:
    config = load_config(
        {
            "name": "ui",
            "search": {
                "activations": ["elu", "relu", "logistic", "tanh"],
                "initializers": ["he_normal", "glorot_uniform"],
                "batch_norm": ["none", "before"],
                "lr": {"low": 0.0001, "high": 0.01, "log": True},
                "enqueue": POINTS,
            },
            "model": {"depth": 2, "width": 16},
            "training": {"epochs": EPOCHS},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
            "diagnostics": {"plots_top": 1},
            "tracking": {"uri": store},
            "num_samples": len(POINTS),
            "output_dir": str(out / "study"),
        }
    )
    return run_study(config)


@pytest.fixture(scope="module")
def server(server_process: tuple[subprocess.Popen, str], study: StudyResult, out: Path) -> str:
    """The server's address once it answers /health (after the study: it shows a whole one)."""
    proc, url = server_process
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not come up; see {out / 'mlflow-server.log'}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def page(server: str, out: Path) -> Iterator[Any]:
    """One headless Chromium page with a fresh profile (nothing remembered from earlier runs)."""
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(out / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport=VIEWPORT,
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def seen(out: Path) -> Iterator[dict[str, Any]]:
    """What the UI showed, written to ``ui-observations.json`` when the module ends."""
    notes: dict[str, Any] = {}
    yield notes
    (out / "ui-observations.json").write_text(json.dumps(notes, indent=2, ensure_ascii=False))


def _shot(page: Any, out: Path, name: str) -> None:
    page.screenshot(path=str(out / f"{name}.png"))


def _dismiss_tip(page: Any) -> None:
    """A first visit to the GenAI overview opens a "Detect Issues" tip over the page, which
    takes the clicks; a person clicks "Got it". It comes a moment after the page: wait for it."""
    tip = page.get_by_text("Got it", exact=True)
    try:
        tip.wait_for(timeout=TIP_TIMEOUT_MS)
    except sync_api.TimeoutError:
        return
    tip.click()


def _name_cells(page: Any) -> Any:
    return page.locator("[role=gridcell][col-id='attributes.`Run Name`']")


def _truncation(page: Any) -> list[dict[str, Any]]:
    """Each run-name link: its text, the pixels it gets and the pixels its text needs (measured
    with the link's own font), so a cut name is a number, not an impression."""
    return (
        _name_cells(page)
        .locator("a")
        .evaluate_all(
            """links => links.map(a => {
            const ctx = document.createElement('canvas').getContext('2d');
            const s = getComputedStyle(a);
            ctx.font = `${s.fontWeight} ${s.fontSize} ${s.fontFamily}`;
            const need = Math.ceil(ctx.measureText(a.innerText).width);
            const head = a.innerText.split(' ').slice(0, 2).join(' ');  // 't007 elu'
            return {name: a.innerText, width_px: a.clientWidth, needs_px: need,
                    cut: need > a.clientWidth + 1,
                    head_px: Math.ceil(ctx.measureText(head).width)};
        })"""
        )
    )


def test_runs_table_nests_the_trials_under_the_study(
    page: Any, server: str, study: StudyResult, out: Path, seen: dict[str, Any]
) -> None:
    # The link gradsweep prints: MLflow 3 would open the experiment on its GenAI "Overview"
    # without it (README, "Comparing runs in the MLflow UI"); with it, on the training runs and
    # gradsweep's saved view of them. Text, not roles, until a first-visit tip is gone: a tip
    # is modal and hides the page from the accessibility tree.
    page.goto(ui_url(server, study.experiment_id))
    overview = page.get_by_text("Usage", exact=True)  # the GenAI overview's first tab
    landed = overview.or_(_name_cells(page)).first  # wherever it lands
    expect(landed).to_be_visible(timeout=FIRST_LOAD_TIMEOUT_MS)
    seen["landing_url"] = page.url
    seen["landing_is_genai_overview"] = overview.count() > 0
    _shot(page, out, "01-experiment-landing")
    assert not seen["landing_is_genai_overview"], "the printed link opens on the runs"
    _dismiss_tip(page)

    parent_name = parent_run_name(study.study_name, load_config({"name": "ui"}))
    parent = _name_cells(page).filter(has_text=parent_name)
    expect(parent).to_have_count(1)
    expect(page.get_by_text(f"{len(POINTS) + 1} matching runs")).to_be_visible()
    _shot(page, out, "02-runs-collapsed")
    parent.get_by_role("button").first.click()  # the [+] before the study's name
    names = _name_cells(page).locator("a")
    expect(names).to_have_count(len(POINTS) + 1)
    _shot(page, out, "03-runs-expanded")

    shown = names.all_inner_texts()
    assert shown[0] == parent_name  # the parent first (its config and start time), then trials
    trials = sorted(shown[1:])
    assert trials == sorted(study.leaderboard["run_name"])
    assert all(n.startswith("t00") for n in trials)  # readable names, not run ids
    indent = [box["x"] for box in (names.nth(i).bounding_box() for i in range(len(shown)))]
    assert all(x > indent[0] for x in indent[1:])  # children drawn nested under the parent

    rows = page.get_by_role("row")
    seen["columns"] = list(
        dict.fromkeys(c for c in page.get_by_role("columnheader").all_inner_texts() if c)
    )
    seen["rows"] = [r.replace("\n", " | ") for r in rows.all_inner_texts() if r.strip()]
    seen["names"] = _truncation(page)
    assert not any(n["cut"] for n in seen["names"]), seen["names"]  # every name readable whole
    # the saved view's columns (the table draws only those in sight: the first few are enough)
    for column in ("best_val_accuracy", "test_accuracy", "activation", "init"):
        assert column in seen["columns"], seen["columns"]
    seen["status"] = {  # to read beside the icons in 03-runs-expanded.png
        r["run_name"]: f"{r['status']} {r['outcome']}" for r in study.leaderboard.to_dict("records")
    }
    stopped = study.leaderboard[study.leaderboard["outcome"] == "early_stopped"]
    assert set(stopped["status"]) <= {"FINISHED"}  # a green tick, not a failure's red cross


def test_a_trial_page_shows_val_accuracy(
    page: Any, server: str, study: StudyResult, out: Path, seen: dict[str, Any]
) -> None:
    best, run_id = study.leaderboard.iloc[0][["run_name", "run_id"]]
    page.goto(ui_url(server, study.experiment_id, run_id))  # as a link to one run is printed
    # Overview tab: the metrics table holds the final val accuracy
    row = page.get_by_role("row").filter(has=page.get_by_text("val_accuracy", exact=True))
    expect(row).to_be_visible()
    assert 0.0 <= float(row.inner_text().split()[-1]) <= 1.0
    text = page.locator("body").inner_text().split("\n")
    seen["trial_page_header"] = text[text.index(best) - 2 : text.index(best) + 1]  # breadcrumb
    assert "Evaluations" not in seen["trial_page_header"], seen["trial_page_header"]
    seen["trial_page_text"] = text[:80]
    _shot(page, out, "04-trial-overview")

    page.get_by_role("tab", name="Model metrics").click()
    search = page.get_by_placeholder("Search metric charts")
    expect(search).to_be_visible()
    expect(page.get_by_role("button", name="Add chart").first).to_be_visible()
    lines = page.locator("body").inner_text().split("\n")
    seen["chart_sections"] = [  # top to bottom: a section's name sits above its "(count)"
        f"{lines[i - 1]} {line}" for i, line in enumerate(lines) if re.fullmatch(r"\(\d+\)", line)
    ]
    _shot(page, out, "05-trial-metrics-first-screen")
    assert seen["chart_sections"][0].startswith("curves"), seen["chart_sections"]  # opens on them
    search.fill("val_accuracy")
    chart_title = page.get_by_text("val_accuracy", exact=True).first
    expect(chart_title).to_be_visible()
    expect(page.get_by_text("Step").first).to_be_visible()  # the chart drawn, not its spinner
    _shot(page, out, "06-trial-val-accuracy-chart")


def test_the_study_run_holds_leaderboard_and_pictures(
    page: Any, server: str, study: StudyResult, out: Path, seen: dict[str, Any]
) -> None:
    page.goto(f"{server}/#/experiments/{study.experiment_id}/runs/{study.parent_run_id}/artifacts")
    for name in ("leaderboard.csv", "leaderboard.md", "config.json", "gradient_by_depth.png"):
        expect(page.get_by_text(name, exact=True)).to_be_visible()
    page.get_by_text("leaderboard.md", exact=True).click()
    expect(page.get_by_text(study.leaderboard.iloc[0]["run_name"]).first).to_be_visible()
    _shot(page, out, "07-study-leaderboard")

    page.get_by_text("gradient_by_depth.png", exact=True).click()
    expect(page.get_by_role("img", name="gradient_by_depth.png")).to_be_visible()
    _shot(page, out, "08-study-gradient-by-depth")

    page.get_by_text("report", exact=True).click()  # the folder opens in the tree
    for picture in ("init_by_bn.png", "optimization_history.png", "parallel_coordinates.png"):
        expect(page.get_by_text(picture, exact=True)).to_be_visible()
    page.get_by_text("optimization_history.png", exact=True).click()
    expect(page.get_by_role("img", name="optimization_history.png")).to_be_visible()
    _shot(page, out, "09-study-report-picture")
    seen["screenshots"] = str(out)


def test_the_study_page_shows_its_headline(
    page: Any, server: str, study: StudyResult, out: Path, seen: dict[str, Any]
) -> None:
    """The parent's own page: the study's headline figures, and a breadcrumb that leads back
    to the training runs, not to MLflow 3's GenAI "Evaluations" (what the issue saw)."""
    page.goto(ui_url(server, study.experiment_id, study.parent_run_id))
    best = page.get_by_role("row").filter(
        has=page.get_by_text("study/best_val_accuracy", exact=True)
    )
    expect(best).to_be_visible()
    value = float(best.inner_text().split()[-1])
    assert value == pytest.approx(study.leaderboard["best_val_accuracy"].max(), abs=1e-3)
    for metric in ("study/test_accuracy_of_best", "study/trials", "study/wall_seconds"):
        expect(page.get_by_text(metric, exact=True)).to_be_visible()
    name = parent_run_name(study.study_name, load_config({"name": "ui"}))
    text = page.locator("body").inner_text().split("\n")
    seen["study_page_header"] = text[text.index(name) - 2 : text.index(name) + 1]  # breadcrumb
    seen["study_page_text"] = text[:80]
    _shot(page, out, "10-study-overview")
    assert "Evaluations" not in seen["study_page_header"], seen["study_page_header"]
    best.scroll_into_view_if_needed()  # the metrics table sits below the run's details
    _shot(page, out, "11-study-headline-metrics")
