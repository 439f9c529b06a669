"""A stream of short trials: per-trial overhead, the figure that dominates studies of many trials.

The ``seed-notes`` shape (digits, depth 20 x 64, batch 64, Adam, 3 fused seeds, 15 epochs: about
2 s of compute per trial), 100 trials by default, 2 at a time, ``search.run_study`` with the
default config otherwise. Printed:

- **efficiency** = summed trial compute (the trials' own ``epoch_seconds``: training and
  evaluation) / (slots x wall of the whole ``run_study`` call), and the same from the first trial
  start to the last trial end (the steady state, without Ray's start and the study's end);
- the slot-seconds broken down: compute; inside the trial (probe, ``tune.report``, checkpoint
  write, config validation, the rest of the set-up); between two trials on one trial process
  (Tune's trial end, actor reuse and start: the driver's Optuna tell/ask and MLflow callbacks
  happen there); before a process's first trial (Ray's start, the stores, Tune's set-up, the trial
  process's start); after its last trial (the study's end);
- driver-side seconds (Optuna ask/tell/intermediate values, the MLflow tracker's callbacks, the
  journal's writes) and the CPU the framework's processes took from the trials' cores.

The trial side is timed by a benchmark trainable that wraps ``search.trainable.run_trial`` and
times public entry points inside the trial process (``ray.tune.report``, the gradient probes'
``measure``, ``torch.save``, ``StudyConfig.model_validate``); each trial writes one JSON line.

Run from the repository root: ``.venv/bin/python benchmarks/short_trials.py [--trials N]
[--repeats R] [--profile]``; ``--only stream`` of ``throughput.py`` runs the default.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import json
import logging
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import CONCURRENCY
from probes import Probes, framework_cpu

from spaces import load_config

LOG_ENV = "GRADSWEEP_BENCH_TRIAL_LOG"
WARM = "GRADSWEEP_STATE_DIR"  # set by --warm: the studies attach to a warm Ray of the run's own
EPOCHS = 15
SEEDS = 3


def stream_dict(trials: int, output_dir: str, searcher: str = "random") -> dict[str, Any]:
    """The ``seed-notes`` shape as a search: 8 activations x 2 initializers x 2 BN x lr."""
    return {
        "name": "stream",
        "data": {"name": "digits"},
        "model": {"depth": 20, "width": 64},
        "search": {
            "activations": ["logistic", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu"],
            "initializers": ["matched", "pytorch_default"],
            "batch_norm": ["none", "before"],
            "lr": {"low": 3e-4, "high": 3e-3, "log": True},
        },
        "training": {"epochs": EPOCHS, "batch_size": 64, "optimizer": "adam", "seeds": SEEDS},
        "searcher": {"name": searcher, "seed": 0},
        "scheduler": {"name": "fifo"},
        "num_samples": trials,
        "max_concurrent": CONCURRENCY,
        "resources": {"cpu": 1},
        "output_dir": output_dir,
    }


# --- the trial side: runs in Ray's trial processes ----------------------------------------------

#: Wall seconds (``seconds``) and CPU seconds of the trial's thread (``cpu``) by part, this trial.
_PARTS = Probes(standard=False)


def _report_label(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``tune.report``'s part (with a checkpoint: the upload); adds the epoch's own compute."""
    metrics = args[0] if args else kwargs.get("metrics", {})
    _PARTS.add("compute", float(metrics.get("epoch_seconds", 0.0)))
    return "report with checkpoint (upload)" if kwargs.get("checkpoint") is not None else "report"


_GC: dict[str, float] = {}


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    """gc.callbacks: wall seconds in the garbage collector (any thread of the trial process)."""
    if phase == "start":
        _GC["t0"] = time.perf_counter()
    elif "t0" in _GC:
        _PARTS.add("garbage collection (any thread)", time.perf_counter() - _GC["t0"])
        _PARTS.add("collections", 1)


def _instrument() -> None:
    """Wrap the trial's parts, once a process (trial processes are reused)."""
    if _PARTS.wrapped():
        return
    import gc

    import torch
    from ray import tune

    import search.seeds
    import search.trainable
    import spaces
    import trainers

    _PARTS.wrap(tune, "report", _report_label)
    if _gc_timer not in gc.callbacks:
        gc.callbacks.append(_gc_timer)
    _PARTS.wrap(trainers.GradientProbe, "measure", "probe (diagnostics)")
    _PARTS.wrap(trainers.FusedGradientProbe, "measure", "probe (diagnostics)")
    _PARTS.wrap(torch, "save", "checkpoint write (torch.save)")
    _PARTS.wrap(tune, "get_checkpoint", "checkpoint lookup (tune.get_checkpoint)")
    _PARTS.wrap(search.seeds.SeedBook, "record", "seed book (per epoch)")
    # The trainable's own imports of the loops: no seam times the loop inside a trial.
    for name in ("train", "train_fused"):
        _PARTS.wrap(search.trainable, name, "loop call (train / train_fused)", imported=True)
    _PARTS.wrap(spaces.StudyConfig, "model_validate", "config validation")


