"""Throughput benchmarks for gradsweep (issue 8), one invocation, printed as plain text.

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
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
warnings.filterwarnings("ignore")

import optuna  # noqa: E402
import torch  # noqa: E402

from spaces import (  # noqa: E402
    TRIAL_NUMBER_KEY,
    StudyConfig,
    define_space,
    load_config,
    resolve_trial,
)
from trainers import (  # noqa: E402
    TrainSettings,
    build_mlp,
    load_splits,
    seed_everything,
    train,
    train_fused,
)

CONCURRENCY = 2


def study_dict(trials: int, epochs: int, output_dir: str) -> dict[str, Any]:
    """The benchmark study: digits, 10x64 MLP, batch 32, FIFO, 2 trials at a time."""
    return {
        "name": "bench",
        "data": {"name": "digits"},
        "model": {"depth": 10, "width": 64},
        "search": {
            "activations": ["relu", "leaky_relu", "prelu", "elu", "selu", "tanh"],
            "initializers": ["pytorch_default", "glorot_uniform", "he_normal", "lecun_normal"],
            "batch_norm": ["none", "before"],
            "lr": {"low": 3e-4, "high": 3e-2, "log": True},
        },
        "training": {"epochs": epochs, "batch_size": 32, "optimizer": "adam"},
        # Random search with a fixed seed asks exactly the configurations draw_trials pre-draws.
        "searcher": {"name": "random", "seed": 0},
        "scheduler": {"name": "fifo"},
        "num_samples": trials,
        "max_concurrent": CONCURRENCY,
        "resources": {"cpu": 1},
        "output_dir": output_dir,
    }


def draw_trials(config: StudyConfig) -> list[dict[str, Any]]:
    """The study's trial parameters, in trial order, as its seeded random searcher asks them."""
    sampler = optuna.samplers.RandomSampler(seed=config.searcher.seed)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    space = define_space(config)
    trials = []
    for _ in range(config.num_samples):
        trial = study.ask()
        constants = space(trial)
        trials.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return trials


def settings_for(config: StudyConfig, lr: float, diagnostics: bool) -> TrainSettings:
    t = config.training
    return TrainSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=lr,
        optimizer=t.optimizer,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        seed=t.seed,
        diagnostics=diagnostics,
    )


def build_for(config: StudyConfig, params: dict[str, Any]) -> functools.partial:
    spec = resolve_trial(config, params)
    data = config.data.load()
    return functools.partial(
        build_mlp,
        data.n_features,
        data.n_classes,
        config.model.depth,
        config.model.width,
        spec.activation,
        spec.alpha,
        spec.init,
        spec.bn,
        config.model.dropout,
        prelu_per_unit=spec.per_unit,
    )


# ---------------------------------------------------------------------------------------------
# (a) the raw loop


def run_raw(
    config: StudyConfig, trials: list[dict[str, Any]], diagnostics: bool, device: str = "cpu"
) -> float:
    """Seconds for every trial trained sequentially with ``trainers.train``, as a trial would
    (one torch thread: what each trial gets with ``resources.cpu = 1``)."""
    torch.set_num_threads(1)
    data = config.data.load().to(device)
    t0 = time.perf_counter()
    for params in trials:
        spec = resolve_trial(config, params)
        seed_everything(config.training.seed)
        model = build_for(config, params)().to(device)
        train(model, data, settings_for(config, spec.lr, diagnostics))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# (b) the hand-written Ray Tune + Optuna + MLflow script


def hand_written_trainable(config: dict[str, Any], study: dict[str, Any]) -> None:
    """What a user writes: a DataLoader over a TensorDataset, evaluate, report every epoch.

    It borrows gradsweep's model builder and data split only so that both sides train the
    identical networks on the identical data; the loop and the orchestration are the user's.
    """
    from ray import tune
    from torch.utils.data import DataLoader, TensorDataset

    from trainers import build_mlp, load_splits

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


# ---------------------------------------------------------------------------------------------
# timing probes: wrap library entry points (never search/ internals that may move)


