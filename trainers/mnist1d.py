"""MNIST-1D (``data.name: mnist1d``): a small, hard signal-classification set made on this machine.

Kept apart from :mod:`trainers.datasets` because it needs the optional ``mnist1d`` package and
reseeds the global generators while it generates; :func:`load` shields callers from both.
"""

from __future__ import annotations

import functools
import random

import numpy as np

from trainers.datasets import Arrays, DataError


def load(seed: int = 42) -> Arrays:
    """MNIST-1D, generated on this machine: 5000 signals of length 40, 10 balanced classes.

    Made by the ``mnist1d`` package's ``make_dataset(get_dataset_args())`` with its default
    arguments except ``seed`` (the package's default, 42, is ours too), never by its download
    path. The package's own 4000/1000 train/test split is a cut of one shuffled generation, so
    both parts come from the same distribution: we concatenate them and let
    :func:`~trainers.datasets.load_splits` make the usual stratified split, so ``val_fraction``,
    ``test_fraction`` and ``split_seed`` mean the same here as for every other data set. It is
    hard for an MLP (its signals are shifted, scaled and noisy; README's data-set section gives
    the accuracy reached), which leaves room for activation and initialisation effects to show.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"data.options.seed: must be an integer, got {seed!r}")
    x, y = _generated(seed)
    return Arrays(x, y, classes=tuple(str(d) for d in range(10)))


@functools.lru_cache(maxsize=2)
def _generated(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate once per process and seed (generation is slow next to reading a bundled set);
    read-only arrays, as callers share them."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError(
            "data.name: 'mnist1d' needs the mnist1d package; install it with 'pip install mnist1d'"
        ) from None
    args = get_dataset_args()
    args.seed = seed
    # make_dataset reseeds the global `random` and NumPy generators; put them back so loading
    # data never changes what a caller's own seeds produce afterwards.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y
