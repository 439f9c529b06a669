"""Data-set registry and the one split every trial of a study shares.

A data set factory returns raw arrays; :func:`load_splits` checks them (finite features, at least
one feature column, two classes, enough rows per class for the split), makes the fixed-seed
stratified train/val/test split and standardises with training statistics only, so validation and
test never leak into the scaler. Splits are cached per process: with reused Ray actors, a worker
loads and standardises once, not once per trial.

Every problem with the data is a :class:`DataError` whose text is one line naming the key or value
at fault and what would fix it; the CLI shows that line and exits with code 2. Loaders import their
libraries when called, so importing this module stays cheap for trial workers.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class DataError(ValueError):
    """A data set cannot be built from the options given (bad path, missing column, ...)."""


@dataclass(frozen=True)
class Arrays:
    """Features ``x`` (n, d) and integer class labels ``y`` (n,), as a factory returns them.

    The optional fields only make error messages precise: ``columns`` names the feature columns,
    ``classes`` the original label of each class index, and ``source`` is how a message refers to
    the data (``"data.options.path: table.csv"``); :func:`load_splits` fills in the data set name
    when it is missing.
    """

    x: np.ndarray
    y: np.ndarray
    columns: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    source: str | None = None


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


def one_line(text: object) -> str:
    """``text`` with its line breaks and runs of spaces folded: a user error is one line."""
    return " ".join(str(text).split())


def quoted_names(items: Sequence[str], most: int = 5) -> str:
    """``'a', 'b', 'c'`` or ``'a', 'b', ... and 7 more``: a bounded list for a one-line error."""
    shown = ", ".join(repr(str(i)) for i in items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"


def encode_labels(values: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices 0..k-1 for any labels, and the label of each index.

    Numbers keep their numeric order; strings that all read as numbers ("2", "10") are ordered as
    numbers too, so an OpenML nominal target '0'..'9' keeps the index its digit names.
    """
    labels = np.asarray(values)
    if labels.dtype.kind not in "biuf":
        labels = labels.astype(str)  # mixed objects (str and float) cannot be sorted together
    uniques, codes = np.unique(labels, return_inverse=True)
    if labels.dtype.kind == "U":
        try:
            order = np.argsort([float(u) for u in uniques], kind="stable")
        except ValueError:
            pass  # not all numeric: keep the sorted strings
        else:
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            codes, uniques = rank[codes], uniques[order]
    return codes.reshape(-1).astype(np.int64), tuple(str(u) for u in uniques)


def _sklearn(loader: str) -> Callable[..., Arrays]:
    def load(**options: object) -> Arrays:
        if options:
            raise DataError(f"data.options: this data set takes no options, got {sorted(options)}")
        from sklearn import datasets  # imported when used: trial workers start faster

        bunch = getattr(datasets, loader)()
        return Arrays(
            np.asarray(bunch.data, dtype=np.float32),
            np.asarray(bunch.target),
            columns=tuple(map(str, bunch.get("feature_names", []))) or None,
            classes=tuple(map(str, bunch.get("target_names", []))) or None,
        )

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


def mnist1d(**options: Any) -> Arrays:
    """MNIST-1D, generated on this machine (:func:`trainers.mnist1d.load`)."""
    from trainers.mnist1d import load  # the mnist1d package: loaded only when used

    return load(**options)


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
        raise DataError(f"data.options.path: cannot read {str(file)!r}: {one_line(exc)}") from None
    if target not in frame.columns:
        raise DataError(
            f"data.options.target: no column {target!r} in {file.name}; columns are "
            f"{', '.join(map(str, frame.columns))}"
        )
    if frame.empty:
        raise DataError(f"data.options.path: {file.name} has no rows")
    features = frame.drop(columns=[target])
    non_numeric = [
        c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c].dtype)
    ]
    if non_numeric:
        raise DataError(
            f"data.options.path: non-numeric feature columns {non_numeric} in {file.name}"
        )
    empty_targets = int(frame[target].isna().sum())
    if empty_targets:
        raise DataError(
            f"data.options.target: column {target!r} of {file.name} has {empty_targets} empty "
            "cells; drop or fill those rows first"
        )
    labels, classes = encode_labels(frame[target].to_numpy())
    return Arrays(
        features.to_numpy(dtype=np.float32, na_value=np.nan),
        labels,
        columns=tuple(map(str, features.columns)),
        classes=classes,
        source=f"data.options.path: {file.name}",
    )


def openml(**options: Any) -> Arrays:
    """An OpenML data set from the local cache (:func:`trainers.openml.load`)."""
    from trainers.openml import load  # scikit-learn's OpenML client: loaded only when used

    return load(**options)


DATASETS: dict[str, Callable[..., Arrays]] = {
    "digits": _sklearn("load_digits"),
    "breast_cancer": _sklearn("load_breast_cancer"),
    "wine": _sklearn("load_wine"),
    "iris": _sklearn("load_iris"),
    "synthetic": synthetic,
    "mnist1d": mnist1d,
    "openml": openml,
    "file": table,
}


