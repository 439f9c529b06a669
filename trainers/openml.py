"""OpenML data sets through a local cache folder (``data.name: openml``).

scikit-learn's ``fetch_openml`` keeps what it downloads under the cache folder and reads it from
there afterwards, so a machine without internet works from a copy of the folder; without it, and
without a network, loading fails with one line naming the folder and how to fill it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from trainers.datasets import Arrays, DataError, encode_labels, one_line, quoted_names

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


def load(
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
        raise DataError(f"{key}: cannot use the data cache {home}: {one_line(exc)}") from None
    except ValueError as exc:  # OpenMLError (no such name or version), a bad cached file, ...
        raise DataError(f"{key}: {what}: {one_line(exc)}") from None
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
            f"data.options.target: {what} has several targets "
            f"({quoted_names(list(frame_y.columns))}); choose one with 'target'"
        )
    non_numeric = [
        str(c) for c in frame_x.columns if not pd.api.types.is_numeric_dtype(frame_x[c].dtype)
    ]
    if non_numeric:
        raise DataError(
            f"{key}: non-numeric feature columns {quoted_names(non_numeric)} in {what}; gradsweep "
            "takes numeric features only"
        )
    x = frame_x.to_numpy(dtype=np.float32, na_value=np.nan)
    y, classes = encode_labels(frame_y.to_numpy())
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
            raise DataError(f"data.options.n_samples: {one_line(exc)}") from None
        keep.sort()
        x = x[keep]
        y, kept = encode_labels(y[keep])
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