def timed_trial(params: dict[str, Any], study: dict[str, Any], data: Any) -> None:
    """``run_trial``, timed: one JSON line per trial (process id, entry/exit time, parts)."""
    import sys as _sys

    from search.trainable import run_trial

    entered, cpu0 = time.time(), time.thread_time()
    first_in_process = "torch._dynamo" not in _sys.modules
    _instrument()
    _PARTS.reset()
    try:
        run_trial(params, study, data)
    finally:
        line = {
            "pid": os.getpid(),
            "entered": entered,
            "left": time.time(),
            "cpu": time.thread_time() - cpu0,
            "cpu parts": dict(_PARTS.cpu),
            "process cpu": time.process_time(),
            "first_in_process": first_in_process,
            **_PARTS.seconds,
        }
        with open(Path(os.environ[LOG_ENV]) / f"{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


# --- the driver side ---------------------------------------------------------------------------


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each live thread of this process, by thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other (native: Ray core worker, gRPC, torch)")
        name = name.split("-")[0] if name.startswith("Thread-") else name
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[name] = out.get(name, 0.0) + cpu
    return out


def thread_callback() -> Any:
    """A Tune callback: the driver's CPU by thread at the first trial start and last completion."""
    from ray import tune

    class ThreadCpu(tune.Callback):
        def __init__(self) -> None:
            self.first: dict[str, float] = {}
            self.last: dict[str, float] = {}

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if not self.first:
                self.first = thread_cpu()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.last = thread_cpu()

    return ThreadCpu()


IN_TRIAL = (
    "probe (diagnostics)",
    "report",
    "report with checkpoint (upload)",
    "checkpoint write (torch.save)",
    "checkpoint lookup (tune.get_checkpoint)",
    "seed book (per epoch)",
    "config validation",
)
#: Nested in the loop call: the loop call less these is the loop's own rest.
IN_LOOP = (
    "compute",
    "probe (diagnostics)",
    "report",
    "report with checkpoint (upload)",
    "checkpoint write (torch.save)",
    "seed book (per epoch)",
)


def breakdown(lines: list[dict[str, Any]], t0: float, t1: float) -> dict[str, float]:
    """Slot-seconds of the run by where they went (sums over trials and trial processes)."""
    loop_rest = "in trial: the loop's rest (optimizer, shuffles, epoch bookkeeping)"
    setup = "in trial: set-up outside the loop, {} (unpickle, data, build)"
    first, later = setup.format("first trial of a process"), setup.format("later trials")
    out = {k: 0.0 for k in ("compute", *IN_TRIAL)}
    out |= {
        loop_rest: 0.0,
        first: 0.0,
        later: 0.0,
        "between trials on a process (Tune: end, reuse, start)": 0.0,
        "before a process's first trial (Ray, stores, Tune set-up, process start)": 0.0,
        "after a process's last trial (end of study)": 0.0,
    }
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        by_pid.setdefault(line["pid"], []).append(line)
    for trials in by_pid.values():
        trials.sort(key=lambda x: x["entered"])
        out["before a process's first trial (Ray, stores, Tune set-up, process start)"] += (
            trials[0]["entered"] - t0
        )
        out["after a process's last trial (end of study)"] += t1 - trials[-1]["left"]
        for prev, nxt in itertools.pairwise(trials):
            out["between trials on a process (Tune: end, reuse, start)"] += (
                nxt["entered"] - prev["left"]
            )
        for x in trials:
            for k in ("compute", *IN_TRIAL):
                out[k] += x.get(k, 0.0)
            loop = x.get("loop call (train / train_fused)", 0.0)
            out[loop_rest] += loop - sum(x.get(k, 0.0) for k in IN_LOOP)
            outside = sum(x.get(k, 0.0) for k in IN_TRIAL if k not in IN_LOOP)
            rest = x["left"] - x["entered"] - loop - outside
            out[first if x["first_in_process"] else later] += rest
    return out


def run_stream(
    trials_n: int, tmp: Path, searcher: str, profile: Path | None, label: str
) -> dict[str, Any]:
    """One ``run_study`` of the stream; its figures."""
    from search import run_study

    if WARM in os.environ:  # the warm Ray's trials see the log folder its start was given
        log_dir = Path(os.environ[LOG_ENV])
        for old in log_dir.glob("*.jsonl"):
            old.unlink()
    else:
        log_dir = tmp / f"log-{label}"
        log_dir.mkdir()
        os.environ[LOG_ENV] = str(log_dir)
    config = load_config(stream_dict(trials_n, str(tmp / label), searcher))
    cpu: dict[str, Any] = {}

    def fit_started() -> None:
        cpu["before"], cpu["t0"] = framework_cpu(), time.perf_counter()

    profiler = cProfile.Profile() if profile else None
    load0 = os.getloadavg()[0]
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with Probes(fit_started) as probes:
        probes.wrap(
            __import__("ray.tune.search.search_generator", fromlist=["x"]).SearchGenerator,
            "on_trial_result",
            "optuna: intermediate value (driver)",
        )
        t0, wall0 = time.time(), time.perf_counter()
        if profiler:
            profiler.enable()
        threads = thread_callback()
        run_study(config, trainable=timed_trial, callbacks=[threads])
        if profiler:
            profiler.disable()
        wall, t1 = time.perf_counter() - wall0, time.time()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    lines = [json.loads(s) for f in log_dir.glob("*.jsonl") for s in f.read_text().splitlines()]
    parts = breakdown(lines, t0, t1)
    compute = parts["compute"]
    starts = [x["entered"] for x in lines]
    ends = [x["left"] for x in lines]
    steady_wall = max(ends) - min(starts)
    after = probes.cpu_at_last_completion
    used: dict[str, float] = {}  # by process name: the report process shares the driver's
    for k, v in after.items():
        name = k.split(" ", 1)[1].rsplit("/", 1)[-1][:40]
        used[name] = used.get(name, 0.0) + v - cpu["before"].get(k, 0.0)
    cpu_parts: dict[str, float] = {}
    for x in lines:
        for k, v in x["cpu parts"].items():
            cpu_parts[k] = cpu_parts.get(k, 0.0) + v
    loop = cpu_parts.pop("loop call (train / train_fused)", 0.0)
    cpu_parts["compute (the loop less the parts below)"] = loop - sum(
        v for k, v in cpu_parts.items() if k in IN_LOOP
    )
    cpu_parts["trial thread, outside the loop"] = (
        sum(x["cpu"] for x in lines)
        - loop
        - sum(v for k, v in cpu_parts.items() if k not in IN_LOOP and "compute" not in k)
    )
    figures = {
        "trials": len(lines),
        "wall": wall,
        "compute": compute,
        "efficiency": compute / (CONCURRENCY * wall),
        "steady wall (first trial start to last trial end)": steady_wall,
        "steady efficiency": compute / (CONCURRENCY * steady_wall),
        "driver CPU": (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime),
        "trial processes CPU": sum(x["cpu"] for x in lines),
        "load average before": load0,
        "load average after": os.getloadavg()[0],
        "parts": parts,
        "driver": dict(probes.seconds),
        "framework CPU while trials ran": dict(sorted(used.items(), key=lambda kv: -kv[1])[:6]),
        "framework CPU while trials ran, total": sum(used.values()),
        "trial thread CPU": cpu_parts,
        "garbage collection in trial processes (inside the parts above)": (
            sum(x.get("garbage collection (any thread)", 0.0) for x in lines),
            sum(x.get("collections", 0) for x in lines),
        ),
        "driver threads CPU while trials ran": {
            k: v - threads.first.get(k, 0.0) for k, v in threads.last.items()
        },
        "steady CPU available": CONCURRENCY * (probes.last_completion - cpu.get("t0", 0.0)),
        "children CPU (finished children)": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        - kids0.ru_utime,
    }
    if profiler and profile:
        profiler.dump_stats(str(profile))
    return figures


def show(label: str, f: dict[str, Any]) -> None:
    n = f["trials"]
    print(
        f"  {label}: {n} trials in {f['wall']:.1f} s wall, compute {f['compute']:.1f} s: "
        f"efficiency {f['efficiency']:.2f} (steady {f['steady efficiency']:.2f} over "
        f"{f['steady wall (first trial start to last trial end)']:.1f} s); driver CPU "
        f"{f['driver CPU']:.1f} s, trial processes CPU {f['trial processes CPU']:.1f} s; load "
        f"{f['load average before']:.1f} -> {f['load average after']:.1f}"
    )
    slots = CONCURRENCY * f["wall"]
    print(f"    slot-seconds ({CONCURRENCY} x wall = {slots:.1f} s), per trial in ms:")
    for k, v in f["parts"].items():
        print(f"      {k:72s} {v:7.1f} s {1000 * v / n:7.0f} ms  {v / slots:6.1%}")
    print("    driver (wall inside, any thread), per trial in ms:")
    for k, v in sorted(f["driver"].items(), key=lambda kv: -kv[1]):
        print(f"      {k:72s} {v:7.1f} s {1000 * v / n:7.0f} ms")
    print("    the trials' own thread, CPU seconds, per trial in ms:")
    for k, v in f["trial thread CPU"].items():
        print(f"      {k:72s} {v:7.1f} s {1000 * v / n:7.0f} ms")
    gc_s, gc_n = f["garbage collection in trial processes (inside the parts above)"]
    print(
        f"      (garbage collection in the trial processes, inside the parts above: {gc_s:.1f} s"
        f" in {gc_n} collections, {1000 * gc_s / n:.0f} ms per trial)"
    )
    print("    the driver's threads, CPU while trials ran, per trial in ms:")
    for k, v in sorted(f["driver threads CPU while trials ran"].items(), key=lambda kv: -kv[1]):
        print(f"      {k:72s} {v:7.1f} s {1000 * v / n:7.0f} ms")
    share = f["framework CPU while trials ran, total"] / max(f["steady CPU available"], 1e-9)
    print(
        f"    framework CPU while trials ran: {f['framework CPU while trials ran, total']:.1f} s "
        f"= {share:.1%} of the trials' cores; largest: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in f["framework CPU while trials ran"].items())
    )


def part_stream(
    quick: bool,
    out: dict[str, Any],
    trials: int = 100,
    repeats: int = 1,
    searcher: str = "random",
    profile: Path | None = None,
    warm: bool = False,
) -> None:
    trials_n = 6 if quick else trials
    print(
        f"\n== short-trial stream: digits, depth 20 x 64, batch 64, {SEEDS} fused seeds, "
        f"{EPOCHS} epochs, {trials_n} trials, {CONCURRENCY} at a time, {searcher} searcher"
    )
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="gradsweep-stream-") as tmp_name,
        warm_ray_for(Path(tmp_name), warm),
    ):
        tmp = Path(tmp_name)
        for r in range(repeats):
            prof = profile / f"driver-{r}.prof" if profile else None
            f = run_stream(trials_n, tmp, searcher, prof, f"run{r}")
            show(f"run {r + 1}", f)
            runs.append(f)
            if prof:
                print("    driver main thread, cProfile, top 20 by own time:")
                stats = pstats.Stats(str(prof), stream=sys.stdout)
                stats.sort_stats("tottime").print_stats(20)
                stats.sort_stats("cumulative").print_stats(60)
    eff = [f["efficiency"] for f in runs]
    print(
        f"  efficiency, median of {len(eff)}: {statistics.median(eff):.2f} (target >= 0.90); "
        "steady: " + ", ".join(f"{f['steady efficiency']:.2f}" for f in runs)
    )
    out["stream"] = runs


