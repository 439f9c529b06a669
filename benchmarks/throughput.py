"""Throughput benchmarks for gradsweep, one invocation, printed as plain text.

Parts (``--only`` picks one; all run by default, one after the other):

- ``throughput``: the same 16 configurations of one study, trained four ways:
  (a) the raw loop, ``trainers.train`` sequentially in this process, one torch thread: the compute
  limit; (b) and (b') the scripts a user writes by hand (``peers.py``: Ray's defaults, and tuned);
  (c) gradsweep: ``gradsweep run`` as a whole process alternated run for run with (b') as a whole
  process (wall and CPU of each), on a Ray of its own (``--address local``) and on the warm Ray
  of ``gradsweep ray start`` (started once before the runs; its CPU during each run counts),
  plus ``run_study`` in this process once to show where the time
  goes, and with Ray already running (as on a cluster).
- ``stream``: a stream of short trials (``short_trials.py``): efficiency and the per-trial
  overhead broken down.
- ``long``: two trials of >= 30 s each (synthetic data), raw loop vs ``run_study``: the
  framework's share of a long trial's wall time.
- ``fused``: 8 seeds of one configuration fused (``trainers.train_fused``) vs 8 separate
  ``trainers.train`` runs, in one process on CPU.
- ``driver``: driver time per trial (Optuna suggestion + MLflow writes + Ray bookkeeping) with a
  trivial trainable, at 100 and 1000 trials, wired as ``run_study`` wires its components.

Run from the repository root: ``.venv/bin/python benchmarks/throughput.py [--only PART] [--quick]``.
``--quick`` shrinks every part (4 trials, 2 epochs, 2-epoch long trials, 20/200 driver trials)
for a smoke run.
No figure here is asserted anywhere: see benchmarks/README.md for the measured ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from common import CONCURRENCY, draw_trials, quiet_libraries, run_raw, study_dict
from peers import run_peer
from probes import Probes, run_process

from spaces import (
    load_config,
    resolve_trial,
)

# (c) gradsweep


def run_gradsweep(
    study: dict[str, Any],
    trials: list[dict[str, Any]],
    overrides: list[str],
    prestart_ray: bool,
    on_first_trial: Any = None,
) -> tuple[float, dict[str, float], Probes]:
    """Seconds for ``search.run_study`` (Ray start/stop included unless ``prestart_ray``)."""
    import mlflow
    import ray

    from search import run_study

    config = load_config(study, overrides)
    if prestart_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    with Probes(on_first_trial) as probes:
        t0 = time.perf_counter()
        result = run_study(config)
        seconds = time.perf_counter() - t0
    if prestart_ray:
        ray.shutdown()

    ot = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    asked = [dict(t.params) for t in sorted(ot.trials, key=lambda t: t.number)]
    same = [{k: v for k, v in p.items() if k in a} for p, a in zip(trials, asked, strict=True)]
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    children = client.search_runs(
        [result.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    epoch_seconds = sum(
        m.value
        for run in children
        for m in client.get_metric_history(run.info.run_id, "epoch_seconds")
    )
    states = {t.state.name for t in ot.trials}
    print(
        f"  (c) same configurations as (a): {same == asked}; Optuna states: {sorted(states)}; "
        f"MLflow child runs: {len(children)}"
    )
    trial_parts = {f"trials: {k}": v for k, v in probes.trial_breakdown().items()}
    figures = {
        "trial_epoch_seconds": epoch_seconds,
        **probes.seconds,
        **probes.fit_timeline(),
        **trial_parts,
    }
    return seconds, figures, probes


def whole_processes(
    study: dict[str, Any], trials: list[dict[str, Any]], tmp: Path, repeats: int
) -> dict[str, list[tuple[float, float]]]:
    """``gradsweep run`` (a Ray of its own, and on the warm Ray of ``gradsweep ray start``)
    and the tuned script (b') as whole processes, alternated run for run: (wall, CPU of the
    process and everything it started) of each; a warm Ray's CPU during the run counts too."""
    from search import warm_ray

    root = Path(__file__).resolve().parent.parent
    # The warm Ray's record in a folder of the benchmark's own: a user's warm Ray stays unused.
    env = {**os.environ, "PYTHONPATH": str(root), "GRADSWEEP_STATE_DIR": str(tmp / "state")}
    spec = tmp / "peer.json"
    spec.write_text(json.dumps({"study": study, "trials": trials}))
    out: dict[str, list[tuple[float, float]]] = {"c": [], "c warm": [], "b'": []}
    cli = [sys.executable, "-m", "search.cli"]
    t0 = time.perf_counter()
    started = run_process([*cli, "ray", "start"], env)
    print(
        f"  gradsweep ray start (once, before the runs): {time.perf_counter() - t0:.1f} s wall, "
        f"{started[1]:.1f} s CPU (exit {started[2]})"
    )
    os.environ["GRADSWEEP_STATE_DIR"] = env["GRADSWEEP_STATE_DIR"]
    warm = warm_ray.running()
    assert warm is not None, "gradsweep ray start left no warm Ray"
    also = functools.partial(warm_ray.processes, warm)
    for r in range(repeats):
        config = tmp / f"study-{r}.yaml"  # JSON is YAML
        config.write_text(json.dumps({**study, "output_dir": str(tmp / f"cli{r}")}))
        warm_config = tmp / f"warm-{r}.yaml"
        warm_config.write_text(json.dumps({**study, "output_dir": str(tmp / f"warm{r}")}))
        runs = [
            ("c", [*cli, "run", str(config), "--address", "local"]),
            ("c warm", [*cli, "run", str(warm_config)]),
            (
                "b'",
                [
                    sys.executable,
                    str(root / "benchmarks" / "peers.py"),
                    "tuned",
                    str(spec),
                    str(tmp / f"tuned{r}"),
                ],
            ),
        ]
        for label, argv in runs if r % 2 == 0 else runs[::-1]:
            load = os.getloadavg()[0]
            wall, cpu, code = run_process(argv, env, also if label == "c warm" else None)
            out[label].append((wall, cpu))
            name = {"c": "gradsweep run", "c warm": "gradsweep run on the warm Ray"}
            print(
                f"  ({label}) {name.get(label, 'tuned script')}, whole process, run {r + 1}: "
                f"{wall:6.1f} s wall, {cpu:6.1f} s CPU (exit {code}; load average {load:.1f})"
            )
    warm_ray.stop()
    del os.environ["GRADSWEEP_STATE_DIR"]
    return out


