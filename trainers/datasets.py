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

import contextlib
import functools
import json
import math
import os
import random
import warnings
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


def _one_line(text: object) -> str:
    """``text`` with its line breaks and runs of spaces folded: a user error is one line."""
    return " ".join(str(text).split())


def _names(items: Sequence[str], most: int = 5) -> str:
    """``'a', 'b', 'c'`` or ``'a', 'b', ... and 7 more``: a bounded list for a one-line error."""
    shown = ", ".join(repr(str(i)) for i in items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"


def _encode_labels(values: Any) -> tuple[np.ndarray, tuple[str, ...]]:
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


def mnist1d(seed: int = 42) -> Arrays:
    """MNIST-1D, generated on this machine: 5000 signals of length 40, 10 balanced classes.

    Made by the ``mnist1d`` package's ``make_dataset(get_dataset_args())`` with its default
    arguments except ``seed`` (the package's default, 42, is ours too), never by its download
    path. The package's own 4000/1000 train/test split is a cut of one shuffled generation, so both
    parts come from the same distribution: we concatenate them and let :func:`load_splits` make
    the usual stratified split, so ``val_fraction``, ``test_fraction`` and ``split_seed`` mean the
    same here as for every other data set. An MLP reaches only about 68% on it, which leaves room
    for activation and initialisation effects to show.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"data.options.seed: must be an integer, got {seed!r}")
    x, y = _mnist1d_generated(seed)
    return Arrays(x, y, classes=tuple(str(d) for d in range(10)))


@functools.lru_cache(maxsize=2)
def _mnist1d_generated(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate once per process and seed (about 2 s); read-only arrays, as callers share them."""
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
        raise DataError(f"data.options.path: cannot read {str(file)!r}: {_one_line(exc)}") from None
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
    labels, classes = _encode_labels(frame[target].to_numpy())
    return Arrays(
        features.to_numpy(dtype=np.float32, na_value=np.nan),
        labels,
        columns=tuple(map(str, features.columns)),
        classes=classes,
        source=f"data.options.path: {file.name}",
    )


#: Retries and the pause between them when openml.org does not answer (scikit-learn's defaults);
#: tests set them lower so an empty cache fails fast.
OPENML_RETRIES = 3
OPENML_RETRY_DELAY_S = 1.0


def data_home() -> Path:
    """The folder that caches downloaded data sets (OpenML's files live under ``openml/``).

    ``GRADSWEEP_DATA_HOME`` if set, else ``$XDG_CACHE_HOME/gradsweep``, else
    ``~/.cache/gradsweep``. Read at each call, so a test or a user can point it elsewhere; made
    absolute at once, because Ray trials change their working directory.
    """
    explicit = os.environ.get("GRADSWEEP_DATA_HOME")
    if explicit:
        return Path(explicit).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return (Path(cache).expanduser() / "gradsweep").absolute()


def openml(
    name: str | None = None,
    id: int | None = None,  # the key users write, as OpenML names it
    version: int | str | None = None,
    target: str | None = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> Arrays:
    """An OpenML data set by ``name`` (optionally ``version``) or ``id``, from a local cache.

    scikit-learn's ``fetch_openml`` keeps every file it fetches under ``data_home()/openml`` and
    reads them from there without any request when they are present, so a machine without
    internet uses what a connected run put there (or what was copied in). ``target`` picks the
    label column (default: the one OpenML marks), a categorical target becomes class indices, and
    ``n_samples`` keeps a stratified subsample of that many rows, drawn with ``seed``.
    """
    if (name is None) == (id is None):
        raise DataError(
            "data.options: the 'openml' data set needs 'name' (e.g. Fashion-MNIST) or 'id' "
            "(e.g. 40996), exactly one of them"
        )
    if name is not None and not isinstance(name, str):
        raise DataError(f"data.options.name: must be a data set name (text), got {name!r}")
    if id is not None and (isinstance(id, bool) or not isinstance(id, int) or id < 1):
        raise DataError(f"data.options.id: must be a positive integer, got {id!r}")
    if version is not None:
        if id is not None:
            raise DataError(
                "data.options.version: only with 'name'; an OpenML id names one version already"
            )
        if version != "active" and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise DataError(
                f"data.options.version: must be a positive integer or 'active', got {version!r}"
            )
    if target is not None and not isinstance(target, str):
        raise DataError(f"data.options.target: must be a column name (text), got {target!r}")
    if n_samples is not None and (
        isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1
    ):
        raise DataError(f"data.options.n_samples: must be a positive integer, got {n_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"data.options.seed: must be an integer, got {seed!r}")

    key = "data.options.name" if name is not None else "data.options.id"
    what = f"OpenML data set {name!r}" if name is not None else f"OpenML data set id {id}"
    if version is not None:
        what += f" version {version}"
    frame_x, frame_y = _fetch_openml(name, id, version, target, key, what)
    return _openml_arrays(frame_x, frame_y, target, n_samples, seed, key, what)


def _fetch_openml(
    name: str | None,
    data_id: int | None,
    version: int | str | None,
    target: str | None,
    key: str,
    what: str,
) -> tuple[Any, Any]:
    """``fetch_openml`` through the cache, every failure turned into a one-line DataError."""
    from urllib.error import HTTPError, URLError

    from sklearn.datasets import fetch_openml

    home = data_home()
    home_existed = home.exists()
    try:
        with warnings.catch_warnings():
            # each retry warns; the DataError below says all a user needs
            warnings.filterwarnings("ignore", message="A network error occurred")
            bunch = fetch_openml(
                name=name,
                data_id=data_id,
                version="active" if version is None else version,
                target_column="default-target" if target is None else target,
                data_home=str(home),
                as_frame="auto",
                n_retries=OPENML_RETRIES,
                delay=OPENML_RETRY_DELAY_S,
            )
    except HTTPError as exc:
        raise DataError(f"{key}: openml.org answered {exc.code} for {what}: {exc.reason}") from None
    except (URLError, TimeoutError):
        _prune_empty_folders(home, keep_root=home_existed)  # what the failed download made
        raise DataError(
            f"{key}: {what} is not in the cache {home} and openml.org cannot be reached; run once "
            f"on a machine with internet access and copy {home} here, or set GRADSWEEP_DATA_HOME "
            "to a folder that holds it"
        ) from None
    except KeyError:  # fetch_openml's way of saying the target column does not exist
        raise DataError(f"data.options.target: {what} has no column {target!r}") from None
    except OSError as exc:
        raise DataError(f"{key}: cannot use the data cache {home}: {_one_line(exc)}") from None
    except ValueError as exc:  # OpenMLError (no such name or version), a bad cached file, ...
        raise DataError(f"{key}: {what}: {_one_line(exc)}") from None
    return bunch.data, bunch.target


def _prune_empty_folders(root: Path, keep_root: bool) -> None:
    """Remove the empty folders scikit-learn made for files it then could not download.

    Never a file, and ``root`` itself only when it did not exist before: a failed run leaves no
    trace.
    """
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if keep_root and Path(folder) == root:
            continue
        with contextlib.suppress(OSError):  # as it should, on a folder that holds anything
            os.rmdir(folder)


def _openml_arrays(
    frame_x: Any,
    frame_y: Any,
    target: str | None,
    n_samples: int | None,
    seed: int,
    key: str,
    what: str,
) -> Arrays:
    """Check and convert what ``fetch_openml`` returned; subsample when ``n_samples`` asks."""
    import pandas as pd

    if not isinstance(frame_x, pd.DataFrame):
        raise DataError(f"{key}: {what} is stored as sparse ARFF, which gradsweep does not load")
    if frame_y is None:
        raise DataError(
            f"data.options.target: {what} has no default target; name a column with 'target'"
        )
    if isinstance(frame_y, pd.DataFrame):
        raise DataError(
            f"data.options.target: {what} has several targets ({_names(list(frame_y.columns))}); "
            "choose one with 'target'"
        )
    non_numeric = [
        str(c) for c in frame_x.columns if not pd.api.types.is_numeric_dtype(frame_x[c].dtype)
    ]
    if non_numeric:
        raise DataError(
            f"{key}: non-numeric feature columns {_names(non_numeric)} in {what}; gradsweep "
            "takes numeric features only"
        )
    x = frame_x.to_numpy(dtype=np.float32, na_value=np.nan)
    y, classes = _encode_labels(frame_y.to_numpy())
    if n_samples is not None and n_samples < len(y):
        from sklearn.model_selection import train_test_split

        if n_samples < len(classes):
            raise DataError(
                f"data.options.n_samples: {n_samples} rows cannot hold the {len(classes)} classes "
                f"of {what}"
            )
        try:
            keep = train_test_split(
                np.arange(len(y)), train_size=n_samples, stratify=y, random_state=seed
            )[0]
        except ValueError as exc:
            raise DataError(f"data.options.n_samples: {_one_line(exc)}") from None
        keep.sort()
        x = x[keep]
        y, kept = _encode_labels(y[keep])
        classes = tuple(classes[int(k)] for k in kept)
    elif n_samples is not None and n_samples > len(y):
        raise DataError(
            f"data.options.n_samples: {n_samples} is more than the {len(y)} rows of {what}"
        )
    return Arrays(
        x,
        y,
        columns=tuple(map(str, frame_x.columns)),
        classes=classes,
        source=f"{key}: {what}",
    )


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
        raise DataError(f"data.options: {_one_line(exc)}") from None
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
            f"feature values (column{'s' if len(names) != 1 else ''} {_names(names)}); drop or "
            "fill them first"
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
            others = f" ({len(small) - 1} other classes too)" if len(small) > 1 else ""
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
        raise DataError(f"{source}: cannot split with {fractions}: {_one_line(exc)}") from None
    return x_train, x_val, x_test, y_train, y_val, y_test