@contextlib.contextmanager
def warm_ray_for(tmp: Path, warm: bool) -> Iterator[None]:
    """With ``warm``: a warm Ray (``gradsweep ray start``) of the benchmark's own, which the
    studies attach to as a user's later runs do; its start is not part of any run's figures."""
    if not warm:
        yield
        return
    from search import warm_ray

    os.environ[WARM] = str(tmp / "state")
    os.environ[LOG_ENV] = str(tmp / "log-warm")
    Path(os.environ[LOG_ENV]).mkdir()
    t0 = time.perf_counter()
    warm_ray.start()
    print(f"  warm Ray started once, before the runs: {time.perf_counter() - t0:.1f} s")
    try:
        yield
    finally:
        warm_ray.stop()
        del os.environ[WARM]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--searcher", default="random")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the driver's thread into DIR"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--warm", action="store_true", help="the runs attach to a warm Ray started once before"
    )
    args = parser.parse_args()
    import optuna
    import ray  # noqa: F401  (sets its loggers' levels on import)

    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict[str, Any] = {}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    # By module, not ``__main__``: Ray pickles a ``__main__`` trainable by value, and with it the
    # probes' lock.
    from short_trials import part_stream as by_module

    by_module(args.quick, out, args.trials, args.repeats, args.searcher, args.profile, args.warm)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
