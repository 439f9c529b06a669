"""The trainable without Ray: which epochs get a checkpoint; the heap frozen once a process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search import trainable
from search.trainable import Reporter


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(trainable.time, "monotonic", lambda: now[0])
    return now


def _due(reporter: Reporter, clock: list[float], epoch_seconds: float, epochs: int) -> list[int]:
    due = []
    for epoch in range(1, epochs + 1):
        clock[0] += epoch_seconds
        if reporter.due(epoch, diverged=False):
            due.append(epoch)
            reporter.saved_at = clock[0]
    return due


def test_every_epoch_when_no_minimum(clock: list[float]) -> None:
    assert _due(Reporter(every=1, min_seconds=0, last=5), clock, 0.1, 5) == [1, 2, 3, 4, 5]


def test_short_epochs_checkpoint_by_time_and_at_the_end(clock: list[float]) -> None:
    # 4-s epochs, at most one checkpoint per 10 s: epochs 3, 6, 9 (12 s apart), and the last.
    assert _due(Reporter(every=1, min_seconds=10, last=10), clock, 4.0, 10) == [3, 6, 9, 10]


def test_every_k_epochs_still_applies(clock: list[float]) -> None:
    assert _due(Reporter(every=3, min_seconds=0, last=7), clock, 1.0, 7) == [3, 6, 7]


def test_never_with_every_zero_nor_for_a_diverged_epoch(clock: list[float]) -> None:
    assert _due(Reporter(every=0, min_seconds=0, last=3), clock, 1.0, 3) == []
    assert not Reporter(every=1, min_seconds=0, last=3).due(3, diverged=True)


def test_a_trial_stopped_for_its_gradients_keeps_its_model(clock: list[float]) -> None:
    reporter = Reporter(every=1, min_seconds=30, last=10)
    clock[0] += 1.0
    assert not reporter.due(3, diverged=False)
    assert reporter.due(3, diverged=False, stopping=True)


def test_a_trial_process_freezes_its_imports_once() -> None:
    # A fresh process, as a Ray trial process: the first trial freezes what the imports left,
    # later trials of the process change nothing.
    code = (
        "import gc; from search.trainable import _freeze_imports; _freeze_imports(); "
        "n = gc.get_freeze_count(); _freeze_imports(); print(n, gc.get_freeze_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    first, second = map(int, out.stdout.split())
    assert first > 10_000  # Ray, Tune and torch: hundreds of thousands of objects
    assert second == first
