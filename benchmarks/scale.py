"""Scale: can one study's driver keep up with a big cluster? (issue 21)

A local Ray with many logical CPUs stands in for the cluster; each trial only sleeps (0.2-2 s in
all, over its epochs) and reports like ``search.trainable.run_trial``. Everything else is
gradsweep's real driver path: ``run_study`` with its Optuna searcher (TPE), Optuna storage on a
fresh PostgreSQL database, and a real ``mlflow server`` over HTTP on another fresh PostgreSQL
database, both dropped afterwards.

Printed: sustained completions per second (per window, and at the 1k-th vs the last trials),
driver CPU per trial (robust to other load on the machine), time per component (ask + suggest,
intermediate values, tell, tracker callbacks, MLflow writes in the journal's senders, Tune's own
bookkeeping = the rest of the driver's CPU), growth from the first 1,000 trials to the last, and
the driver's RSS over the run.

Run from the repository root: ``.venv/bin/python benchmarks/scale.py`` (default 500 trials, 32
at a time: start-up, trials and the end of the study took ~17 min for 1,000 trials at load 20-30,
so ~9 min for 500 on such a machine); ``--trials 10000`` for the 1k -> 10k growth.
No figure here is asserted anywhere: see benchmarks/README.md for the measured ones.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from common import quiet_libraries, study_dict
from probes import Probes
from ray import tune

from spaces import load_config

PG = "postgresql://postgres@127.0.0.1:5432"


def sleep_trial(params: dict[str, Any], study: dict[str, Any], data: Any = None) -> None:
    """Stands in for ``run_trial`` on a big cluster: 0.2-2 s of sleep spread over the epochs,
    each epoch reported with a real trial's metrics."""
    epochs = int(study["training"]["epochs"])
    total = random.uniform(0.2, 2.0)
    best = 0.0
    for epoch in range(1, epochs + 1):
        time.sleep(total / epochs)
        value = random.random()
        best = max(best, value)
        tune.report(
            {
                "epoch": epoch,
                "train_loss": 1.0 - value,
                "val_loss": 1.0 - value,
                "val_accuracy": value,
                "test_accuracy": value,
                "best_val_accuracy": best,
                "epoch_seconds": total / epochs,
                "diverged": 0.0,
            }
        )


# the stores: fresh PostgreSQL databases and a real MLflow server


@contextlib.contextmanager
def database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped (its connections ended) afterwards."""
    import psycopg2

    admin = psycopg2.connect(f"{PG}/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, workers: int) -> Iterator[str]:
    """``mlflow server`` on a free port over ``backend``; stopped by its PID afterwards."""
    port = free_port()
    log = (artifacts.parent / "mlflow-server.log").open("w")
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend.replace("postgresql://", "postgresql+psycopg2://"),
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    # Its GenAI job runner (seven huey consumer processes) would only compete for the cores.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # migrations of a new database
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not start:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # its own session: the server and its workers only
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


# what the driver does, per component

#: A probe inside another (its CPU is counted there too), left out of the sums.
NESTED = "of which "


class DriverProbes(Probes):
    """The driver's components: Optuna's ask, intermediate values and tell, the tracker's
    callbacks, and the journal's MLflow writes (its senders are the only callers of ``apply``;
    over HTTP several at once, so their wall adds up over threads)."""

    def install(self) -> None:
        from ray.tune.search.search_generator import SearchGenerator

        import search.journal
        from search.searcher import ResumingOptunaSearch
        from search.tracking import MlflowTracker

        self.wrap(SearchGenerator, "create_trial_if_possible", "ask + suggest")
        self.wrap(ResumingOptunaSearch, "suggest", NESTED + "Optuna's ask (searcher.suggest)")
        self.wrap(SearchGenerator, "on_trial_result", "intermediate values")
        self.wrap(SearchGenerator, "on_trial_complete", "tell")
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            self.wrap(MlflowTracker, name, "tracker callbacks")
        self.wrap(search.journal, "apply", "MLflow writes (journal senders)")


class Collections:
    """The garbage collector's own time, as probes (nested: it runs inside whatever allocated
    last, in any thread): full collections apart from young ones."""

    def __init__(self, timed: Probes) -> None:
        self.timed = timed
        self.started: dict[int, tuple[float, float]] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        key = threading.get_ident()
        if phase == "start":
            self.started[key] = (time.perf_counter(), time.thread_time())
        elif key in self.started:
            t0, c0 = self.started.pop(key)
            kind = "full" if info["generation"] == 2 else "young"
            label = f"{NESTED}garbage collections, {kind}"
            self.timed.add(label, time.perf_counter() - t0, time.thread_time() - c0)

    def __enter__(self) -> Collections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def rss_mib() -> float:
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Completions(tune.Callback):
    """Each completion's time, the driver's CPU and the probes' CPU at that moment."""

    def __init__(self, timed: Probes) -> None:
        self.timed = timed
        self.rows: list[tuple[float, float, dict[str, float]]] = []
        self.rss: list[tuple[int, float]] = []  # (completions, driver RSS MiB) every 500

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cpu = self.timed.cpu_now()
        self.rows.append((time.perf_counter(), time.process_time(), cpu))
        if len(self.rows) % 500 == 0:
            self.rss.append((len(self.rows), rss_mib()))

    def __getstate__(self) -> dict[str, Any]:
        return {}  # Tune pickles its callbacks with the experiment; the driver keeps this one

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.timed, self.rows, self.rss = Probes(standard=False), [], []


