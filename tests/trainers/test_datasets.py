"""Contract tests for the data-set registry and the one split a study shares."""

from __future__ import annotations

import random
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from openml_cache import TINY_ID, TINY_ROWS, tiny_frame, write_openml_cache

from trainers import DATASETS, DataError, Splits, datasets, load_splits, openml

CONNECTIONS: list[object] = []  # every attempt the blocker below refused, for tests to inspect


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every data set must load offline: any attempt to resolve or connect fails at once, so a
    cache miss surfaces as an error (and is recorded) instead of a hang or a real download."""

    def refuse(*args: object, **kwargs: object) -> None:
        CONNECTIONS.append(args[:2])
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    CONNECTIONS.clear()
    yield
    CONNECTIONS.clear()


@pytest.fixture(autouse=True)
def _fresh_split_cache() -> None:
    """load_splits caches by name and options, not by cache folder: each test starts afresh."""
    datasets._load_splits_cached.cache_clear()


def write_table(path: Path, n: int = 240) -> Path:
    """A CSV with three numeric features and a string target column named 'label'."""
    rng = np.random.default_rng(0)
    labels = np.array(["cat", "dog", "eel"])[np.arange(n) % 3]
    frame = pd.DataFrame(
        {
            "f1": rng.normal(5.0, 2.0, n),
            "label": labels,
            "f2": rng.normal(-3.0, 0.5, n) + (labels == "dog"),
            "f3": rng.integers(0, 10, n),
        }
    )
    frame.to_csv(path, index=False)
    return path


def options_for(name: str, tmp_path: Path) -> dict[str, object]:
    """Options that make each registered data set small and offline; {} for the bundled ones.

    OpenML reads the tiny cache written under ``tmp_path/cache`` (``GRADSWEEP_DATA_HOME``).
    """
    if name == "file":
        return {"path": str(write_table(tmp_path / "table.csv")), "target": "label"}
    if name == "synthetic":
        return {"n_samples": 300, "n_features": 8, "n_informative": 4, "n_classes": 3}
    if name == "openml":
        write_openml_cache(tmp_path / "cache")
        return {"name": "Tiny"}  # OpenML names are case-insensitive; sklearn's cache is lower case
    return {}


@pytest.fixture(params=list(DATASETS))
def case(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, object]]:
    monkeypatch.setenv("GRADSWEEP_DATA_HOME", str(tmp_path / "cache"))
    return request.param, options_for(request.param, tmp_path)


def splits_of(case: tuple[str, dict[str, object]], **kwargs: object) -> Splits:
    name, options = case
    return load_splits(name, options, **kwargs)


def parts(s: Splits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)]


def test_loads_with_consistent_shapes(case: tuple[str, dict[str, object]]) -> None:
    name, options = case
    raw = DATASETS[name](**options)
    s = splits_of(case)
    assert sum(x.shape[0] for x, _ in parts(s)) == raw.x.shape[0]
    for x, y in parts(s):
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape == (y.shape[0], s.n_features)
        assert torch.isfinite(x).all()
        assert y.min() >= 0
        assert y.max() < s.n_classes
    assert s.n_features == raw.x.shape[1]
    assert s.n_classes == len(np.unique(raw.y))


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.2), (0.1, 0.3)])
def test_split_sizes_follow_the_fractions(
    case: tuple[str, dict[str, object]], val: float, test: float
) -> None:
    s = splits_of(case, val_fraction=val, test_fraction=test)
    n = sum(x.shape[0] for x, _ in parts(s))
    assert s.x_val.shape[0] == pytest.approx(val * n, abs=s.n_classes + 1)
    assert s.x_test.shape[0] == pytest.approx(test * n, abs=s.n_classes + 1)


def test_standardised_with_training_statistics_only(case: tuple[str, dict[str, object]]) -> None:
    """Train features have mean 0 and std 1; validation does not (the scaler never saw it)."""
    s = splits_of(case)
    train = s.x_train.double()
    varying = train.std(dim=0, unbiased=False) > 0  # constant pixels stay constant (digits)
    assert varying.any()
    torch.testing.assert_close(
        train.mean(dim=0), torch.zeros(s.n_features, dtype=torch.float64), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        train.std(dim=0, unbiased=False)[varying],
        torch.ones(int(varying.sum()), dtype=torch.float64),
        rtol=0,
        atol=1e-4,
    )
    val = s.x_val.double()
    assert val.mean(dim=0)[varying].abs().max() > 1e-3
    assert (val.std(dim=0, unbiased=False)[varying] - 1).abs().max() > 1e-3


def test_stratified(case: tuple[str, dict[str, object]]) -> None:
    """Each split keeps the whole set's class proportions, to within one sample per class.

    A random split of digits' 360 test samples would miss by several samples in some class.
    """
    s = splits_of(case)
    y_all = torch.cat([y for _, y in parts(s)])
    overall = torch.bincount(y_all, minlength=s.n_classes).double() / y_all.numel()
    for _, y in parts(s):
        share = torch.bincount(y, minlength=s.n_classes).double() / y.numel()
        assert ((share - overall).abs() * y.numel()).max() <= 1.0


def test_same_seed_same_split_other_seed_other_split(case: tuple[str, dict[str, object]]) -> None:
    first, again, other = splits_of(case, seed=0), splits_of(case, seed=0), splits_of(case, seed=1)
    assert torch.equal(first.x_val, again.x_val)
    assert torch.equal(first.y_test, again.y_test)
    assert not torch.equal(first.x_val, other.x_val)


def test_file_target_labels_become_class_indices(tmp_path: Path) -> None:
    path = write_table(tmp_path / "t.csv", n=90)
    s = load_splits("file", {"path": str(path), "target": "label"})
    assert s.n_features == 3
    assert s.n_classes == 3
    assert torch.bincount(torch.cat([s.y_train, s.y_val, s.y_test])).tolist() == [30, 30, 30]


def test_missing_path_is_a_clear_data_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(DataError, match=r"data\.options\.path: no readable file") as info:
        load_splits("file", {"path": str(missing), "target": "label"})
    assert "nowhere.csv" in str(info.value)


def test_missing_target_column_is_a_clear_data_error(tmp_path: Path) -> None:
    path = write_table(tmp_path / "t.csv")
    with pytest.raises(DataError, match=r"data\.options\.target: no column 'species'") as info:
        load_splits("file", {"path": str(path), "target": "species"})
    assert "f1, label, f2, f3" in str(info.value)  # the message lists the columns there are


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mnist", {}, r"data\.name: unknown data set 'mnist'; allowed: digits"),
        ("file", {"path": "x.csv"}, r"needs 'path' and 'target'"),
        ("digits", {"n_samples": 10}, r"data\.options: this data set takes no options"),
        ("synthetic", {"size": 10}, r"data\.options: .*size"),
    ],
)
def test_bad_names_and_options(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_splits(name, options)


def test_non_numeric_feature_is_a_clear_data_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"colour": ["red", "blue"] * 10, "y": [0, 1] * 10}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"non-numeric feature columns \['colour'\]"):
        load_splits("file", {"path": str(path), "target": "y"})


def test_data_error_is_a_value_error() -> None:
    """Config validation catches ValueError: a bad data set must surface the same way."""
    assert issubclass(DataError, ValueError)


def test_every_data_set_loaded_without_touching_the_network(
    case: tuple[str, dict[str, object]],
) -> None:
    splits_of(case)
    assert CONNECTIONS == []


# --- MNIST-1D -------------------------------------------------------------------------------


def test_mnist1d_is_the_packages_default_set_made_whole() -> None:
    """The package's 4000 train + 1000 test signals of length 40, all 10 classes, float32."""
    raw = DATASETS["mnist1d"]()
    assert raw.x.shape == (5000, 40)
    assert raw.x.dtype == np.float32
    assert np.bincount(raw.y).size == 10
    assert np.bincount(raw.y).min() > 350  # 500 per class before the package's shuffle-cut


