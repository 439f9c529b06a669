"""The benchmarks' timing probes: every name they wrap exists where they look for it, a wrap
counts what it should, and leaving puts everything back (a renamed function must fail here, not
turn a benchmark figure into a silent zero)."""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import a benchmark module as its scripts do (``benchmarks/`` on the path)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    names = ("probes", "common", "scale", "short_trials")
    yield importlib.import_module
    for name in names:
        sys.modules.pop(name, None)


def _snapshot(owners: dict[Any, list[str]]) -> dict[tuple[int, str], Any]:
    return {(id(o), n): inspect.getattr_static(o, n) for o, names in owners.items() for n in names}


def test_the_standard_probes_find_every_name_and_put_it_back(bench: Any) -> None:
    from mlflow import MlflowClient
    from ray import tune

    import search.ending
    import search.tracking

    owners = {
        search.ending: ["finish_study", "leaderboard", "log_pictures"],
        search.tracking.MlflowTracker: ["on_trial_start", "on_trial_complete", "setup"],
        MlflowClient: ["log_batch"],
        tune.Tuner: ["fit"],
    }
    before = _snapshot(owners)
    probes = bench("probes").Probes()
    with probes:
        assert probes.wrapped()
        assert search.ending.finish_study is not before[(id(search.ending), "finish_study")]
    assert _snapshot(owners) == before
    assert not probes.wrapped()


def test_the_scale_and_short_trial_probes_find_every_name(bench: Any) -> None:
    import search.journal
    import search.trainable
    import spaces

    apply, train = search.journal.apply, search.trainable.train
    with bench("scale").DriverProbes():
        assert search.journal.apply is not apply
    assert search.journal.apply is apply
    short = bench("short_trials")
    try:
        short._instrument()
        assert search.trainable.train is not train
        assert "model_validate" in vars(spaces.StudyConfig)
    finally:
        short._PARTS.restore()
    assert search.trainable.train is train
    assert "model_validate" not in vars(spaces.StudyConfig)  # the inherited one again


def test_a_wrap_counts_wall_cpu_and_calls_under_its_label(bench: Any) -> None:
    class Worker:
        def busy(self, seconds: float) -> str:
            time.sleep(seconds)
            return "done"

        @classmethod
        def make(cls) -> Worker:
            return cls()

    probes = bench("probes").Probes(standard=False)
    with probes:
        probes.wrap(Worker, "busy", lambda args, kwargs: f"busy {args[1]}")
        probes.wrap(Worker, "make", "make")
        assert Worker.make().busy(0.05) == "done"
        Worker().busy(0.05)
    assert probes.calls == {"busy 0.05": 2, "make": 1}
    assert probes.seconds["busy 0.05"] >= 0.1
    assert probes.cpu["busy 0.05"] < probes.seconds["busy 0.05"]  # sleeping takes no CPU
    assert Worker.busy.__qualname__.endswith("Worker.busy")  # restored, not the wrapper
    assert isinstance(inspect.getattr_static(Worker, "make"), classmethod)


def test_a_missing_or_misplaced_name_fails(bench: Any) -> None:
    import search.study

    probes = bench("probes").Probes(standard=False)
    fake = ModuleType("search.fake")
    with probes, pytest.raises(AttributeError):
        probes.wrap(fake, "gone", "never")
    # search.study imports run_trial: a wrap there would miss the trainable's own callers.
    with probes, pytest.raises(ValueError, match=r"defined in search\.trainable: probe it there"):
        probes.wrap(search.study, "run_trial", "trial")
    with probes, pytest.raises(ValueError, match="is not an import"):
        probes.wrap(search.study, "run_study", "study", imported=True)
    assert not probes.wrapped()
