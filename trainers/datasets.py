"""Data-set registry and the one split every trial of a study shares.

A data set factory returns raw arrays; :func:`load_splits` makes the fixed-seed stratified
train/val/test split and standardises with training statistics only, so validation and test never
leak into the scaler. Splits are cached per process: with reused Ray actors, a worker loads and
standardises once, not once per trial.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """A data set cannot be built from the options given (bad path, missing column, ...)."""


@dataclass(frozen=True)
class Arrays:
    """Features ``x`` (n, d) and integer class labels ``y`` (n,)."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Splits:
    """Standardised tensors for one study; ``n_classes`` counts the labels of the whole set."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int

    def to(self, device: str | torch.device) -> Splits:
        """The same splits on ``device`` (a no-op copy on CPU)."""
        moved = {k: v.to(device) for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}
        return Splits(**moved, n_features=self.n_features, n_classes=self.n_classes)


def _sklearn(loader: str) -> Callable[..., Arrays]:
    def load(**options: object) -> Arrays:
        if options:
            raise DataError(f"data.options: this data set takes no options, got {sorted(options)}")
        from sklearn import datasets  # imported when used: trial workers start faster

        bunch = getattr(datasets, loader)()
        return Arrays(np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target))

    load.__doc__ = f"scikit-learn's bundled ``{loader}`` (no download)."
    return load


def synthetic(
    n_samples: int = 2000,
    n_features: int = 20,
    n_informative: int = 10,
    n_classes: int = 4,
    seed: int = 0,
) -> Arrays:
    """``make_classification``: a reproducible set whose size and difficulty you choose."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=int(n_samples),
        n_features=int(n_features),
        n_informative=int(n_informative),
        n_redundant=0,
        n_classes=int(n_classes),
        random_state=int(seed),
    )
    return Arrays(x.astype(np.float32), y)


def table(path: str | None = None, target: str | None = None) -> Arrays:
    """A CSV or Parquet file with a named target column; every other column is a feature."""
    import pandas as pd

    if not path or not target:
        raise DataError("data.options: the 'file' data set needs 'path' and 'target'")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.options.path: no readable file at {str(file)!r}")
    try:
        frame = pd.read_parquet(file) if file.suffix in (".parquet", ".pq") else pd.read_csv(file)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"data.options.path: cannot read {str(file)!r}: {exc}") from None
    if target not in frame.columns:
        raise DataError(
            f"data.options.target: no column {target!r} in {file.name}; columns are "
            f"{', '.join(map(str, frame.columns))}"
        )
    features = frame.drop(columns=[target])
    non_numeric = [
        c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c].dtype)
    ]
    if non_numeric:
        raise DataError(
            f"data.options.path: non-numeric feature columns {non_numeric} in {file.name}"
        )
    labels = np.unique(frame[target].to_numpy(), return_inverse=True)[1]
    return Arrays(features.to_numpy(dtype=np.float32), labels)


DATASETS: dict[str, Callable[..., Arrays]] = {
    "digits": _sklearn("load_digits"),
    "breast_cancer": _sklearn("load_breast_cancer"),
    "wine": _sklearn("load_wine"),
    "iris": _sklearn("load_iris"),
    "synthetic": synthetic,
    "file": table,
}


def load_splits(
    name: str,
    options: dict[str, object] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Load data set ``name``, split it stratified with ``seed``, standardise with train stats."""
    key = json.dumps(options or {}, sort_keys=True, default=str)
    return _load_splits_cached(name, key, float(val_fraction), float(test_fraction), int(seed))


@functools.lru_cache(maxsize=8)
def _load_splits_cached(name: str, options_json: str, val: float, test: float, seed: int) -> Splits:
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if name not in DATASETS:
        raise DataError(f"data.name: unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    try:
        arrays = DATASETS[name](**json.loads(options_json))
        x, y = arrays.x, np.asarray(arrays.y).astype(np.int64)
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=test, stratify=y, random_state=seed
        )
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=val / (1 - test), stratify=y_rest, random_state=seed
        )
    except DataError:
        raise
    except (TypeError, ValueError) as exc:  # an unknown option, or values sklearn refuses
        raise DataError(f"data.options: {exc}") from None
    scaler = StandardScaler().fit(x_train)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(scaler.transform(a).astype(np.float32))

    return Splits(
        x_train=tensor(x_train),
        y_train=torch.from_numpy(y_train),
        x_val=tensor(x_val),
        y_val=torch.from_numpy(y_val),
        x_test=tensor(x_test),
        y_test=torch.from_numpy(y_test),
        n_features=x.shape[1],
        n_classes=int(y.max()) + 1,
    )
