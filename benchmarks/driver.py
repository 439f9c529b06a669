"""Driver cost per trial: ``run_study`` with a trivial trainable, at growing study sizes."""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CONCURRENCY, study_dict
from probes import Probes

from spaces import (
    load_config,
)

# driver scalability


def trivial_trial(params: dict[str, Any], study: dict[str, Any], data: Any = None) -> None:
    """Stands in for ``search.trainable.run_trial``: one instant 'epoch', a real trial's metrics."""
    from ray import tune

    value = random.random()
    tune.report(
        {
            "epoch": 1,
            "train_loss": 1.0,
            "val_loss": 1.0,
            "val_accuracy": value,
            "test_accuracy": value,
            "best_val_accuracy": value,
            "epoch_seconds": 0.0,
            "diverged": 0.0,
        }
    )


def run_driver(trials: int, searcher: str, tmp: Path) -> dict[str, Any]:
    """``run_study`` itself, its trainable swapped for :func:`trivial_trial`, Ray pre-started."""
    import ray

    from search import run_study

    study = study_dict(trials, 1, str(tmp))
    study["searcher"] = {"name": searcher, "seed": 0}
    study["training"]["checkpoint_every"] = 0
    config = load_config(study, ["diagnostics.enabled=false"])
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with Probes() as probes:
            cpu0, t0 = time.process_time(), time.perf_counter()
            run_study(config, trainable=trivial_trial)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        ray.shutdown()
    stamps = probes.stamps
    half = stamps[len(stamps) // 2 :]
    tail = stamps[-max(2, trials // 10) :]
    return {
        "wall": wall,
        "driver_cpu": cpu,
        "completed": len(stamps),
        # Mean time between trial completions, start-up excluded: the steady per-trial cost.
        "steady_last_half": (half[-1] - half[0]) / (len(half) - 1) if len(half) > 1 else math.nan,
        "steady_last_tenth": (tail[-1] - tail[0]) / (len(tail) - 1) if len(tail) > 1 else math.nan,
        **probes.seconds,
    }


def part_driver(quick: bool, out: dict[str, Any], searchers: list[str]) -> None:
    sizes = (20, 200) if quick else (100, 1000)
    print(
        f"\n== driver: search.run_study with a trivial trainable, {CONCURRENCY} at a time, "
        "1 epoch, no checkpoints, no diagnostics, Optuna and MLflow on SQLite, Ray pre-started"
    )
    out["driver"] = {}
    for searcher in searchers:
        per = {}
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="gradsweep-driver-") as tmp:
                r = run_driver(n, searcher, Path(tmp))
            per[n] = r
            parts = ", ".join(
                f"{k} {v / n * 1000:.1f}" for k, v in r.items() if isinstance(v, float) and ":" in k
            )
            print(
                f"  {searcher:6s} {n:5d} trials: wall {r['wall']:6.1f} s = "
                f"{r['wall'] / n * 1000:6.1f} ms/trial; driver process CPU "
                f"{r['driver_cpu'] / n * 1000:6.1f} ms/trial; between completions "
                f"{r['steady_last_half'] * 1000:.1f} ms over the last half, "
                f"{r['steady_last_tenth'] * 1000:.1f} ms over the last tenth"
            )
            print(f"         summed per trial, ms: {parts}")
        small, large = sizes
        growth = (per[large]["wall"] / large) / (per[small]["wall"] / small)
        steady = per[large]["steady_last_tenth"] / per[small]["steady_last_half"]
        print(
            f"  {searcher:6s} wall per trial, {large} vs {small} trials: {growth:.2f}x; time "
            f"between completions, last tenth of {large} vs last half of {small}: {steady:.2f}x "
            "(target <= 2x)"
        )
        out["driver"][searcher] = {str(k): v for k, v in per.items()} | {
            "growth_wall_per_trial": growth,
            "growth_steady": steady,
        }


# ---------------------------------------------------------------------------------------------
