"""Contract tests for the data-set registry and the one split a study shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trainers import DATASETS, DataError, Splits, load_splits


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
    """Options that make each registered data set small and offline; {} for the bundled ones."""
    if name == "file":
        return {"path": str(write_table(tmp_path / "table.csv")), "target": "label"}
    if name == "synthetic":
        return {"n_samples": 300, "n_features": 8, "n_informative": 4, "n_classes": 3}
    return {}


@pytest.fixture(params=list(DATASETS))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, object]]:
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