class Probes:
    """Accumulate wall seconds spent inside chosen functions, from any thread, while active.

    Only Ray, Optuna and MLflow entry points and ``search.study``'s module attributes are wrapped,
    so the figures survive refactors of ``search``; a name that no longer exists is skipped.
    """

    def __init__(self, on_first_trial: Any = None) -> None:
        self.on_first_trial = on_first_trial  # called when the first trial starts
        self.cpu_at_last_completion: dict[str, float] = {}
        self.last_completion = 0.0
        self.seconds: dict[str, float] = {}
        self.stamps: list[float] = []  # perf_counter() at each trial completion
        self.events: list[tuple[str, str, float, float]] = []  # (kind, trial, time, epoch_s)
        self.numbers: dict[str, int] = {}  # Tune trial id -> gradsweep trial number
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []

    def _add(self, label: str, seconds: float) -> None:
        with self._lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        probes = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                probes._add(label, time.perf_counter() - t0)

        self._saved.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> Probes:
        from mlflow import MlflowClient
        from ray import tune
        from ray.tune.search.search_generator import SearchGenerator

        import search.study as study_module

        self.wrap(SearchGenerator, "create_trial_if_possible", "optuna: ask + suggest (driver)")
        self.wrap(SearchGenerator, "on_trial_complete", "optuna: tell (driver)")
        for name in (
            "create_run",
            "log_batch",
            "set_terminated",
            "update_run",
            "log_text",
            "log_artifact",
            "log_figure",
            "search_runs",
            "get_run",
            "get_metric_history",
        ):
            self.wrap(MlflowClient, name, "mlflow: client calls (any thread)")
        tracker = getattr(study_module, "MlflowTracker", None)
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"):
            if tracker is not None:
                self.wrap(tracker, name, "mlflow: tracker callbacks (driver)")
        self.wrap(tune.Tuner, "fit", "ray: Tuner.fit")
        self.wrap(study_module, "log_pictures", "pictures (matplotlib)")
        self.wrap(study_module, "_finish", "end: flush, leaderboard, pictures, report")
        reporter = getattr(study_module, "ReportProcess", None)
        if reporter is not None:
            self.wrap(reporter, "wait", "report: waited for after the pictures")
        self.wrap(study_module, "leaderboard", "leaderboard query")
        self.wrap(study_module, "connect_ray", "ray: start (connect_ray)")
        self.wrap(study_module.ray, "shutdown", "ray: shutdown")
        self.wrap(study_module, "preflight", "preflight (data, URIs)")
        self.wrap(study_module, "get_or_create_experiment", "mlflow: experiment + parent run")
        self.wrap(study_module, "start_parent_run", "mlflow: experiment + parent run")
        self.wrap(optuna.storages.RDBStorage, "__init__", "optuna: open storage")
        if tracker is not None:
            for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
                self._record(tracker, name)
            for name in ("setup", "on_experiment_end"):
                self._mark(tracker, name)
        self._mark(tune.Tuner, "fit", end=True)
        return self

    def _mark(self, owner: Any, name: str, end: bool = False) -> None:
        """Record when ``name`` is entered (and left, with ``end``) in ``self.marks``."""
        original = getattr(owner, name)

        def mark(*args: Any, **kwargs: Any) -> Any:
            self.marks.setdefault(name, time.perf_counter())
            try:
                return original(*args, **kwargs)
            finally:
                if end:
                    self.marks[f"{name} end"] = time.perf_counter()

        self._saved.append((owner, name, original))
        setattr(owner, name, mark)

    def fit_timeline(self) -> dict[str, float]:
        """Seconds of ``Tuner.fit`` before the first trial starts, while trials run, after."""
        m, starts, ends = self.marks, self._times("start"), self._times("complete")
        if not ("fit" in m and "fit end" in m and starts and ends):
            return {}
        return {
            "fit: until Tune set up": m.get("setup", m["fit"]) - m["fit"],
            "fit: set up to first trial start": starts[0] - m.get("setup", m["fit"]),
            "fit: first trial start to last trial end": ends[-1] - starts[0],
            "fit: last trial end to return": m["fit end"] - ends[-1],
        }

    def _times(self, kind: str) -> list[float]:
        return sorted(t for k, _, t, _ in self.events if k == kind)

    def _record(self, owner: Any, name: str) -> None:
        """Time-stamp a Tune callback event (Tune passes everything by keyword)."""
        original = getattr(owner, name)
        kind = name.removeprefix("on_trial_")

        def record(*args: Any, **kwargs: Any) -> Any:
            now = time.perf_counter()
            trial = kwargs.get("trial")
            result = kwargs.get("result") or {}
            if kind == "start" and self.on_first_trial and not self.numbers:
                self.on_first_trial()
            if kind == "complete" and self.on_first_trial:
                self.cpu_at_last_completion, self.last_completion = framework_cpu(), now
            with self._lock:
                number = getattr(trial, "config", {}).get(TRIAL_NUMBER_KEY)
                if number is not None:
                    self.numbers[trial.trial_id] = int(number)
                self.events.append(
                    (
                        kind,
                        getattr(trial, "trial_id", "?"),
                        now,
                        float(result.get("epoch_seconds", 0.0)),
                    )
                )
                if kind == "complete":
                    self.stamps.append(now)
            return original(*args, **kwargs)

        self._saved.append((owner, name, original))
        setattr(owner, name, record)

    def trial_spans(self) -> dict[int, tuple[float, float]]:
        """Trial number -> (start, completion) as the driver saw them."""
        spans: dict[int, tuple[float, float]] = {}
        for trial_id, number in self.numbers.items():
            starts = [t for k, i, t, _ in self.events if i == trial_id and k == "start"]
            ends = [t for k, i, t, _ in self.events if i == trial_id and k == "complete"]
            if starts and ends:
                spans[number] = (starts[0], ends[-1])
        return spans

    def trial_epoch_seconds(self) -> dict[int, float]:
        """Trial number -> the sum of its reported ``epoch_seconds`` (its own epochs)."""
        return {
            number: sum(e for k, i, _, e in self.events if i == trial_id and k == "result")
            for trial_id, number in self.numbers.items()
        }

    def trial_breakdown(self) -> dict[str, float]:
        """Where each trial's time went, summed over trials, from the driver's event times.

        ``epoch compute``: the epochs' own ``epoch_seconds`` (training + evaluation, without
        diagnostics); ``start``: trial start to first result, less that epoch (actor start or
        reuse, imports, data, build, report latency); ``between epochs``: time between results
        less the epoch (diagnostics, checkpoint write and upload, report round trip);
        ``finish``: last result to completion. ``span`` is the sum of all four.
        """
        by_trial: dict[str, list[tuple[str, float, float]]] = {}
        for kind, trial, t, epoch_s in self.events:
            by_trial.setdefault(trial, []).append((kind, t, epoch_s))
        out = {
            "epoch compute": 0.0,
            "start": 0.0,
            "between epochs": 0.0,
            "finish": 0.0,
            "span": 0.0,
        }
        for events in by_trial.values():
            starts = [t for k, t, _ in events if k == "start"]
            results = [(t, e) for k, t, e in events if k == "result"]
            ends = [t for k, t, _ in events if k == "complete"]
            if not (starts and results and ends):
                continue
            out["span"] += ends[-1] - starts[0]
            out["epoch compute"] += sum(e for _, e in results)
            out["start"] += results[0][0] - starts[0] - results[0][1]
            out["between epochs"] += sum(
                t - prev - e for (prev, _), (t, e) in itertools.pairwise(results)
            )
            out["finish"] += ends[-1] - results[-1][0]
        return out

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


