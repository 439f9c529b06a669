"""Timing probes for the benchmarks: wall and CPU seconds inside library entry points and
gradsweep's functions, Tune trial events, and the CPU of the framework's processes."""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna

from spaces import (
    TRIAL_NUMBER_KEY,
)

#: The packages whose functions are probed where they are defined (see :meth:`Probes.wrap`).
OURS = ("search", "spaces", "trainers")
#: A label, or a function of a call's (args, kwargs) that returns the label to add it under.
Label = str | Callable[[tuple[Any, ...], dict[str, Any]], str]


class Probes:
    """Accumulate wall and CPU (of the calling thread) seconds and calls inside chosen functions,
    from any thread, while active; ``standard`` wraps the study's usual stages on entry.

    A probe on a name that no longer exists fails (a renamed function must not turn a figure
    into a silent zero), and gradsweep's functions are probed in the module that defines them:
    the study calls its stages through their modules (``ending.finish_study``), so a wrap there
    sees every call.
    """

    def __init__(self, on_first_trial: Any = None, *, standard: bool = True) -> None:
        self.on_first_trial = on_first_trial  # called when the first trial starts
        self.standard = standard
        self.cpu_at_last_completion: dict[str, float] = {}
        self.last_completion = 0.0
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.stamps: list[float] = []  # perf_counter() at each trial completion
        self.events: list[tuple[str, str, float, float]] = []  # (kind, trial, time, epoch_s)
        self.numbers: dict[str, int] = {}  # Tune trial id -> gradsweep trial number
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any, bool]] = []

    def add(self, label: str, seconds: float, cpu: float | None = None) -> None:
        """Add ``seconds`` of wall (and ``cpu`` seconds, if given) and one call to ``label``."""
        with self._lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds
            self.calls[label] = self.calls.get(label, 0) + 1
            if cpu is not None:
                self.cpu[label] = self.cpu.get(label, 0.0) + cpu

    def cpu_now(self) -> dict[str, float]:
        """A copy of the CPU seconds so far, by label (safe while other threads add)."""
        with self._lock:
            return dict(self.cpu)

    def reset(self) -> None:
        """Forget the seconds, CPU and calls added so far; the wraps stay."""
        with self._lock:
            self.seconds.clear()
            self.cpu.clear()
            self.calls.clear()

    def wrapped(self) -> bool:
        """Whether any wrap is in place."""
        return bool(self._saved)

    def wrap(self, owner: Any, name: str, label: Label, *, imported: bool = False) -> None:
        """Time every call of ``owner.name`` under ``label`` until :meth:`restore`.

        Raises AttributeError when ``owner`` has no ``name``. A function of gradsweep's packages
        must be wrapped in its defining module (ValueError otherwise), unless ``imported``: then
        it must be an import, and only the calls ``owner`` makes through it are timed (for a
        stage no public seam reaches, such as the trainable's call of its training loop).
        """
        static = inspect.getattr_static(owner, name)  # AttributeError: the name is gone
        if isinstance(owner, ModuleType) and owner.__name__.split(".")[0] in OURS:
            defined_in = getattr(static, "__module__", owner.__name__)
            if imported != (defined_in != owner.__name__):
                where = f"{owner.__name__}.{name}"
                raise ValueError(
                    f"{where} is defined in {defined_in}: probe it there"
                    if not imported
                    else f"{where} is not an import: wrap it without imported=True"
                )
        method = isinstance(static, classmethod)
        original = static.__func__ if method else getattr(owner, name)
        probes = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                key = label if isinstance(label, str) else label(args, kwargs)
                probes.add(key, time.perf_counter() - t0, time.thread_time() - c0)

        self._swap(owner, name, classmethod(timed) if method else timed)

    def _swap(self, owner: Any, name: str, replacement: Any) -> None:
        """Set ``owner.name`` to ``replacement``, remembering what :meth:`restore` puts back."""
        self._saved.append((owner, name, inspect.getattr_static(owner, name), name in vars(owner)))
        setattr(owner, name, replacement)

    def restore(self) -> None:
        """Put every wrapped name back as it was."""
        for owner, name, static, own in reversed(self._saved):
            if own:
                setattr(owner, name, static)
            else:  # inherited: the subclass's wrap goes, the base's stays
                delattr(owner, name)
        self._saved.clear()

    def __enter__(self) -> Probes:
        if self.standard:
            self.install()
        return self

    def install(self) -> None:
        """The study's usual stages: Optuna's ask and tell, MLflow's calls and tracker, Ray's
        start, ``Tuner.fit`` and shutdown, the pre-flight checks, the data set and the end."""
        from mlflow import MlflowClient
        from ray import tune
        from ray.tune.search.search_generator import SearchGenerator

        import search.background
        import search.ending
        import search.parent_run
        import search.preflight
        import search.ray_session
        import search.stores
        import search.tracking

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
        tracker = search.tracking.MlflowTracker
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"):
            self.wrap(tracker, name, "mlflow: tracker callbacks (driver)")
        self.wrap(tune.Tuner, "fit", "ray: Tuner.fit")
        # The end's own imports: no seam times the pictures and the query inside finish_study.
        self.wrap(search.ending, "log_pictures", "pictures (matplotlib)", imported=True)
        self.wrap(search.ending, "leaderboard", "leaderboard query", imported=True)
        self.wrap(search.ending, "finish_study", "end: flush, leaderboard, pictures, report")
        self.wrap(search.background.ReportProcess, "wait", "report: waited for after the pictures")
        self.wrap(search.ray_session, "connect", "ray: start (connect)")
        self.wrap(search.ray_session, "shutdown", "ray: shutdown")
        self.wrap(search.preflight, "check", "preflight (URIs)")
        self.wrap(search.preflight, "load_data", "data set")
        self.wrap(search.stores, "get_or_create_experiment", "mlflow: experiment + parent run")
        self.wrap(search.parent_run, "start_parent_run", "mlflow: experiment + parent run")
        self.wrap(optuna.storages.RDBStorage, "__init__", "optuna: open storage")
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            self._record(tracker, name)
        for name in ("setup", "on_experiment_end"):
            self._mark(tracker, name)
        self._mark(tune.Tuner, "fit", end=True)

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

        self._swap(owner, name, mark)

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

        self._swap(owner, name, record)

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
        self.restore()


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


