"""Timing probes for the benchmarks: wall seconds inside library entry points and gradsweep's
public functions, Tune trial events, and the CPU of the framework's processes."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna

from spaces import (
    TRIAL_NUMBER_KEY,
)

# timing probes: wrap library entry points (never search/ internals that may move)


class Probes:
    """Accumulate wall seconds spent inside chosen functions, from any thread, while active.

    Only Ray, Optuna and MLflow entry points and gradsweep's public functions (the study's
    end, the Ray session, the pre-flight checks) are wrapped; a name that no longer exists is
    skipped.
    """

    def __init__(self, on_first_trial: Any = None) -> None:
        self.on_first_trial = on_first_trial  # called when the first trial starts
        self.cpu_at_last_completion: dict[str, float] = {}
        self.last_completion = 0.0
        self.seconds: dict[str, float] = {}
        self.stamps: list[float] = []  # perf_counter() at each trial completion
        self.events: list[tuple[str, str, float, float]] = []  # (kind, trial, time, epoch_s)
        self.numbers: dict[str, int] = {}  # Tune trial id -> gradsweep trial number
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []

    def _add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        probes = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                probes._add(label, time.perf_counter() - t0)

        self._saved.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> Probes:
        from mlflow import MlflowClient
        from ray import tune
        from ray.tune.search.search_generator import SearchGenerator

        import search.ending
        import search.preflight
        import search.ray_session
        import search.study as study_module
        from search.tracking import MlflowTracker

        self.wrap(SearchGenerator, "create_trial_if_possible", "optuna: ask + suggest (driver)")
        self.wrap(SearchGenerator, "on_trial_complete", "optuna: tell (driver)")
        for name in (
            "create_run",
            "log_batch",
            "set_terminated",
            "update_run",
            "log_text",
            "log_artifact",
            "log_figure",
            "search_runs",
            "get_run",
            "get_metric_history",
        ):
            self.wrap(MlflowClient, name, "mlflow: client calls (any thread)")
        tracker = MlflowTracker
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"):
            self.wrap(tracker, name, "mlflow: tracker callbacks (driver)")
        self.wrap(tune.Tuner, "fit", "ray: Tuner.fit")
        self.wrap(search.ending, "log_pictures", "pictures (matplotlib)")
        self.wrap(study_module, "finish_study", "end: flush, leaderboard, pictures, report")
        reporter = getattr(study_module, "ReportProcess", None)
        if reporter is not None:
            self.wrap(reporter, "wait", "report: waited for after the pictures")
        self.wrap(search.ending, "leaderboard", "leaderboard query")
        self.wrap(search.ray_session, "connect", "ray: start (connect)")
        self.wrap(search.ray_session, "shutdown", "ray: shutdown")
        self.wrap(search.preflight, "check", "preflight (URIs)")
        self.wrap(search.preflight, "load_data", "data set")
        self.wrap(study_module, "get_or_create_experiment", "mlflow: experiment + parent run")
        self.wrap(study_module, "start_parent_run", "mlflow: experiment + parent run")
        self.wrap(optuna.storages.RDBStorage, "__init__", "optuna: open storage")
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            self._record(tracker, name)
        for name in ("setup", "on_experiment_end"):
            self._mark(tracker, name)
        self._mark(tune.Tuner, "fit", end=True)
        return self

    def _mark(self, owner: Any, name: str, end: bool = False) -> None:
        """Record when ``name`` is entered (and left, with ``end``) in ``self.marks``."""
        original = getattr(owner, name)

        def mark(*args: Any, **kwargs: Any) -> Any:
            self.marks.setdefault(name, time.perf_counter())
            try:
                return original(*args, **kwargs)
            finally:
                if end:
                    self.marks[f"{name} end"] = time.perf_counter()

        self._saved.append((owner, name, original))
        setattr(owner, name, mark)

    def fit_timeline(self) -> dict[str, float]:
        """Seconds of ``Tuner.fit`` before the first trial starts, while trials run, after."""
        m, starts, ends = self.marks, self._times("start"), self._times("complete")
        if not ("fit" in m and "fit end" in m and starts and ends):
            return {}
        return {
            "fit: until Tune set up": m.get("setup", m["fit"]) - m["fit"],
            "fit: set up to first trial start": starts[0] - m.get("setup", m["fit"]),
            "fit: first trial start to last trial end": ends[-1] - starts[0],
            "fit: last trial end to return": m["fit end"] - ends[-1],
        }

    def _times(self, kind: str) -> list[float]:
        return sorted(t for k, _, t, _ in self.events if k == kind)

    def _record(self, owner: Any, name: str) -> None:
        """Time-stamp a Tune callback event (Tune passes everything by keyword)."""
        original = getattr(owner, name)
        kind = name.removeprefix("on_trial_")

        def record(*args: Any, **kwargs: Any) -> Any:
            now = time.perf_counter()
            trial = kwargs.get("trial")
            result = kwargs.get("result") or {}
            if kind == "start" and self.on_first_trial and not self.numbers:
                self.on_first_trial()
            if kind == "complete" and self.on_first_trial:
                self.cpu_at_last_completion, self.last_completion = framework_cpu(), now
            with self._lock:
                number = getattr(trial, "config", {}).get(TRIAL_NUMBER_KEY)
                if number is not None:
                    self.numbers[trial.trial_id] = int(number)
                self.events.append(
                    (
                        kind,
                        getattr(trial, "trial_id", "?"),
                        now,
                        float(result.get("epoch_seconds", 0.0)),
                    )
                )
                if kind == "complete":
                    self.stamps.append(now)
            return original(*args, **kwargs)

        self._saved.append((owner, name, original))
        setattr(owner, name, record)

    def trial_spans(self) -> dict[int, tuple[float, float]]:
        """Trial number -> (start, completion) as the driver saw them."""
        spans: dict[int, tuple[float, float]] = {}
        for trial_id, number in self.numbers.items():
            starts = [t for k, i, t, _ in self.events if i == trial_id and k == "start"]
            ends = [t for k, i, t, _ in self.events if i == trial_id and k == "complete"]
            if starts and ends:
                spans[number] = (starts[0], ends[-1])
        return spans

    def trial_epoch_seconds(self) -> dict[int, float]:
        """Trial number -> the sum of its reported ``epoch_seconds`` (its own epochs)."""
        return {
            number: sum(e for k, i, _, e in self.events if i == trial_id and k == "result")
            for trial_id, number in self.numbers.items()
        }

    def trial_breakdown(self) -> dict[str, float]:
        """Where each trial's time went, summed over trials, from the driver's event times.

        ``epoch compute``: the epochs' own ``epoch_seconds`` (training + evaluation, without
        diagnostics); ``start``: trial start to first result, less that epoch (actor start or
        reuse, imports, data, build, report latency); ``between epochs``: time between results
        less the epoch (diagnostics, checkpoint write and upload, report round trip);
        ``finish``: last result to completion. ``span`` is the sum of all four.
        """
        by_trial: dict[str, list[tuple[str, float, float]]] = {}
        for kind, trial, t, epoch_s in self.events:
            by_trial.setdefault(trial, []).append((kind, t, epoch_s))
        out = {
            "epoch compute": 0.0,
            "start": 0.0,
            "between epochs": 0.0,
            "finish": 0.0,
            "span": 0.0,
        }
        for events in by_trial.values():
            starts = [t for k, t, _ in events if k == "start"]
            results = [(t, e) for k, t, e in events if k == "result"]
            ends = [t for k, t, _ in events if k == "complete"]
            if not (starts and results and ends):
                continue
            out["span"] += ends[-1] - starts[0]
            out["epoch compute"] += sum(e for _, e in results)
            out["start"] += results[0][0] - starts[0] - results[0][1]
            out["between epochs"] += sum(
                t - prev - e for (prev, _), (t, e) in itertools.pairwise(results)
            )
            out["finish"] += ends[-1] - results[-1][0]
        return out

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def framework_cpu() -> dict[str, float]:
    """CPU seconds so far of this process and every process it started (Ray's daemons), less
    the trial processes (``ray::ImplicitFunc...``): what the framework takes from the trials."""
    parent: dict[int, int] = {}
    name: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                words = [a for a in argv if a and not a.startswith("-")]
                python = Path(words[0]).name.startswith("python") and len(words) > 1
                name[int(entry.name)] = words[1] if python else words[0]
            except (OSError, IndexError, ValueError):
                continue
    ours, out = os.getpid(), {}
    for pid in parent:
        p = pid
        while p not in (0, 1, ours) and p in parent:
            p = parent[p]
        if p == ours and not name[pid].startswith("ray::ImplicitFunc"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[f"{pid} {name[pid]}"] = _cpu_seconds(pid)
    return out


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (its children, theirs, ...)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(entry.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        frontier += kids
    return found


def run_process(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Run ``argv`` as a whole process: (wall seconds, CPU seconds of it and every process it
    started, exit code). It and its descendants are sampled every 0.2 s from ``/proc`` (Ray's
    daemons and workers are not always reaped by their parent, so rusage would miss them): up to
    0.2 s of each process's last CPU is missed, alike on both sides of a comparison."""
    import subprocess
    import tempfile

    # A file, not a pipe: a full pipe would stall the process.
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen: dict[int, float] = {}
        while proc.poll() is None:
            for pid in [proc.pid, *_descendants(proc.pid)]:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    seen[pid] = _cpu_seconds(pid)
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        if proc.returncode:
            log.seek(0)
            sys.stdout.write(log.read().decode(errors="replace")[-3000:])
    return wall, sum(seen.values()), proc.returncode