# ---------------------------------------------------------------------------------------------
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
        # 2-core machine moves by 10-20%), with (b) after the first of them, so that the host's
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


# ---------------------------------------------------------------------------------------------
# long trials: the framework's share of a trial that trains for 30 s or more


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def framework_cpu() -> dict[str, float]:
    """CPU seconds so far of this process and every process it started (Ray's daemons), less
    the trial processes (``ray::ImplicitFunc...``): what the framework takes from the trials."""
    parent: dict[int, int] = {}
    name: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                words = [a for a in argv if a and not a.startswith("-")]
                python = Path(words[0]).name.startswith("python") and len(words) > 1
                name[int(entry.name)] = words[1] if python else words[0]
            except (OSError, IndexError, ValueError):
                continue
    ours, out = os.getpid(), {}
    for pid in parent:
        p = pid
        while p not in (0, 1, ours) and p in parent:
            p = parent[p]
        if p == ours and not name[pid].startswith("ray::ImplicitFunc"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[f"{pid} {name[pid]}"] = _cpu_seconds(pid)
    return out


def part_long(quick: bool, out: dict[str, Any]) -> None:
    """Trials of >= 30 s, 4 of them 2 at a time, ``run_study`` with the default config.

    A trial's framework share has two parts, both measured in the same run (so the host's
    speed, which drifts by 10-20% on a shared machine, cancels out): its slot time (Tune's trial
    start to completion, as the driver saw them) outside the trial's own epochs, over the slot
    time -- shown for the first trial of each trial process (its slot includes starting that
    process: Python, Ray, torch) and for the later ones, which reuse it; and the CPU the
    framework itself used while trials ran (the driver: Tune, Optuna, the MLflow journal; Ray's
    daemons), over the CPU the trials had (concurrency x wall time)."""
    epochs = 2 if quick else 28
    trials_n = 2 * CONCURRENCY
    with tempfile.TemporaryDirectory(prefix="gradsweep-bench-") as tmp_name:
        tmp = Path(tmp_name)
        study = study_dict(trials_n, epochs, str(tmp / "long"))
        study["name"] = "long"
        study["data"] = {"name": "synthetic", "options": {"n_samples": 20000, "n_features": 40}}
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


# ---------------------------------------------------------------------------------------------
# fused seeds


def fused_vs_separate(
    device: str,
    seeds: int,
    epochs: int,
    depth: int = 10,
    width: int = 64,
    batch: int = 32,
    threads: int | None = 1,
    repeats: int = 2,
) -> dict[str, float]:
    """Seconds for ``seeds`` separate ``train`` runs and one fused run of the same seeds: the
    fastest of ``repeats`` alternations of the two (the host's speed drifts between runs)."""
    if threads:
        torch.set_num_threads(threads)
    data = load_splits("digits").to(device)
    build = functools.partial(
        build_mlp, data.n_features, data.n_classes, depth, width, "elu", None, "he_normal", "before"
    )
    settings = TrainSettings(epochs=epochs, batch_size=batch, lr=1e-3, diagnostics=False)
    seed_list = list(range(seeds))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def separate() -> list[float]:
        accs = []
        for s in seed_list:
            seed_everything(s)
            model = build().to(device)
            accs.append(train(model, data, dataclasses.replace(settings, seed=s)).best_val_accuracy)
        return accs

    # Warm-up both paths (first-call allocations, kernels), then time.
    one = dataclasses.replace(settings, epochs=1)
    seed_everything(0)
    train(build().to(device), data, one)
    train_fused(build, seed_list, data, one)
    sync()
    times: dict[str, list[float]] = {"separate": [], "fused": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        acc_separate = separate()
        sync()
        t1 = time.perf_counter()
        acc_fused = [r.best_val_accuracy for r in train_fused(build, seed_list, data, settings)]
        sync()
        times["separate"].append(t1 - t0)
        times["fused"].append(time.perf_counter() - t1)
    same = max(abs(x - y) for x, y in zip(acc_separate, acc_fused, strict=True))
    separate_s, fused_s = min(times["separate"]), min(times["fused"])
    return {
        "separate": separate_s,
        "fused": fused_s,
        "ratio": fused_s / separate_s,
        "max_abs_best_val_diff": same,
    }


def part_fused(quick: bool, out: dict[str, Any]) -> None:
    seeds, epochs = 8, (2 if quick else 5)
    print(
        f"\n== fused seeds: {seeds} seeds, elu + he_normal + bn before, digits, depth 10 "
        f"width 64, batch 32, {epochs} epochs, CPU"
    )
    out["fused"] = {}
    # One torch thread, as each trial gets (resources.cpu = 1); with two threads on two busy
    # cores OpenMP oversubscription, not fusing, decides the figure.
    for threads in (1,):
        r = fused_vs_separate("cpu", seeds, epochs, threads=threads)
        out["fused"][f"threads_{threads}"] = r
        print(
            f"  torch threads {threads}: {seeds} separate {r['separate']:.2f} s, fused "
            f"{r['fused']:.2f} s -> fused/separate = {r['ratio']:.2f}x (target <= 0.35x); "
            f"max |best val acc diff| {r['max_abs_best_val_diff']:.1e}"
        )


# ---------------------------------------------------------------------------------------------
# driver scalability


def trivial_trial(params: dict[str, Any], study: dict[str, Any], data: Any = None) -> None:
    """Stands in for ``search.trainable.run_trial``: one instant 'epoch', a real trial's metrics."""
    from ray import tune

    value = random.random()
    tune.report(
        {
            "epoch": 1,
            "train_loss": 1.0,
            "val_loss": 1.0,
            "val_accuracy": value,
            "test_accuracy": value,
            "best_val_accuracy": value,
            "epoch_seconds": 0.0,
            "diverged": 0.0,
        }
    )


def run_driver(trials: int, searcher: str, tmp: Path) -> dict[str, Any]:
    """``run_study`` itself, its trainable swapped for :func:`trivial_trial`, Ray pre-started."""
    import ray

    import search.study as study_module
    from search import run_study

    study = study_dict(trials, 1, str(tmp))
    study["searcher"] = {"name": searcher, "seed": 0}
    study["training"]["checkpoint_every"] = 0
    config = load_config(study, ["diagnostics.enabled=false"])
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    real = study_module.run_trial
    study_module.run_trial = trivial_trial
    try:
        with Probes() as probes:
            cpu0, t0 = time.process_time(), time.perf_counter()
            run_study(config)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        study_module.run_trial = real
        ray.shutdown()
    stamps = probes.stamps
    half = stamps[len(stamps) // 2 :]
    tail = stamps[-max(2, trials // 10) :]
    return {
        "wall": wall,
        "driver_cpu": cpu,
        "completed": len(stamps),
        # Mean time between trial completions, start-up excluded: the steady per-trial cost.
        "steady_last_half": (half[-1] - half[0]) / (len(half) - 1) if len(half) > 1 else math.nan,
        "steady_last_tenth": (tail[-1] - tail[0]) / (len(tail) - 1) if len(tail) > 1 else math.nan,
        **probes.seconds,
    }


def part_driver(quick: bool, out: dict[str, Any], searchers: list[str]) -> None:
    sizes = (20, 200) if quick else (100, 1000)
    print(
        f"\n== driver: search.run_study with a trivial trainable, {CONCURRENCY} at a time, "
        "1 epoch, no checkpoints, no diagnostics, Optuna and MLflow on SQLite, Ray pre-started"
    )
    out["driver"] = {}
    for searcher in searchers:
        per = {}
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="gradsweep-driver-") as tmp:
                r = run_driver(n, searcher, Path(tmp))
            per[n] = r
            parts = ", ".join(
                f"{k} {v / n * 1000:.1f}" for k, v in r.items() if isinstance(v, float) and ":" in k
            )
            print(
                f"  {searcher:6s} {n:5d} trials: wall {r['wall']:6.1f} s = "
                f"{r['wall'] / n * 1000:6.1f} ms/trial; driver process CPU "
                f"{r['driver_cpu'] / n * 1000:6.1f} ms/trial; between completions "
                f"{r['steady_last_half'] * 1000:.1f} ms over the last half, "
                f"{r['steady_last_tenth'] * 1000:.1f} ms over the last tenth"
            )
            print(f"         summed per trial, ms: {parts}")
        small, large = sizes
        growth = (per[large]["wall"] / large) / (per[small]["wall"] / small)
        steady = per[large]["steady_last_tenth"] / per[small]["steady_last_half"]
        print(
            f"  {searcher:6s} wall per trial, {large} vs {small} trials: {growth:.2f}x; time "
            f"between completions, last tenth of {large} vs last half of {small}: {steady:.2f}x "
            "(target <= 2x)"
        )
        out["driver"][searcher] = {str(k): v for k, v in per.items()} | {
            "growth_wall_per_trial": growth,
            "growth_steady": steady,
        }


# ---------------------------------------------------------------------------------------------


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
