"""What a trial tells Ray Tune: the keys Tune reads as they are, every other figure packed into
one string that Tune leaves alone, and given back whole to the MLflow tracker."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from ray.tune.utils import flatten_dict

from search.schema import LAYERS_SEED_TAG, PACKED, TUNE_KEYS, pack, unpack
from search.seeds import INIT, SeedBook
from search.tracking import MlflowTracker
from spaces import load_config
from trainers import EpochReport

SEEDS = [10, 11, 12]


def report(epoch: int, seed: int) -> EpochReport:
    diagnostics = {"diag/grad_norm/layer_01": seed + 0.1, "diag/vanishing": 1.0}
    return EpochReport(epoch, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, diagnostics=diagnostics,
                       initial={"diag/grad_norm/layer_01": 1 / 3})  # fmt: skip


def metrics() -> dict[str, Any]:
    """A resumed trial's first epoch as ``run_trial`` reports it: the figures at initialisation
    again, one seed diverged, gradient-health stopping."""
    book = SeedBook(SEEDS, chance=0.1)
    book.record({s: report(1, s) for s in SEEDS})
    resumed = SeedBook(SEEDS, chance=0.1)
    resumed.restore(book.state())
    diverged = EpochReport.nonfinite(2, 0.5, 0.25, {"diag/grad_norm/layer_01": math.inf})
    out = resumed.record({10: report(2, 10), 11: diverged, 12: report(2, 12)})
    return {**out, "node_id": "n1", "device": "cpu", "n_params": 100.0, "stop_reason": "why"}


def test_tune_sees_only_its_keys_as_numbers() -> None:
    sent = pack(metrics())
    numbers = {k for k, v in flatten_dict(sent).items() if isinstance(v, int | float)}
    assert numbers <= TUNE_KEYS and {"epoch", "best_val_accuracy", "diverged"} <= numbers
    assert isinstance(sent[PACKED], str) and sent["stop_reason"] == "why"


def test_unpack_gives_every_figure_back_exactly() -> None:
    whole = metrics()
    back = unpack(pack(whole))
    assert back.keys() == whole.keys()
    assert all(back[k] == v or (v != v and back[k] != back[k]) for k, v in whole.items())
    assert back[LAYERS_SEED_TAG] == 10 and isinstance(back[LAYERS_SEED_TAG], int)
    assert back[INIT + "diag/grad_norm/layer_01"] == 1 / 3  # floats round-trip exactly
    assert back["seed/11/diverged"] == 1.0
    assert unpack(whole) is whole and unpack({}) == {}  # a result that was never packed


class Journal:
    """The tracker's writes, in order, without their times."""

    def __init__(self) -> None:
        self.writes: list[Any] = []

    def log_batch(self, key: str, metrics: Any = (), params: Any = None, tags: Any = None) -> None:
        self.writes.append((key, sorted((m[0], m[1], m[3]) for m in metrics or []), tags, params))

    def set_terminated(self, key: str, status: str, end_time: int) -> None:
        self.writes.append((key, status))

    def log_text(self, key: str, text: str, artifact_file: str) -> None:
        self.writes.append((key, artifact_file, text))


def tracked(result: dict[str, Any], ended_unseen: bool) -> list[Any]:
    """What the tracker writes for one result and the trial's end; ``ended_unseen``: it ends
    known only from Tune's ``trial.last_result`` (the tracker missed the result)."""
    tracker = MlflowTracker(Journal(), "0", "parent", "s", load_config("quick"))
    trial = SimpleNamespace(trial_id="t1", last_result=result)
    tracker.started.add("t1")
    if not ended_unseen:
        tracker.on_trial_result(0, [], trial, dict(result))
    tracker.on_trial_complete(0, [], trial)
    return tracker.journal.writes


def test_the_tracker_writes_a_packed_result_as_an_unpacked_one() -> None:
    whole = metrics()
    writes = tracked(whole, ended_unseen=False)
    assert tracked(pack(whole), ended_unseen=False) == writes
    assert any(name == "seed/12/diag/vanishing_epochs" for name, _, _ in writes[0][1])
    assert tracked(pack(whole), ended_unseen=True) == tracked(whole, ended_unseen=True)