def test_mnist1d_seed_option_and_global_rng_left_alone() -> None:
    """Its generator reseeds NumPy's and Python's global RNGs; ours puts them back."""
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    default, again = DATASETS["mnist1d"](), DATASETS["mnist1d"](seed=42)
    other = DATASETS["mnist1d"](seed=7)
    assert np.random.random() == expected_np
    assert random.random() == expected_py
    np.testing.assert_array_equal(default.x, again.x)
    assert not np.array_equal(default.x, other.x)


@pytest.mark.parametrize("seed", ["7", 1.5, True])
def test_mnist1d_seed_must_be_an_integer(seed: object) -> None:
    with pytest.raises(DataError, match=r"^data\.options\.seed: must be an integer"):
        load_splits("mnist1d", {"seed": seed})


# --- OpenML from its cache ------------------------------------------------------------------


@pytest.fixture
def openml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = write_openml_cache(tmp_path / "cache")
    monkeypatch.setenv("GRADSWEEP_DATA_HOME", str(home))
    return home


@pytest.mark.parametrize("options", [{"name": "tiny"}, {"name": "TINY"}, {"id": TINY_ID}])
def test_openml_loads_from_the_cache_by_name_or_id(
    openml_home: Path, options: dict[str, object]
) -> None:
    raw = DATASETS["openml"](**options)
    assert raw.columns == ("f1", "f2", "f3", "level")  # the row identifier is not a feature
    assert raw.classes == ("setosa", "versicolor", "virginica")
    expected = tiny_frame()
    np.testing.assert_allclose(raw.x[:, 0], expected["f1"], rtol=1e-6)
    assert raw.y.tolist() == (np.arange(TINY_ROWS) % 3).tolist()
    s = load_splits("openml", options)
    assert (s.n_features, s.n_classes) == (4, 3)
    assert CONNECTIONS == []


