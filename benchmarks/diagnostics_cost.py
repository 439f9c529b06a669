"""What the gradient diagnostics cost, on the ``quick`` preset's model and data.

Two measurements:

- ``--study`` (the one that counts): the same small study run end to end with ``search.run_study``
  with diagnostics on and off, alternated (on, off, on, off, ...) so a shared machine's drift
  falls on both; diagnostics on means the epoch-0 probe, every fused seed measured each epoch, the
  per-seed figures and pictures. Prints each pair and the median relative cost in wall time.
- the default: for a spread of the preset's configurations, one training run each with the probe
  timed inside it (``GradientProbe.measure`` and ``start_epoch`` wrapped): the probe's share of
  that very run, plus the epoch time with diagnostics off and on (minimum of interleaved runs).

    .venv/bin/python benchmarks/diagnostics_cost.py [--epochs 5] [--repeats 7]
    .venv/bin/python benchmarks/diagnostics_cost.py --study [--pairs 3] [--set model.depth=20 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
from probes import Probes

import trainers
from spaces import load_config, model_builder, resolve_trial, train_settings
from trainers.diagnostics import GradientProbe


def run(
    config, activation: str, init: str, bn: str, diagnostics: bool, epochs: int
) -> tuple[float, float]:
    """(seconds per epoch, probe seconds per epoch) of one training run."""
    data = config.data.load()
    params = {"activation": activation, "init": init, "bn": bn, "lr": 3e-3}
    spec = resolve_trial(config, params)
    trainers.seed_everything(0)
    model = model_builder(config, spec, data.n_features, data.n_classes)()
    settings = dataclasses.replace(
        train_settings(config, spec), epochs=epochs, diagnostics=diagnostics
    )
    with Probes(standard=False) as timer:
        for name in ("measure", "start_epoch"):
            timer.wrap(GradientProbe, name, "probe")
        t0 = time.perf_counter()
        trainers.train(model, data, settings)
        total = time.perf_counter() - t0
    return total / epochs, timer.seconds.get("probe", 0.0) / epochs


def study_cost(pairs: int, pictures: bool = True, extra: tuple[str, ...] = ()) -> None:
    """Whole-study wall time, diagnostics on vs off, alternated; Ray started once before.
    Without ``pictures`` the diagnosed studies draw no gradient pictures at their end, which
    separates the probe's cost from the pictures'."""
    import tempfile

    import ray

    from search import run_study

    overrides = [
        "num_samples=8",
        "training.epochs=5",
        "training.seeds=3",
        "scheduler.name=fifo",
        "searcher.name=random",
        *([] if pictures else ["diagnostics.plots_top=0", "diagnostics.plots_diverged=false"]),
        *extra,
    ]
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ratios = []
    print(f"load average at the start: {os.getloadavg()[0]:.1f}; overrides: {' '.join(overrides)}")

    def study(enabled: bool) -> float:
        with tempfile.TemporaryDirectory(prefix="gradsweep-diagcost-") as tmp:
            flag = f"diagnostics.enabled={str(enabled).lower()}"
            config = load_config("quick", [*overrides, flag, f"output_dir={tmp}"])
            t0 = time.perf_counter()
            run_study(config)
            return time.perf_counter() - t0

    try:
        study(True)  # warm-up, not counted: the first study in a process pays for first uses
        for i in range(pairs):
            walls = {}
            for enabled in (True, False) if i % 2 == 0 else (False, True):
                walls[enabled] = study(enabled)
            ratios.append(walls[True] / walls[False] - 1)
            print(
                f"  pair {i + 1}: diagnostics on {walls[True]:6.1f} s, off {walls[False]:6.1f} s "
                f"-> {ratios[-1]:+.1%}"
            )
    finally:
        ray.shutdown()
    low, high = (statistics.quantiles(ratios, n=4)[i] for i in (0, 2)) if pairs > 1 else (0, 0)
    print(
        f"study wall time with diagnostics: median {statistics.median(ratios):+.1%} over "
        f"{pairs} alternated pairs (quartiles {low:+.1%} .. {high:+.1%}; target <= 5%); "
        f"load average at the end: {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--study", action="store_true", help="whole studies, on vs off")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--no-pictures", action="store_true", help="with --study: no pictures")
    parser.add_argument(
        "--set", nargs="*", default=[], help="with --study: overrides (model.depth=20 ...)"
    )
    args = parser.parse_args()
    if args.study:
        study_cost(args.pairs, pictures=not args.no_pictures, extra=tuple(args.set))
        return
    torch.set_num_threads(1)  # as a trial with resources.cpu = 1
    config = load_config("quick")
    combos = [
        ("relu", "he_normal", "none"),
        ("elu", "he_normal", "before"),
        ("logistic", "pytorch_default", "none"),
        ("tanh", "glorot_uniform", "before"),
        ("leaky_relu", "he_normal", "none"),
        ("selu", "lecun_normal", "none"),
    ]
    print(
        f"quick preset: {config.data.name}, depth {config.model.depth}, "
        f"width {config.model.width}, batch {config.training.batch_size}, "
        f"probe {config.diagnostics.probe_size} samples; "
        f"{args.repeats} runs x {args.epochs} epochs, 1 thread"
    )
    print(f"{'configuration':<34}{'epoch s':>9}{'probe ms':>10}{'share':>8}{'off s':>9}{'on s':>9}")
    shares = []
    for activation, init, bn in combos:
        ons, offs, probes = [], [], []
        for _ in range(args.repeats):  # interleaved: robust to a busy machine
            off, _ = run(config, activation, init, bn, False, args.epochs)
            on, probe = run(config, activation, init, bn, True, args.epochs)
            offs.append(off)
            ons.append(on)
            probes.append(probe / (on - probe))  # the probe's share of that run's epoch
        share = statistics.median(probes)
        shares.append(share)
        epoch = min(ons)
        print(
            f"{activation + ' ' + init + ' bn=' + bn:<34}{epoch:>9.4f}{share * epoch * 1e3:>10.2f}"
            f"{share:>8.1%}{min(offs):>9.4f}{min(ons):>9.4f}"
        )
    print(
        f"probe cost: median {statistics.median(shares):.1%}, max {max(shares):.1%} of an epoch "
        "(target <= 5%)"
    )


if __name__ == "__main__":
    main()
