"""What one trial result costs Ray Tune's driver, by how many numeric keys it carries (issues
18 and 21).

A trial of the ``stream`` shape (``short_trials.py``: digits, depth 20 x 64, 3 fused seeds)
trains 2 epochs for real, and its ``on_epoch`` metrics are built as ``run_trial`` builds them
(the seed book, placement, model size), with the keys Tune itself adds in the trial process. The
driver's part is then replayed without Ray, per result: unpickling it (Ray ships it pickled),
``flatten_dict`` (Tune's result processing) and ``Trial.update_last_result`` (flatten again,
per-key running statistics in ``metric_analysis``), plus, for the packed result, the tracker's
``unpack``. Printed per shape of result: numeric keys, driver CPU per result (a 15-epoch trial's
results on a fresh ``Trial``, repeated), the driver memory a trial keeps after its 15 results
(``tracemalloc``, over many trials held at once; Tune keeps every trial to the end) and the size
of the trial's part of Tune's experiment snapshot (JSON) with the CPU to build it, which Tune
does for every trial at the end of ``fit`` (and once an hour); and ``pack``'s own cost in the trial.

Shapes: ``full`` (every figure as its own key: what the trial sent before packing), ``tune keys``
(only the keys Tune needs: the floor) and ``packed`` (those keys plus the rest as one string,
:func:`search.schema.pack`).

Run from the repository root: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/result_keys.py``
(about 30 s on one idle core).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import platform
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.utils import flatten_dict
from short_trials import stream_dict

from search.schema import N_PARAMS, TUNE_KEYS, pack, unpack
from search.seeds import SeedBook
from spaces import StudyConfig, load_config, model_builder, resolve_trial, train_settings
from trainers import train_fused

EPOCHS = 15


def real_metrics() -> list[dict[str, Any]]:
    """Two epochs' metrics of a real trial of the stream shape, as ``run_trial`` reports them."""
    config: StudyConfig = load_config(stream_dict(1, "/tmp"))
    params = {"activation": "elu", "init": "matched", "bn": "none", "lr": 1e-3}
    spec = resolve_trial(config, params)
    data = config.data.load()
    build = model_builder(config, spec, data.n_features, data.n_classes)
    settings = dataclasses.replace(train_settings(config, spec), epochs=2)
    seeds = [config.training.seed + i for i in range(config.training.seeds)]
    book = SeedBook(seeds, chance=1.0 / data.n_classes)
    node = {"node_id": "ab" * 28, "device": "cpu"}
    size = {N_PARAMS: float(sum(p.numel() for p in build().parameters()))}
    out: list[dict[str, Any]] = []

    def record(reports: dict[int, Any], state: Any) -> None:
        out.append({**book.record(reports), **node, **size})

    train_fused(build, seeds, data, settings, record)
    return out


def tune_filled(metrics: dict[str, Any], epoch: int, config: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with the keys Ray Tune adds in the trial process (function trainable)."""
    now = time.time()
    return {
        **metrics,
        "timestamp": int(now),
        "checkpoint_dir_name": None,
        "done": False,
        "training_iteration": epoch,
        "trial_id": "abc12_00001",
        "date": "2026-11-30_04-00-00",
        "time_this_iter_s": 0.12,
        "time_total_s": 0.12 * epoch,
        "pid": os.getpid(),
        "hostname": platform.node(),
        "node_ip": "127.0.0.1",
        "config": config,
        "time_since_restore": 0.12 * epoch,
        "iterations_since_restore": epoch,
    }


def trial_results(metrics: list[dict[str, Any]], shape: Callable[[dict], dict]) -> list[bytes]:
    """A 15-epoch trial's results, pickled as they reach the driver: the first epoch's figures
    (with those at initialisation) once, then the second epoch's, renumbered."""
    config = {"activation": "elu", "init": "matched", "bn": "none", "lr": 1e-3, "trial_number": 7}
    first, later = metrics
    out = []
    for epoch in range(1, EPOCHS + 1):
        m = dict(first if epoch == 1 else later, epoch=float(epoch))
        out.append(pickle.dumps(tune_filled(shape(m), epoch, config), protocol=5))
    return out


def drive(blobs: list[bytes], packed: bool) -> Trial:
    """The driver's work on one trial's results (Tune's, and the tracker's unpacking)."""
    trial = Trial("bench", config={}, stub=True)
    for blob in blobs:
        result = pickle.loads(blob)
        flatten_dict(result)  # TuneController._process_trial_result
        if packed:
            unpack(result)  # MlflowTracker.on_trial_result
        trial.update_last_result(result)
    return trial


def measure(blobs: list[bytes], packed: bool, trials: int, held: int) -> dict[str, float]:
    drive(blobs, packed)  # warm
    cpu0 = time.process_time()
    for _ in range(trials):
        drive(blobs, packed)
    cpu = (time.process_time() - cpu0) / (trials * len(blobs))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = [drive(blobs, packed) for _ in range(held)]
    used = (tracemalloc.get_traced_memory()[0] - base) / len(kept)
    tracemalloc.stop()
    result = pickle.loads(blobs[-1])
    numeric = sum(isinstance(v, int | float) for v in flatten_dict(result).values())
    cpu0 = time.process_time()
    state = len(kept[0].run_metadata.get_json_state())  # the trial in Tune's experiment snapshot
    state_cpu = time.process_time() - cpu0
    return {
        "keys": numeric,
        "bytes": len(blobs[-1]),
        "cpu_us": cpu * 1e6,
        "kib": used / 1024,
        "state_kib": state / 1024,
        "state_ms": state_cpu * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials timed per shape")
    parser.add_argument("--held", type=int, default=200, help="trials held for the memory figure")
    args = parser.parse_args()
    metrics = real_metrics()
    shapes = {
        "full": (lambda m: m, False),
        "tune keys": (lambda m: {k: v for k, v in m.items() if k in TUNE_KEYS}, False),
        "packed": (pack, True),
    }
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    header = ("result", "numeric keys", "bytes", "driver CPU/result", "memory/trial", "snapshot")
    print("{:<10} {:>12} {:>7} {:>18} {:>13} {:>19}".format(*header))
    for name, (shape, packed) in shapes.items():
        r = measure(trial_results(metrics, shape), packed, args.trials, args.held)
        print(
            f"{name:<10} {r['keys']:>12} {r['bytes']:>7} {r['cpu_us']:>15.0f} us "
            f"{r['kib']:>9.1f} KiB {r['state_kib']:>6.1f} KiB {r['state_ms']:>5.1f} ms"
        )
    cpu0 = time.process_time()
    for _ in range(1000):
        pack(metrics[0])
    print(f"pack, in the trial process: {(time.process_time() - cpu0) * 1e3:.0f} us per result")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