def load_splits(
    name: str,
    options: dict[str, object] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Load data set ``name``, check it, split it stratified with ``seed``, standardise with
    train statistics."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            "data: val_fraction and test_fraction must be between 0 and 1 with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    key = json.dumps(options or {}, sort_keys=True, default=str)
    return _load_splits_cached(name, key, float(val_fraction), float(test_fraction), int(seed))


@functools.lru_cache(maxsize=8)
def _load_splits_cached(name: str, options_json: str, val: float, test: float, seed: int) -> Splits:
    from sklearn.preprocessing import StandardScaler

    if name not in DATASETS:
        raise DataError(f"data.name: unknown data set {name!r}; allowed: {', '.join(DATASETS)}")
    try:
        arrays = DATASETS[name](**json.loads(options_json))
    except DataError:
        raise
    except (TypeError, ValueError) as exc:  # an unknown option, or values sklearn refuses
        raise DataError(f"data.options: {one_line(exc)}") from None
    source = arrays.source or f"data.name: {name!r}"
    x, y = np.asarray(arrays.x), np.asarray(arrays.y).astype(np.int64)
    _check_arrays(x, y, arrays.columns, arrays.classes, source)
    x_train, x_val, x_test, y_train, y_val, y_test = _split(
        x, y, val, test, seed, arrays.classes, source
    )
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


def _check_arrays(
    x: np.ndarray,
    y: np.ndarray,
    columns: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    source: str = "data",
) -> None:
    """Refuse data no study can learn from, each with a one-line :class:`DataError`.

    Without these checks a NaN trains every trial to "diverged", a single class scores 100%,
    and an empty feature matrix or a tiny class ends in a scikit-learn traceback.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{source} has no rows")
    if x.shape[1] == 0:
        raise DataError(
            f"{source} has no feature columns, only the target; add at least one feature column"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        where = np.flatnonzero(bad.any(axis=0))
        names = (
            [columns[int(i)] for i in where] if columns is not None else [f"#{i}" for i in where]
        )
        raise DataError(
            f"{source} has {rows} row{'s' if rows != 1 else ''} with empty, NaN or infinite "
            f"feature values (column{'s' if len(names) != 1 else ''} {quoted_names(names)}); "
            "drop or fill them first"
        )
    labels = np.unique(y)
    if labels.size < 2:
        raise DataError(
            f"{source} has only one class ({_label(int(labels[0]), classes)!r}); classification "
            "needs at least 2"
        )


def _label(code: int, classes: Sequence[str] | None) -> str:
    return classes[code] if classes is not None and 0 <= code < len(classes) else str(code)


def rows_needed(n_rows: int, n_classes: int, val: float, test: float) -> tuple[int, int]:
    """Rows per class and rows in all that make :func:`load_splits`' two stratified splits succeed
    whatever the seed.

    The split is ``train_test_split(stratify=y)`` twice: test off the whole set, then validation
    off the rest. scikit-learn gives the first split's train part ``floor(count * n_train / n)``
    or one more of each class, and the second split needs 2 of every class in that part; so a
    class needs ``ceil(2 n / n_train)`` rows (3 for the default fractions; ``val_fraction`` does
    not matter). And each split's two parts must each have at least as many rows as there are
    classes, which sets the least number of rows in all.
    """

    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"fractions must be in (0, 1) with a sum below 1, got {val}, {test}")

    def totals_fit(n: int) -> bool:
        n_test = math.ceil(test * n)
        rest = n - n_test
        n_val = math.ceil(val / (1 - test) * rest)
        return min(n_test, rest, n_val, rest - n_val) >= n_classes

    n_train = n_rows - math.ceil(test * n_rows)
    per_class = -(-2 * n_rows // n_train) if n_train > 0 else 2 * n_rows
    total = max(n_classes * 2, 1)
    while not totals_fit(total):
        total += 1
    return max(per_class, 2), total


def _split(
    x: np.ndarray,
    y: np.ndarray,
    val: float,
    test: float,
    seed: int,
    classes: Sequence[str] | None,
    source: str,
) -> tuple[np.ndarray, ...]:
    """Stratified train/val/test; when scikit-learn refuses, say which class is too small."""
    from sklearn.model_selection import train_test_split

    try:
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=test, stratify=y, random_state=seed
        )
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=val / (1 - test), stratify=y_rest, random_state=seed
        )
    except ValueError as exc:
        labels, counts = np.unique(y, return_counts=True)
        per_class, total = rows_needed(len(y), len(labels), val, test)
        fractions = f"val_fraction {val:g} and test_fraction {test:g}"
        small = [(int(c), int(k)) for c, k in zip(counts, labels, strict=True) if c < per_class]
        if small:
            small.sort()
            count, code = small[0]
            n = len(small) - 1
            others = f" ({n} other class{'es' if n > 1 else ''} too)" if n else ""
            raise DataError(
                f"{source}: class {_label(code, classes)!r} has {count} "
                f"row{'s' if count != 1 else ''}{others}; the stratified split with {fractions} "
                f"needs at least {per_class} rows per class"
            ) from None
        if len(y) < total:
            raise DataError(
                f"{source} has {len(y)} rows; a stratified split of {len(labels)} classes with "
                f"{fractions} needs at least {max(total, per_class * len(labels))} rows"
            ) from None
        raise DataError(f"{source}: cannot split with {fractions}: {one_line(exc)}") from None
    return x_train, x_val, x_test, y_train, y_val, y_test
