"""What the MLflow tracker logs per epoch, and the per-trial layer table (no Ray: pure)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pandas as pd

from search.tracking import LAYER_TABLE, MlflowTracker, charted, layer_table
from spaces import load_config


def test_only_the_gradient_norm_is_charted_per_layer() -> None:
    assert charted("diag/grad_norm/layer_03")
    assert charted("diag/grad_rate") and charted("val_accuracy")
    assert not charted("diag/act_std/layer_03")
    assert not charted("diag/update_ratio/layer_12")
    assert not charted("init/diag/grad_norm/layer_01")  # at init it is the step-0 value
    assert charted("init/diag/grad_rate") and charted("init/seed/4/diag/grad_rate")


def test_flags_are_tags_and_counters_not_metrics() -> None:
    for key in ("diag/vanishing", "seed/4/diag/exploding", "init/seed/4/diag/dying"):
        assert not charted(key), key
    assert not charted("init/diag/saturated")
    assert charted("seed/4/diag/vanishing_epochs") and charted("diag/grad_norm_max")


def test_the_layer_table_has_a_row_per_epoch_and_layer_and_a_column_per_figure() -> None:
    history = {
        1: {
            "diag/grad_norm/layer_01": 0.5,
            "diag/grad_norm/layer_02": 0.25,
            "diag/act_std/layer_01": 1.0,
        },
        0: {"diag/grad_norm/layer_01": 2.0, "diag/grad_norm/layer_02": 1.0},
    }
    table = pd.read_csv(io.StringIO(layer_table(history)))
    assert list(table.columns) == ["epoch", "layer", "grad_norm", "act_std"]
    assert table[["epoch", "layer"]].values.tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    assert table["grad_norm"].tolist() == [2.0, 1.0, 0.5, 0.25]
    assert table["act_std"].isna().tolist() == [True, True, False, True]


class _Journal:
    """The tracker's artifact writes, by run key."""

    def __init__(self) -> None:
        self.tables: dict[str, str] = {}

    def log_batch(self, *args: object, **kwargs: object) -> None:
        pass

    def create_run(self, *args: object, **kwargs: object) -> None:
        pass

    def set_terminated(self, *args: object, **kwargs: object) -> None:
        pass

    def log_text(self, key: str, text: str, artifact_file: str) -> None:
        assert artifact_file == LAYER_TABLE
        self.tables[key] = text


def test_a_run_still_open_at_the_end_keeps_its_layer_table() -> None:
    tracker = MlflowTracker(_Journal(), "0", "parent", "s", load_config("quick"))
    for key in ("done", "open"):
        trial = SimpleNamespace(trial_id=key, last_result={})
        tracker.started.add(key)
        tracker.on_trial_result(0, [], trial, {"epoch": 1, "diag/act_std/layer_01": 0.5})
    tracker.on_trial_complete(0, [], SimpleNamespace(trial_id="done", last_result={}))
    assert list(tracker.journal.tables) == ["done"]
    tracker.write_open_tables()  # the study ends (Ctrl+C) with "open" still running
    table = pd.read_csv(io.StringIO(tracker.journal.tables["open"]))
    assert table.to_dict("records") == [{"epoch": 1, "layer": 1, "act_std": 0.5}]
    assert tracker.history["done"] == {1: {"diag/act_std/layer_01": 0.5}}  # kept: pictured