def part_throughput(
    quick: bool, out: dict[str, Any], defaults_peer: bool = True, pairs: int = 3
) -> None:
    trials_n, epochs = (4, 2) if quick else (16, 5)
    with tempfile.TemporaryDirectory(prefix="gradsweep-bench-") as tmp_name:
        tmp = Path(tmp_name)
        study = study_dict(trials_n, epochs, str(tmp / "c"))
        config = load_config(study)
        trials = draw_trials(config)
        print(
            f"\n== throughput: digits, depth 10 width 64, batch 32, {epochs} epochs, "
            f"{trials_n} trials, {CONCURRENCY} at a time, FIFO"
        )
        for p in trials:
            spec = resolve_trial(config, p)
            print(
                f"  trial {spec.number:2d}: {spec.activation:10s} {spec.init:15s} "
                f"bn={spec.bn:6s} lr={spec.lr:.2e}"
            )
        run_raw(config, trials[:1], True)  # warm-up: imports, data cache, first-call overheads
        a = run_raw(config, trials, diagnostics=True)
        limit = a / CONCURRENCY
        print(f"  (a) raw loop, sequential, diagnostics on (the study default): {a:7.1f} s")
        # (c) in this process, once: checks the configurations, and shows where the time goes.
        seconds, figures, _ = run_gradsweep(study, trials, [], False)
        print(
            f"  (c) gradsweep in this process: {seconds:7.1f} s = {seconds / limit:.2f}x the "
            f"compute limit ((a)/{CONCURRENCY} = {limit:.1f} s); trials' own epoch time "
            f"{figures['trial_epoch_seconds']:.1f} s"
        )
        print(
            "      inside: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in figures.items() if k != "trial_epoch_seconds")
        )
        # The headline: whole processes, as a user runs them, alternated so that the host's
        # drift falls on both sides alike, equal repeats.
        repeats = 1 if quick else pairs
        pairs = whole_processes(study, trials, tmp, repeats)
        b = run_peer(study, trials, tmp / "b", tuned=False) if defaults_peer else math.nan
        print(f"  (b) Ray defaults script (in this process): {b:7.1f} s")
        warm_study = {**study, "output_dir": str(tmp / "warm"), "name": "bench-warm"}
        warm, _, _ = run_gradsweep(warm_study, trials, [], True)
        print(f"  (c) Ray already running (in this process): {warm:7.1f} s")
        t_wall = statistics.median(w for w, _ in pairs["b'"])
        t_cpu = statistics.median(u for _, u in pairs["b'"])
        for label in ("c", "c warm"):
            c_wall = statistics.median(w for w, _ in pairs[label])
            c_cpu = statistics.median(u for _, u in pairs[label])
            print(
                f"  ({label})/(b') whole processes, medians of {repeats}: wall {c_wall:.1f} / "
                f"{t_wall:.1f} s = {c_wall / t_wall:.2f}x (target <= 0.70x); CPU {c_cpu:.1f} / "
                f"{t_cpu:.1f} s = {c_cpu / t_cpu:.2f}x; per run (wall): "
                + ", ".join(
                    f"{c[0] / t[0]:.2f}x" for c, t in zip(pairs[label], pairs["b'"], strict=True)
                )
            )
        c_wall = statistics.median(w for w, _ in pairs["c"])
        print(
            f"  (b)/(c in this process): {b / seconds:.2f}x; (c)/compute limit "
            f"{c_wall / limit:.2f}x"
        )
        out["throughput"] = {
            "trials": trials_n,
            "epochs": epochs,
            "a_diag": a,
            "b": b,
            "c_in_process": {"seconds": seconds, **figures},
            "c_ray_running": warm,
            "whole_processes": pairs,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", choices=["throughput", "stream", "long", "fused", "driver"], default=None
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--pairs", type=int, default=3, help="(c)/(b') pairs in throughput")
    parser.add_argument(
        "--no-defaults-peer", action="store_true", help="skip (b), the ~100 s Ray-defaults script"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--driver-searchers",
        default="tpe",
        help="comma-separated searchers for the driver part (tpe is the default study's)",
    )
    args = parser.parse_args()
    import mlflow
    import ray

    quiet_libraries()

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
        f"optuna {optuna.__version__}, mlflow {mlflow.__version__}; {os.cpu_count()} CPUs"
    )
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    searchers = [x.strip() for x in args.driver_searchers.split(",") if x.strip()]
    from driver import part_driver
    from fused_seeds import part_fused
    from long_trials import part_long
    from short_trials import part_stream

    parts = {
        "throughput": functools.partial(
            part_throughput, defaults_peer=not args.no_defaults_peer, pairs=args.pairs
        ),
        "stream": part_stream,
        "long": part_long,
        "fused": part_fused,
        "driver": functools.partial(part_driver, searchers=searchers),
    }
    for name, part in parts.items():
        if args.only in (None, name):
            before = os.getloadavg()[0]
            part(args.quick, out)
            # Another process on the same cores skews every figure: say how busy the machine was.
            print(
                f"  [load average (1 min): {before:.1f} before this part, "
                f"{os.getloadavg()[0]:.1f} after]"
            )
    total = time.perf_counter() - t0
    print(f"\nbenchmark wall time {total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out | {"total_seconds": total}, indent=2, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