class Memory(threading.Thread):
    """The driver's RSS every second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append((time.perf_counter(), rss_mib()))


class MachineCPU(threading.Thread):
    """CPU seconds of the whole machine by kind of process, every 2 s (``/proc``): what the
    2 cores do per trial beside the driver (a process that lives under 2 s is partly missed;
    ``/proc/stat``'s total says how much)."""

    KINDS = (
        "driver",
        "searcher process",
        "trial workers",
        "Ray's own processes",
        "PostgreSQL",
        "MLflow server",
    )

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()
        self._seen: dict[int, float] = {}
        self._total = dict.fromkeys((*self.KINDS, "other", "machine (/proc/stat)"), 0.0)
        self._tick = os.sysconf("SC_CLK_TCK")
        self.searchers: set[int] = set()  # pids of searcher.ask_ahead's processes

    def kind(self, pid: int, procs: dict[int, tuple[int, str]]) -> str:
        """What ``pid`` is, by its own command line or its nearest ancestor's that says (the
        server's uvicorn workers are multiprocessing children)."""
        while pid in procs:
            ppid, cmd = procs[pid]
            if ppid == os.getpid() and "spawn_main" in cmd:  # searcher.ask_ahead's child
                return "searcher process"
            if pid == os.getpid():
                return "driver"
            if cmd.startswith(("ray::IDLE", "ray::Impl", "ray::_Inner")):
                return "trial workers"
            if cmd.startswith("ray::") or "/ray/" in cmd.split(" ", 1)[0]:
                return "Ray's own processes"
            if cmd.startswith("postgres"):
                return "PostgreSQL"
            if "mlflow" in cmd or "uvicorn" in cmd:
                return "MLflow server"
            pid = ppid
        return "other"

    def sample(self) -> None:
        procs: dict[int, tuple[int, str]] = {}
        used: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                pid = int(entry.name)
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                procs[pid] = (int(fields[1]), cmd)
                used[pid] = (int(fields[11]) + int(fields[12])) / self._tick
        for pid, cpu in used.items():
            before = self._seen.get(pid)
            self._seen[pid] = cpu
            kind = self.kind(pid, procs)
            if kind == "searcher process":
                self.searchers.add(pid)
            if before is not None:  # a process first seen counts from then on
                self._total[kind] += cpu - before
        busy = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        idle = int(busy[3]) + int(busy[4])  # idle, iowait
        self._total["machine (/proc/stat)"] = (sum(map(int, busy[:8])) - idle) / self._tick
        self.samples.append((time.perf_counter(), dict(self._total)))

    def run(self) -> None:
        self.sample()
        while not self.stop.wait(2.0):
            self.sample()

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds by kind from the first sample at or after ``t0`` to the last before
        ``t1``, and those two samples' times (``from``, ``to``)."""
        inside = [(t, c) for t, c in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return {}
        (ta, a), (tb, b) = inside[0], inside[-1]
        return {"from": ta, "to": tb, **{k: b[k] - a[k] for k in b}}


# the study


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from search import ray_session, run_study
    from search.environment import configure

    tag = f"gs_scale_{os.getpid()}"
    with (
        database(f"{tag}_optuna") as optuna_db,
        database(f"{tag}_mlflow") as mlflow_db,
        mlflow_server(mlflow_db, tmp / "artifacts", args.server_workers) as server,
    ):
        study = study_dict(args.trials, args.epochs, str(tmp))
        study.update(
            name="scale",
            searcher={"name": args.searcher, "seed": 0, **json.loads(args.searcher_json)},
            max_concurrent=args.concurrent,
            optuna_storage=optuna_db,
            tracking={"uri": server, "experiment": "scale"},
        )
        study["training"]["checkpoint_every"] = 0
        config = load_config(study, ["diagnostics.enabled=false", *args.set])
        # gradsweep's own embedded Ray (loopback, token), with as many logical CPUs as slots
        configure()
        ray_session.connect(None, num_cpus=args.concurrent)
        memory, machine = Memory(), MachineCPU()
        machine.start()
        try:
            with DriverProbes() as timed, Collections(timed):
                done = Completions(timed)
                memory.start()
                cpu0, t0 = time.process_time(), time.perf_counter()
                result = run_study(
                    config, trainable=sleep_trial, callbacks=[done], close_patience_s=300
                )
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            memory.stop.set()
            machine.stop.set()
            ray_session.shutdown()
        runs = len(result.leaderboard)  # read back from the server: every trial's run arrived
    return {
        "wall": wall,
        "driver_cpu": cpu,
        "t0": t0,
        "cpu0": cpu0,
        "rows": done.rows,
        "timed_wall": timed.seconds,
        "timed_cpu": timed.cpu,
        "calls": timed.calls,
        "memory": memory.samples,
        "rss_by_completions": done.rss,
        "machine": machine,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "leaderboard_rows": runs,
        "notes": result.notes,
    }


def block(rows: list[Any], lo: int, hi: int) -> dict[str, float]:
    """Rate and driver CPU per trial (per component too) between completions ``lo`` and ``hi``."""
    (ta, ca, pa), (tb, cb, pb) = rows[lo], rows[hi - 1]
    n = hi - 1 - lo
    out = {"per_s": n / (tb - ta), "cpu_ms": (cb - ca) / n * 1000}
    for k in pb:
        out[k] = (pb[k] - pa.get(k, 0.0)) / n * 1000
    return out


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    rows, n = r["rows"], len(r["rows"])
    load = os.getloadavg()
    print(
        f"\n{n} trials completed of {args.trials} ({r['leaderboard_rows']} runs on the "
        f"leaderboard), {args.concurrent} at a time, {args.epochs} epochs, searcher "
        f"{args.searcher} {args.searcher_json}"
    )
    print(
        f"run_study wall {r['wall']:.0f} s, driver process CPU {r['driver_cpu']:.0f} s = "
        f"{r['driver_cpu'] / max(n, 1) * 1000:.1f} ms/trial (all threads, whole study)"
    )
    ceiling = args.concurrent / 1.1  # mean trial 1.1 s: what the slots allow
    print(f"slots allow {ceiling:.1f} completions/s (mean sleep 1.1 s, {args.concurrent} slots)")
    if n < 4:
        return
    # Sustained: per tenth of the run (by completions), start-up excluded.
    edges = [max(1, n * i // 10) for i in range(11)]
    print("\nper tenth of the run: completions/s | driver CPU ms/trial | by component (CPU ms)")
    for lo, hi in itertools_pairs(edges):
        b = block(rows, lo, hi)
        parts = ", ".join(f"{k} {v:.1f}" for k, v in b.items() if k not in ("per_s", "cpu_ms"))
        print(f"  trials {lo:6d}-{hi:6d}: {b['per_s']:6.1f}/s | {b['cpu_ms']:6.1f} | {parts}")
    mid = n // 2
    whole = block(rows, mid, n)
    print(f"sustained over the last half: {whole['per_s']:.1f} completions/s")
    # Growth: trials 500-1000 (or the second quarter of a smaller run) vs the last 500.
    lo, hi = (500, 1000) if n >= 2000 else (n // 4, n // 2)
    first, last = block(rows, lo, hi), block(rows, max(hi, n - 500), n)
    print(
        f"trials {lo}-{hi} vs the last {n - max(hi, n - 500)}: {first['per_s']:.1f} vs "
        f"{last['per_s']:.1f} completions/s; driver CPU {first['cpu_ms']:.1f} vs "
        f"{last['cpu_ms']:.1f} ms/trial = {last['cpu_ms'] / first['cpu_ms']:.2f}x (target <= 1.5x)"
    )
    parts = [k for k in first if k not in ("per_s", "cpu_ms")]
    for k in parts:
        if first[k] > 0:
            print(f"    {k:32s} {first[k]:6.1f} -> {last[k]:6.1f} ms ({last[k] / first[k]:.2f}x)")
    outer = [k for k in parts if not k.startswith(NESTED)]
    rest = [b["cpu_ms"] - sum(b[k] for k in outer) for b in (first, last)]
    print(f"    {'rest (Tune bookkeeping, Ray)':32s} {rest[0]:6.1f} -> {rest[1]:6.1f} ms")
    print("\nwhole study, summed per trial (wall ms | CPU ms | calls):")
    for k, w in sorted(r["timed_wall"].items(), key=lambda kv: -kv[1]):
        print(
            f"  {k:32s} {w / n * 1000:7.1f} | {r['timed_cpu'][k] / n * 1000:7.1f} | {r['calls'][k]}"
        )
    machine_cpu(r)
    if r["rss_by_completions"]:
        print(
            "driver RSS by trials completed (MiB): "
            + ", ".join(f"{n} {m:.0f}" for n, m in r["rss_by_completions"])
        )
    mem = r["memory"]
    if mem:
        marks = [mem[min(len(mem) - 1, len(mem) * i // 10)] for i in range(10)] + [mem[-1]]
        print(
            "driver RSS over the run (MiB): "
            + ", ".join(f"{t - r['t0']:.0f}s {m:.0f}" for t, m in marks)
            + f"; peak {r['max_rss']:.0f}"
        )
    print(f"[load average 1/5/15 min at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}]")
    for note in r["notes"]:
        print(f"note: {note}")


def machine_cpu(r: dict[str, Any]) -> None:
    """The 2 cores' CPU per trial over the last half of the run, by kind of process: what
    bounds the completions per second on this machine, whatever the driver does."""
    rows = r["rows"]
    n = len(rows)
    mid = n // 2
    cpu = r["machine"].between(rows[mid][0], rows[-1][0])
    if not cpu:
        return
    t0, t1 = cpu.pop("from"), cpu.pop("to")
    done = sum(1 for row in rows if t0 <= row[0] <= t1)
    seconds = t1 - t0
    machine = cpu.pop("machine (/proc/stat)")
    cores = os.cpu_count() or 1
    print(
        f"\nthe machine over the last half ({done} trials in {seconds:.0f} s): "
        f"{machine / done * 1000:.1f} ms CPU per trial in all, {machine / seconds / cores:.0%} of "
        f"{cores} cores busy; {cores} cores at that cost allow "
        f"{cores * done / machine:.1f} completions/s"
    )
    for kind, used in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:22s} {used / done * 1000:7.1f} ms/trial")
    # One process uses one core at most: the driver, and each searcher process (their share).
    searchers = len(r["machine"].searchers)
    for single, processes in (("driver", 1), ("searcher process", searchers)):
        if cpu[single] > 0:
            allows = done / cpu[single] * processes
            name = f"{processes} searcher processes" if processes > 1 else f"the {single}"
            print(f"  {name} alone, on a core each, would allow {allows:.1f}/s")


def itertools_pairs(edges: list[int]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.pairwise(edges) if b - a > 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--concurrent", type=int, default=32, help="trials at a time (slots)")
    parser.add_argument("--epochs", type=int, default=3, help="reports per trial")
    parser.add_argument("--searcher", default="tpe")
    parser.add_argument(
        "--searcher-json", default="{}", help="more searcher settings, as JSON (a config's)"
    )
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--server-workers", type=int, default=2, help="mlflow server workers")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    import mlflow
    import ray

    quiet_libraries()
    print(
        f"ray {ray.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} before"
    )
    with tempfile.TemporaryDirectory(prefix="gradsweep-scale-") as tmp:
        r = run(args, Path(tmp))
    report(args, r)
    if args.json:
        keep = {k: v for k, v in r.items() if k not in ("rows", "memory", "machine")}
        args.json.write_text(json.dumps(keep, indent=2, default=str))


if __name__ == "__main__":
    main()
