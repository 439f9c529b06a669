"""What the per-epoch gradient diagnostics cost, on the ``quick`` preset's model and data.

For a spread of the preset's configurations, trains the same model twice from the same seed,
diagnostics off and on, and prints the epoch time of each and the overhead in percent. The
diagnostics run once per epoch on a fixed probe batch, so their cost does not grow with the
number of mini-batches.

    .venv/bin/python benchmarks/diagnostics_cost.py [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import trainers
from spaces import load_config


def epoch_seconds(
    config, activation: str, init: str, bn: str, diagnostics: bool, epochs: int
) -> float:
    data = trainers.load_splits(config.data.name)
    trainers.seed_everything(0)
    model = trainers.build_mlp(
        data.n_features,
        data.n_classes,
        config.model.depth,
        config.model.width,
        activation,
        None,
        init,
        bn,
    )
    settings = trainers.TrainSettings(
        epochs=epochs, batch_size=config.training.batch_size, lr=3e-3, diagnostics=diagnostics
    )
    t0 = time.perf_counter()
    trainers.train(model, data, settings)
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
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
        f"width {config.model.width}, batch {config.training.batch_size}; minimum of "
        f"{args.repeats} interleaved runs x {args.epochs} epochs, 1 thread"
    )
    print(f"{'configuration':<34}{'off s/epoch':>12}{'on s/epoch':>12}{'overhead':>10}")
    overheads = []
    for activation, init, bn in combos:
        offs, ons = [], []
        for _ in range(args.repeats):  # interleaved, and the minimum: robust to a busy machine
            offs.append(epoch_seconds(config, activation, init, bn, False, args.epochs))
            ons.append(epoch_seconds(config, activation, init, bn, True, args.epochs))
        off, on = min(offs), min(ons)
        overheads.append((on - off) / off)
        print(
            f"{activation + ' ' + init + ' bn=' + bn:<34}"
            f"{off:>12.4f}{on:>12.4f}{overheads[-1]:>10.1%}"
        )
    print(
        f"median overhead {statistics.median(overheads):.1%}, "
        f"max {max(overheads):.1%} (target <= 5%)"
    )


if __name__ == "__main__":
    main()
