"""Throughput benchmarks for gradsweep, one invocation, printed as plain text.

Parts (``--only`` picks one; all run by default, one after the other):

- ``throughput``: the same 16 configurations of one study, trained three ways:
  (a) the raw loop, ``trainers.train`` sequentially in this process, one torch thread: the compute
  limit; (b) the script a user would write by hand: ``ray.tune.Tuner`` + ``OptunaSearch``
  (``points_to_evaluate``) + ``MLflowLoggerCallback`` (SQLite), a ``DataLoader`` loop, Ray
  defaults; (c) gradsweep's ``search.run_study`` on the same study, default config, and variants a
  user could choose (Ray already running, as on a cluster) to show where time goes.
- ``long``: two trials of >= 30 s each (synthetic data), raw loop vs ``run_study``: the
  framework's share of a long trial's wall time.
- ``fused``: 8 seeds of one configuration fused (``trainers.train_fused``) vs 8 separate
  ``trainers.train`` runs, in one process on CPU.
- ``driver``: driver time per trial (Optuna suggestion + MLflow writes + Ray bookkeeping) with a
  trivial trainable, at 100 and 1000 trials, wired as ``run_study`` wires its components.

Run from the repository root: ``.venv/bin/python benchmarks/throughput.py [--only PART] [--quick]``.
``--quick`` shrinks every part (4 trials, 2 epochs, 2-epoch long trials, 20/200 driver trials)
for a smoke run.
No figure here is asserted anywhere: see benchmarks/README.md for the measured ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from common import CONCURRENCY, draw_trials, run_raw, study_dict
from probes import Probes

from spaces import (
    load_config,
    resolve_trial,
)
from trainers import build_mlp, load_splits

# (b) the hand-written Ray Tune + Optuna + MLflow script


def hand_written_trainable(config: dict[str, Any], study: dict[str, Any]) -> None:
    """What a user writes: a DataLoader over a TensorDataset, evaluate, report every epoch.

    It borrows gradsweep's model builder and data split only so that both sides train the
    identical networks on the identical data; the loop and the orchestration are the user's.
    """
    from ray import tune
    from torch.utils.data import DataLoader, TensorDataset

    data = load_splits(study["data"]["name"])
    torch.manual_seed(0)
    model = build_mlp(
        data.n_features,
        data.n_classes,
        study["model"]["depth"],
        study["model"]["width"],
        config["activation"],
        None,
        config["init"],
        config["bn"],
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=study["training"]["batch_size"],
        shuffle=True,
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(1, study["training"]["epochs"] + 1):
        model.train()
        for xb, yb in loader:
            if len(xb) < 2:
                continue
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_logits = model(data.x_val)
            val_loss = loss_fn(val_logits, data.y_val).item()
            val_acc = (val_logits.argmax(1) == data.y_val).float().mean().item()
            test_acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
        tune.report(
            {
                "epoch": epoch,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "test_accuracy": test_acc,
            }
        )


def run_hand_written(study: dict[str, Any], trials: list[dict[str, Any]], tmp: Path) -> float:
    """Seconds for ``Tuner.fit()`` of the hand-written script, Ray's own start and stop included."""
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    space = study["search"]
    param_space = {
        "activation": tune.choice(space["activations"]),
        "init": tune.choice(space["initializers"]),
        "bn": tune.choice(space["batch_norm"]),
        "lr": tune.loguniform(space["lr"]["low"], space["lr"]["high"]),
    }
    points = [{k: p[k] for k in ("activation", "init", "bn", "lr")} for p in trials]
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_parameters(hand_written_trainable, study=study),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(points_to_evaluate=points, seed=0),
            metric="val_accuracy",
            mode="max",
            num_samples=len(trials),
        ),
        run_config=tune.RunConfig(
            name="hand-written",
            storage_path=str(tmp / "ray"),
            verbose=0,
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                    experiment_name="hand-written",
                )
            ],
        ),
    )
    grid = tuner.fit()
    ray.shutdown()
    seconds = time.perf_counter() - t0
    ran = sorted(
        (r.config["activation"], r.config["init"], r.config["bn"], r.config["lr"]) for r in grid
    )
    want = sorted((p["activation"], p["init"], p["bn"], p["lr"]) for p in points)
    errors = [r for r in grid if r.error]
    print(f"  (b) same configurations as (a): {ran == want}; errored trials: {len(errors)}")
    return seconds


# (c) gradsweep