SKLEARN_IRIS = {  # scikit-learn's own copies of what openml.org served for iris (id 61)
    "api-v1-jdl-dn-iris-l-2-s-act-.json.gz": "api/v1/json/data/list/data_name/iris/limit/2/"
    "status/active/.gz",
    "api-v1-jd-61.json.gz": "api/v1/json/data/61.gz",
    "api-v1-jdf-61.json.gz": "api/v1/json/data/features/61.gz",
    "api-v1-jdq-61.json.gz": "api/v1/json/data/qualities/61.gz",
    "data-v1-dl-61.arff.gz": "data/v1/download/61/iris.arff.gz",
}


@pytest.mark.filterwarnings("ignore:Multiple active versions")
def test_openml_reads_files_as_openml_org_served_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same loader on real OpenML responses (shipped with scikit-learn's tests), not only on
    the files written above."""
    import sklearn

    shipped = Path(sklearn.__file__).parent / "datasets/tests/data/openml/id_61"
    if not shipped.is_dir():
        pytest.skip("this scikit-learn install ships no OpenML test files")
    root = tmp_path / "openml" / "openml.org"
    for source, target in SKLEARN_IRIS.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped / source, root / target)
    monkeypatch.setenv("GRADSWEEP_DATA_HOME", str(tmp_path))
    s = load_splits("openml", {"name": "iris"})
    assert (s.n_features, s.n_classes) == (4, 3)
    assert sum(len(y) for y in (s.y_train, s.y_val, s.y_test)) == 150
    assert CONNECTIONS == []


def test_openml_subsample_is_stratified_and_seeded(openml_home: Path) -> None:
    first = DATASETS["openml"](name="tiny", n_samples=30, seed=0)
    again = DATASETS["openml"](name="tiny", n_samples=30, seed=0)
    other = DATASETS["openml"](name="tiny", n_samples=30, seed=1)
    assert first.x.shape == (30, 4)
    assert np.bincount(first.y).tolist() == [10, 10, 10]
    np.testing.assert_array_equal(first.x, again.x)
    assert not np.array_equal(first.x, other.x)


def test_openml_empty_cache_is_one_line_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "empty cache"
    monkeypatch.setenv("GRADSWEEP_DATA_HOME", str(home))
    monkeypatch.setattr(openml, "OPENML_RETRIES", 1)
    monkeypatch.setattr(openml, "OPENML_RETRY_DELAY_S", 0.01)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_splits("openml", {"name": "Fashion-MNIST"})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("data.options.name: OpenML data set 'Fashion-MNIST' is not in the")
    assert str(home) in message
    assert "internet access" in message and "GRADSWEEP_DATA_HOME" in message
    assert CONNECTIONS, "a cache miss should have tried openml.org (and been blocked)"
    assert time.perf_counter() - start < 10
    assert not home.exists()  # the failed download left no empty folders behind


def test_data_home_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADSWEEP_DATA_HOME", str(tmp_path / "here"))
    assert openml.data_home() == tmp_path / "here"
    monkeypatch.delenv("GRADSWEEP_DATA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert openml.data_home() == tmp_path / "xdg" / "gradsweep"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert openml.data_home() == tmp_path / "user" / ".cache" / "gradsweep"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"^data\.options: the 'openml' data set needs 'name' .* or 'id'"),
        ({"name": "tiny", "id": TINY_ID}, r"exactly one of them"),
        ({"id": TINY_ID, "version": 1}, r"^data\.options\.version: only with 'name'"),
        ({"id": "tiny"}, r"^data\.options\.id: must be a positive integer"),
        ({"name": "tiny", "n_samples": 0}, r"^data\.options\.n_samples: must be a positive"),
        ({"name": "tiny", "seed": "0"}, r"^data\.options\.seed: must be an integer"),
        ({"name": "tiny", "n_samples": 1000}, r"1000 is more than the 60 rows"),
        ({"name": "tiny", "n_samples": 2}, r"2 rows cannot hold the 3 classes"),
        ({"name": "tiny", "target": "species"}, r"^data\.options\.target: .* no column 'species'"),
        (
            {"name": "tiny", "target": "level"},  # then the nominal 'class' is a feature
            r"^data\.options\.name: non-numeric feature columns 'class' in OpenML data set 'tiny'",
        ),
    ],
)
def test_openml_bad_options_are_one_line(
    openml_home: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_splits("openml", options)
    assert "\n" not in str(info.value)
    assert CONNECTIONS == []


# --- validation of every data set -----------------------------------------------------------


def error_for(tmp_path: Path, frame: pd.DataFrame, **kwargs: object) -> str:
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_splits("file", {"path": str(path), "target": "label"}, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_and_infinite_values_name_columns_and_rows(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"a": np.arange(30.0), "b": np.arange(30.0), "c": np.arange(30.0), "label": [0, 1] * 15}
    )
    frame.loc[[3, 7], "a"] = np.nan  # written as empty cells
    frame.loc[7, "c"] = np.inf
    frame.loc[9, "c"] = -np.inf
    message = error_for(tmp_path, frame)
    assert message == (
        "data.options.path: t.csv has 3 rows with empty, NaN or infinite feature values "
        "(columns 'a', 'c'); drop or fill them first"
    )


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(20.0), "label": ["cat"] * 20})
    assert error_for(tmp_path, frame) == (
        "data.options.path: t.csv has only one class ('cat'); classification needs at least 2"
    )


def test_a_table_of_only_the_target_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"label": [0, 1] * 10})
    assert "t.csv has no feature columns, only the target" in error_for(tmp_path, frame)


def test_a_table_without_rows_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": pd.Series([], dtype=float), "label": pd.Series([], dtype=int)})
    assert error_for(tmp_path, frame) == "data.options.path: t.csv has no rows"


def test_empty_target_cells_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(20.0), "label": ["x", None] * 10})
    assert "column 'label' of t.csv has 10 empty cells" in error_for(tmp_path, frame)


def test_a_class_too_small_for_the_split_says_how_many_rows_it_needs(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(41.0), "label": ["cat"] * 20 + ["dog"] * 20 + ["eel"]})
    assert error_for(tmp_path, frame) == (
        "data.options.path: t.csv: class 'eel' has 1 row; the stratified split with "
        "val_fraction 0.2 and test_fraction 0.2 needs at least 3 rows per class"
    )


def test_too_few_rows_for_many_classes_says_how_many_rows_it_needs(tmp_path: Path) -> None:
    """30 rows of 10 classes: the 6 test rows cannot hold one row of each class."""
    frame = pd.DataFrame({"a": np.arange(30.0), "label": np.arange(30) % 10})
    assert error_for(tmp_path, frame) == (
        "data.options.path: t.csv has 30 rows; a stratified split of 10 classes with "
        "val_fraction 0.2 and test_fraction 0.2 needs at least 47 rows"
    )


def test_synthetic_with_one_class_is_refused() -> None:
    with pytest.raises(DataError, match=r"^data\.name: 'synthetic' has only one class \('0'\)"):
        load_splits("synthetic", {"n_samples": 50, "n_classes": 1, "n_informative": 2})


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.2), (0.1, 0.3), (0.3, 0.5), (0.05, 0.05)])
def test_rows_needed_is_enough_and_fewer_can_fail(val: float, test: float) -> None:
    """With the stated minimum per class and in all, every seed splits; one row fewer in a class
    fails for some class mix and seed (so the message never asks for more than it must)."""
    from sklearn.model_selection import train_test_split

    def splits(counts: np.ndarray, seed: int) -> bool:
        y = np.repeat(np.arange(counts.size), counts)
        try:
            _, _, y_rest, _ = train_test_split(y, y, test_size=test, stratify=y, random_state=seed)
            train_test_split(y_rest, test_size=val / (1 - test), stratify=y_rest, random_state=seed)
        except ValueError:
            return False
        return True

    rng = np.random.default_rng(0)
    fewer_failed = False
    for _ in range(12):
        counts = rng.integers(2, 40, size=int(rng.integers(2, 6)))
        per_class, _ = datasets.rows_needed(int(counts.sum()), counts.size, val, test)
        counts = np.maximum(counts, per_class)
        per_class, total = datasets.rows_needed(int(counts.sum()), counts.size, val, test)
        if counts.sum() >= total and counts.min() >= per_class:
            assert all(splits(counts, seed) for seed in range(3)), counts
        counts[0] = per_class - 1
        fewer_failed |= not all(splits(counts, seed) for seed in range(5))
    assert fewer_failed


def test_split_fractions_are_checked() -> None:
    with pytest.raises(DataError, match=r"sum below 1, got 0\.6 and 0\.5"):
        load_splits("iris", val_fraction=0.6, test_fraction=0.5)


def test_numeric_string_labels_keep_numeric_order() -> None:
    codes, classes = datasets.encode_labels(np.array(["10", "2", "1", "2"], dtype=object))
    assert classes == ("1", "2", "10")
    assert codes.tolist() == [2, 1, 0, 1]


def test_openml_cache_miss_keeps_what_the_cache_holds(
    openml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openml, "OPENML_RETRIES", 1)
    monkeypatch.setattr(openml, "OPENML_RETRY_DELAY_S", 0.01)
    before = sorted(p for p in openml_home.rglob("*") if p.is_file())
    with pytest.raises(DataError, match="is not in the cache"):
        load_splits("openml", {"name": "tiny", "version": 2})  # a version the cache lacks
    assert sorted(p for p in openml_home.rglob("*") if p.is_file()) == before
    assert load_splits("openml", {"name": "tiny"}).n_classes == 3
