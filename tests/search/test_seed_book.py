"""The seeds of one trial as the metrics and tags it reports, without Ray: which seed the
per-layer figures follow, counts over seeds (flags, divergence, stopping), and the figures at
initialisation across a resume."""

from __future__ import annotations

import math

import pytest

from search.schema import DIVERGED_SEEDS_TAG, LAYERS_SEED_TAG, PLACEMENT_TAGS, SEEDS_DIVERGED_TAG
from search.seeds import INIT, SeedBook
from search.tracking import divergence_tags, flag_tags
from search.trainable import HealthWatch
from spaces import load_config
from trainers import EpochReport

SEEDS = [10, 11, 12]


def figures(seed: int, vanishing: bool = False, exploding: bool = False) -> dict[str, float]:
    """A seed's gradient figures, its per-layer norms marked with its seed value."""
    return {
        "diag/grad_norm/layer_01": seed + 0.1,
        "diag/grad_norm/layer_02": seed + 0.2,
        "diag/grad_ratio_first_last": 0.5,
        "diag/vanishing": float(vanishing),
        "diag/exploding": float(exploding),
    }


def live(epoch: int, seed: int, **flags: bool) -> EpochReport:
    return EpochReport(epoch, 1.0, 1.0, 0.5 + seed / 100, 0.5, 0.5 + seed / 100, 1.0,
                       diagnostics=figures(seed, **flags))  # fmt: skip


def diverged(epoch: int, seed: int) -> EpochReport:
    return EpochReport.nonfinite(epoch, 0.5, 1.0, {"diag/grad_norm/layer_01": math.inf})


def init_tags(metrics: dict[str, float]) -> dict[str, float]:
    """What the tracker keeps of a result as the figures at initialisation (step 0)."""
    return {k.removeprefix(INIT): v for k, v in metrics.items() if k.startswith(INIT)}


def test_per_layer_figures_follow_the_first_seed_and_stop_when_it_diverges() -> None:
    """Seed 10 diverges in epoch 2: its per-layer names never carry seed 11's figures."""
    book = SeedBook(SEEDS, chance=0.1)
    first = book.record({s: live(1, s) for s in SEEDS})
    assert first[LAYERS_SEED_TAG] == 10 and LAYERS_SEED_TAG in PLACEMENT_TAGS
    assert first["diag/grad_norm/layer_01"] == pytest.approx(10.1)
    second = book.record({10: diverged(2, 10), 11: live(2, 11), 12: live(2, 12)})
    assert second["diag/grad_norm/layer_01"] == math.inf  # the blow-up, from seed 10 itself
    third = book.record({11: live(3, 11), 12: live(3, 12)})
    assert not any(k.startswith("diag/grad_norm/") for k in third)
    assert third[LAYERS_SEED_TAG] == 10
    assert third["seed/11/diag/grad_ratio_first_last"] == 0.5  # the others, by their own keys


def test_seeds_that_disagree_are_counted_in_the_flag_tags_and_per_seed_epochs() -> None:
    book = SeedBook(SEEDS, chance=0.1)
    initial = {s: figures(s, vanishing=s != 12) for s in SEEDS}
    reports = {s: live(1, s, vanishing=s == 10) for s in SEEDS}
    for s, report in reports.items():
        report.initial = initial[s]
    metrics = book.record(reports)
    book.record({s: live(2, s, vanishing=s != 11) for s in SEEDS})
    metrics = {**metrics, **book.record({s: live(3, s, vanishing=s == 10) for s in SEEDS})}
    tags = flag_tags(metrics, init_tags(metrics))
    assert tags["diag.at_init.vanishing"] == "2/3"  # seeds 10 and 11 at initialisation
    assert tags["diag.vanishing"] == "1/3"  # the last epoch: seed 10 only
    assert tags["diag.exploding"] == "0/3"
    epochs = {s: metrics[f"seed/{s}/diag/vanishing_epochs"] for s in SEEDS}
    assert epochs == {10: 3.0, 11: 0.0, 12: 1.0}
    assert metrics["seed/10/diag/exploding_epochs"] == 0.0