def run_gradsweep(
    study: dict[str, Any],
    trials: list[dict[str, Any]],
    overrides: list[str],
    prestart_ray: bool,
    on_first_trial: Any = None,
) -> tuple[float, dict[str, float], Probes]:
    """Seconds for ``search.run_study`` (Ray start/stop included unless ``prestart_ray``)."""
    import mlflow
    import ray

    from search import run_study

    config = load_config(study, overrides)
    if prestart_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    with Probes(on_first_trial) as probes:
        t0 = time.perf_counter()
        result = run_study(config)
        seconds = time.perf_counter() - t0
    if prestart_ray:
        ray.shutdown()

    ot = optuna.load_study(study_name=result.study_name, storage=result.optuna_storage)
    asked = [dict(t.params) for t in sorted(ot.trials, key=lambda t: t.number)]
    same = [{k: v for k, v in p.items() if k in a} for p, a in zip(trials, asked, strict=True)]
    client = mlflow.MlflowClient(tracking_uri=result.tracking_uri)
    children = client.search_runs(
        [result.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    epoch_seconds = sum(
        m.value
        for run in children
        for m in client.get_metric_history(run.info.run_id, "epoch_seconds")
    )
    states = {t.state.name for t in ot.trials}
    print(
        f"  (c) same configurations as (a): {same == asked}; Optuna states: {sorted(states)}; "
        f"MLflow child runs: {len(children)}"
    )
    trial_parts = {f"trials: {k}": v for k, v in probes.trial_breakdown().items()}
    figures = {
        "trial_epoch_seconds": epoch_seconds,
        **probes.seconds,
        **probes.fit_timeline(),
        **trial_parts,
    }
    return seconds, figures, probes


def part_throughput(quick: bool, out: dict[str, Any]) -> None:
    trials_n, epochs = (4, 2) if quick else (16, 5)
    with tempfile.TemporaryDirectory(prefix="gradsweep-bench-") as tmp_name:
        tmp = Path(tmp_name)
        study = study_dict(trials_n, epochs, str(tmp / "c"))
        config = load_config(study)
        trials = draw_trials(config)
        print(
            f"\n== throughput: digits, depth 10 width 64, batch 32, {epochs} epochs, "
            f"{trials_n} trials, {CONCURRENCY} at a time, FIFO"
        )
        for p in trials:
            spec = resolve_trial(config, p)
            print(
                f"  trial {spec.number:2d}: {spec.activation:10s} {spec.init:15s} "
                f"bn={spec.bn:6s} lr={spec.lr:.2e}"
            )
        run_raw(config, trials[:1], True)  # warm-up: imports, data cache, first-call overheads
        a = run_raw(config, trials, diagnostics=True)
        print(f"  (a) raw loop, sequential, diagnostics on (the study default): {a:7.1f} s")
        # The default config three times (the figure is their median: one run on a shared
        # machine moves a lot), with (b) after the first of them, so that the host's
        # drift over the minutes this part takes falls on both sides alike; then Ray already
        # running, as on a cluster.
        repeats = 1 if quick else 3
        variants = [(f"default config, run {r + 1}", [], False, a) for r in range(repeats)]
        variants += [("Ray already running", [], True, a)]
        results = {}
        b = 0.0
        for i, (label, overrides, prestart, limit_source) in enumerate(variants):
            if i == 1 or (i == len(variants) - 1 and not b):
                b = run_hand_written(study, trials, tmp / "b")
                print(f"  (b) hand-written Tuner+OptunaSearch+MLflowLoggerCallback: {b:7.1f} s")
            run_study = {**study, "output_dir": str(tmp / f"c{i}"), "name": f"bench{i}"}
            seconds, figures, _ = run_gradsweep(run_study, trials, overrides, prestart)
            limit = limit_source / CONCURRENCY
            results[label] = {"seconds": seconds, "limit": limit, **figures}
            print(
                f"  (c) gradsweep, {label}: {seconds:7.1f} s = {seconds / limit:.2f}x the "
                f"compute limit ((a)/{CONCURRENCY} = {limit:.1f} s); trials' own epoch time "
                f"{figures['trial_epoch_seconds']:.1f} s"
            )
            print(
                "      inside: "
                + ", ".join(
                    f"{k} {v:.1f} s" for k, v in figures.items() if k != "trial_epoch_seconds"
                )
            )

        defaults = [v["seconds"] for k, v in results.items() if k.startswith("default config")]
        c = statistics.median(defaults)
        rows = [("(a) raw loop / concurrency", a / CONCURRENCY), ("(b) hand-written", b)]
        rows += [(f"(c) {k}", v["seconds"]) for k, v in results.items()]
        rows.append((f"(c) default config, median of {len(defaults)}", c))
        print(
            "\n  figure                                              wall s  trials/min  "
            "vs (a)/concurrency"
        )
        for label, seconds in rows:
            print(
                f"  {label:50s} {seconds:7.1f}  {trials_n * 60 / seconds:10.1f}  "
                f"{seconds / (a / CONCURRENCY):6.2f}x"
            )
        for label, v in results.items():
            per_trial = (v["seconds"] - v["limit"]) / trials_n
            print(f"  (c) {label}: overhead over the limit {per_trial:.2f} s per trial")
        print(
            f"  (b)/(c) default (median): {b / c:.2f}x   (target >= 4x; per run: "
            + ", ".join(f"{b / x:.2f}x" for x in defaults)
            + ")"
        )
        print(f"  (c) default vs compute limit: {c / (a / CONCURRENCY):.2f}x   (target <= 1.25x)")
        out["throughput"] = {
            "trials": trials_n,
            "epochs": epochs,
            "a_diag": a,
            "b": b,
            "c": results,
            "c_default_median": c,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["throughput", "long", "fused", "driver"], default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--driver-searchers",
        default="tpe",
        help="comma-separated searchers for the driver part (tpe is the default study's)",
    )
    args = parser.parse_args()
    import mlflow
    import ray

    # After the imports: MLflow and Ray set their own loggers' levels when imported.
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
        f"optuna {optuna.__version__}, mlflow {mlflow.__version__}; {os.cpu_count()} CPUs"
    )
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    searchers = [x.strip() for x in args.driver_searchers.split(",") if x.strip()]
    from driver import part_driver
    from fused_seeds import part_fused
    from long_trials import part_long

    parts = {
        "throughput": part_throughput,
        "long": part_long,
        "fused": part_fused,
        "driver": functools.partial(part_driver, searchers=searchers),
    }
    for name, part in parts.items():
        if args.only in (None, name):
            before = os.getloadavg()[0]
            part(args.quick, out)
            # Another process on the same cores skews every figure: say how busy the machine was.
            print(
                f"  [load average (1 min): {before:.1f} before this part, "
                f"{os.getloadavg()[0]:.1f} after]"
            )
    total = time.perf_counter() - t0
    print(f"\nbenchmark wall time {total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out | {"total_seconds": total}, indent=2, default=str))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
