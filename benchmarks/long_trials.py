"""Long trials (>= 30 s each): the framework's share of a trial that trains for a while."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CONCURRENCY, draw_trials, run_raw, study_dict
from probes import framework_cpu
from throughput import run_gradsweep

from spaces import (
    load_config,
)


def _study(trials_n: int, epochs: int, tmp: Path) -> dict[str, Any]:
    study = study_dict(trials_n, epochs, str(tmp / "long"))
    study["name"] = "long"
    study["data"] = {"name": "synthetic", "options": {"n_samples": 20000, "n_features": 40}}
    return study


def long_enough(tmp: Path, seconds: float = 36.0) -> int:
    """Epochs that make the study's first trial train for about ``seconds`` on this host (28 at
    least: the size of the first measurements), timed in this process: 6 epochs less 2, so that
    the first epoch's extra costs (data, warm-up) do not count."""

    def timed(epochs: int) -> float:
        config = load_config(_study(2 * CONCURRENCY, epochs, tmp))
        return run_raw(config, draw_trials(config)[:1], diagnostics=True)

    per_epoch = (timed(6) - timed(2)) / 4
    return max(28, math.ceil(seconds / per_epoch))


def part_long(quick: bool, out: dict[str, Any]) -> None:
    """Trials of >= 30 s (epochs sized to this host: :func:`long_enough`), 4 of them 2 at a
    time, ``run_study`` with the default config.

    A trial's framework share has two parts, both measured in the same run (so the host's
    speed, which drifts on a shared machine, cancels out): its slot time (Tune's trial
    start to completion, as the driver saw them) outside the trial's own epochs, over the slot
    time -- shown for the first trial of each trial process (its slot includes starting that
    process: Python, Ray, torch) and for the later ones, which reuse it; and the CPU the
    framework itself used while trials ran (the driver: Tune, Optuna, the MLflow journal; Ray's
    daemons), over the CPU the trials had (concurrency x wall time)."""
    trials_n = 2 * CONCURRENCY
    with tempfile.TemporaryDirectory(prefix="gradsweep-bench-") as tmp_name:
        tmp = Path(tmp_name)
        epochs = 2 if quick else long_enough(tmp)
        study = _study(trials_n, epochs, tmp)
        config = load_config(study)
        trials = draw_trials(config)
        print(
            f"\n== long trials: synthetic 20000 x 40, depth 10 width 64, batch 32, {epochs} "
            f"epochs, {trials_n} trials, {CONCURRENCY} at a time, default config"
        )
        cpu: dict[str, Any] = {}

        def fit_started() -> None:
            cpu["before"], cpu["t0"] = framework_cpu(), time.perf_counter()

        seconds, _, probes = run_gradsweep(
            study, trials, [], prestart_ray=False, on_first_trial=fit_started
        )
        after, wall = probes.cpu_at_last_completion, probes.last_completion - cpu["t0"]
        used = sum(v - cpu["before"].get(k, 0.0) for k, v in after.items())
        cpu_share = used / (CONCURRENCY * wall)
        spans, own = probes.trial_spans(), probes.trial_epoch_seconds()
        first = sorted(spans, key=lambda n: spans[n])[:CONCURRENCY]  # started their process
        print(
            "  trials' own epochs: "
            + ", ".join(f"t{n} {own[n]:.1f} s" for n in sorted(own))
            + f"; whole study {seconds:.1f} s (Ray start and stop included)"
        )
        shares = {}
        for label, numbers in (
            ("first trial of each trial process", first),
            ("later trials (process reused)", [n for n in spans if n not in first]),
        ):
            slot = sum(spans[n][1] - spans[n][0] for n in numbers)
            outside = (slot - sum(own[n] for n in numbers)) / slot
            shares[label] = outside + cpu_share
            print(
                f"  {label}: outside their epochs {outside:.1%} of {slot:.1f} s slot time "
                f"+ framework CPU {cpu_share:.1%} = {shares[label]:.1%} (target <= 5%)"
            )
        deltas: dict[str, float] = {}  # by process name (the report process shares ours)
        for k, v in after.items():
            name = k.split(" ", 1)[1].rsplit("/", 1)[-1][:28]
            deltas[name] = deltas.get(name, 0.0) + v - cpu["before"].get(k, 0.0)
        largest = sorted(deltas.items(), key=lambda kv: -kv[1])[:4]
        print(
            f"  framework CPU while trials ran: {used:.1f} s of {CONCURRENCY} x {wall:.1f} s; "
            "largest: " + ", ".join(f"{k} {v:.1f} s" for k, v in largest)
        )
        out["long"] = {
            "epochs": epochs,
            "c": seconds,
            "own_epoch_seconds": own,
            "framework_cpu_share": cpu_share,
            "framework_share": shares,
        }