def test_seeds_diverged_is_cumulative_epoch_by_epoch() -> None:
    """Seed 11 diverges in epoch 2, seed 12 in epoch 4; the trial goes on with seed 10."""
    book = SeedBook(SEEDS, chance=0.1)
    steps = [
        {s: live(1, s) for s in SEEDS},
        {10: live(2, 10), 11: diverged(2, 11), 12: live(2, 12)},
        {10: live(3, 10), 12: live(3, 12)},
        {10: live(4, 10), 12: diverged(4, 12)},
        {10: live(5, 10)},
    ]
    results = [book.record(reports) for reports in steps]
    assert [r["seeds_diverged"] for r in results] == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert [r["diverged"] for r in results] == [0.0] * 5
    assert [divergence_tags(r).get(SEEDS_DIVERGED_TAG) for r in results] == [
        None, "1/3", "1/3", "2/3", "2/3",
    ]  # fmt: skip
    assert divergence_tags(results[-1])[DIVERGED_SEEDS_TAG] == (
        "seed 11 in epoch 2, seed 12 in epoch 4"
    )
    last = results[-1]
    assert last["seed/11/diverged_epoch"] == 2.0 and "seed/11/val_accuracy" not in last
    # the policy: diverged seeds count at chance in every accuracy the trial reports
    assert last["best_val_accuracy"] == pytest.approx((0.6 + 0.1 + 0.1) / 3)


def test_a_resumed_trial_reports_its_figures_at_initialisation_again() -> None:
    book = SeedBook(SEEDS, chance=0.1)
    reports = {s: live(1, s) for s in SEEDS}
    for s, report in reports.items():
        report.initial = figures(s, vanishing=s == 11)
    first = book.record(reports)
    assert not init_tags(book.record({s: live(2, s) for s in SEEDS}))  # once per run
    resumed = SeedBook(SEEDS, chance=0.1)
    resumed.restore(book.state())  # what the checkpoint carries
    again = resumed.record({s: live(3, s) for s in SEEDS})  # the loop measured nothing
    assert init_tags(again) == init_tags(first) != {}
    assert again[INIT + "diag/grad_norm/layer_01"] == pytest.approx(10.1)
    assert flag_tags(again, init_tags(again))["diag.at_init.vanishing"] == "1/3"
    assert not init_tags(resumed.record({s: live(4, s) for s in SEEDS}))


@pytest.fixture
def watch() -> HealthWatch:
    config = load_config(
        "quick",
        [
            "diagnostics.stop_exploding=true",
            "diagnostics.stop_vanishing_below=1.0",
            "diagnostics.stop_patience=2",
        ],
    )
    return HealthWatch(config)


def small(epoch: int, seed: int) -> EpochReport:
    report = live(epoch, seed)
    report.diagnostics["diag/grad_norm/layer_01"] = 1e-3
    return report


def test_stopping_counts_seeds_not_the_first_one(watch: HealthWatch) -> None:
    """A majority of the live seeds decides: the first seed alone neither stops the trial nor
    keeps it going, also after it diverged."""
    assert watch.check({10: live(1, 10, exploding=True), 11: live(1, 11), 12: live(1, 12)}) is None
    reason = watch.check({10: live(2, 10), 11: live(2, 11, exploding=True),
                          12: live(2, 12, exploding=True)})  # fmt: skip
    assert reason == "exploding gradients in epoch 2 (2/3 seeds)"


def test_vanishing_stops_after_patience_in_most_seeds(watch: HealthWatch) -> None:
    assert watch.check({10: small(1, 10), 11: live(1, 11), 12: live(1, 12)}) is None
    assert watch.check({10: small(2, 10), 11: live(2, 11), 12: live(2, 12)}) is None
    # seed 10 diverges; the two others vanish for two epochs
    assert watch.check({10: diverged(3, 10), 11: small(3, 11), 12: small(3, 12)}) is None
    reason = watch.check({11: small(4, 11), 12: small(4, 12)})
    assert reason is not None and "for 2 epochs (2/2 seeds)" in reason