def run_process(
    argv: list[str], env: dict[str, str] | None = None, also: Any = None
) -> tuple[float, float, int]:
    """Run ``argv`` as a whole process: (wall seconds, CPU seconds of it and every process it
    started, exit code). It and its descendants are sampled every 0.2 s from ``/proc`` (Ray's
    daemons and workers are not always reaped by their parent, so rusage would miss them): up to
    0.2 s of each process's last CPU is missed, alike on both sides of a comparison. ``also``:
    a callable listing more pids whose CPU during the run counts (a warm Ray's processes, which
    run the process's trials but are not its descendants)."""
    import subprocess
    import tempfile

    def sample(pids: list[int], into: dict[int, float]) -> None:
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                into[pid] = _cpu_seconds(pid)

    before: dict[int, float] = {}
    sample(also() if also else [], before)
    # A file, not a pipe: a full pipe would stall the process.
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen: dict[int, float] = {}
        others: dict[int, float] = {}
        while proc.poll() is None:
            sample([proc.pid, *_descendants(proc.pid)], seen)
            sample(also() if also else [], others)
            time.sleep(0.2)
        sample(also() if also else [], others)
        wall = time.perf_counter() - t0
        if proc.returncode:
            log.seek(0)
            sys.stdout.write(log.read().decode(errors="replace")[-3000:])
    extra = sum(cpu - before.get(pid, 0.0) for pid, cpu in others.items())
    return wall, sum(seen.values()) + extra, proc.returncode
