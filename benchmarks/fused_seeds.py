"""Fused seeds: k seeds of one configuration trained as one batched model vs k separate runs."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import torch

from trainers import TrainSettings, build_mlp, load_splits, seed_everything, train, train_fused

# fused seeds


def fused_vs_separate(
    device: str,
    seeds: int,
    epochs: int,
    depth: int = 10,
    width: int = 64,
    batch: int = 32,
    threads: int | None = 1,
    repeats: int = 2,
) -> dict[str, float]:
    """Seconds for ``seeds`` separate ``train`` runs and one fused run of the same seeds: the
    fastest of ``repeats`` alternations of the two (the host's speed drifts between runs)."""
    if threads:
        torch.set_num_threads(threads)
    data = load_splits("digits").to(device)
    build = functools.partial(
        build_mlp, data.n_features, data.n_classes, depth, width, "elu", None, "he_normal", "before"
    )
    settings = TrainSettings(epochs=epochs, batch_size=batch, lr=1e-3, diagnostics=False)
    seed_list = list(range(seeds))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def separate() -> list[float]:
        accs = []
        for s in seed_list:
            seed_everything(s)
            model = build().to(device)
            accs.append(train(model, data, dataclasses.replace(settings, seed=s)).best_val_accuracy)
        return accs

    # Warm-up both paths (first-call allocations, kernels), then time.
    one = dataclasses.replace(settings, epochs=1)
    seed_everything(0)
    train(build().to(device), data, one)
    train_fused(build, seed_list, data, one)
    sync()
    times: dict[str, list[float]] = {"separate": [], "fused": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        acc_separate = separate()
        sync()
        t1 = time.perf_counter()
        acc_fused = [r.best_val_accuracy for r in train_fused(build, seed_list, data, settings)]
        sync()
        times["separate"].append(t1 - t0)
        times["fused"].append(time.perf_counter() - t1)
    same = max(abs(x - y) for x, y in zip(acc_separate, acc_fused, strict=True))
    separate_s, fused_s = min(times["separate"]), min(times["fused"])
    return {
        "separate": separate_s,
        "fused": fused_s,
        "ratio": fused_s / separate_s,
        "max_abs_best_val_diff": same,
    }


def part_fused(quick: bool, out: dict[str, Any]) -> None:
    seeds, epochs = 8, (2 if quick else 5)
    print(
        f"\n== fused seeds: {seeds} seeds, elu + he_normal + bn before, digits, depth 10 "
        f"width 64, batch 32, {epochs} epochs, CPU"
    )
    out["fused"] = {}
    # One torch thread, as each trial gets (resources.cpu = 1); with two threads on two busy
    # cores OpenMP oversubscription, not fusing, decides the figure.
    for threads in (1,):
        r = fused_vs_separate("cpu", seeds, epochs, threads=threads)
        out["fused"][f"threads_{threads}"] = r
        print(
            f"  torch threads {threads}: {seeds} separate {r['separate']:.2f} s, fused "
            f"{r['fused']:.2f} s -> fused/separate = {r['ratio']:.2f}x (target <= 0.35x); "
            f"max |best val acc diff| {r['max_abs_best_val_diff']:.1e}"
        )
