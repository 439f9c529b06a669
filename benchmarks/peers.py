"""The hand-written peers of the throughput benchmark: what a user writes without gradsweep.

Both are ``ray.tune.Tuner`` + ``OptunaSearch(points_to_evaluate=...)`` +
``MLflowLoggerCallback`` (SQLite) on the same configurations; they borrow gradsweep's
``build_mlp`` and ``load_splits`` only so that every side trains identical networks on identical
data.

- (b) **Ray's defaults**: a ``DataLoader`` over a ``TensorDataset``, the data set loaded inside
  every trial, no ``reuse_actors`` (its default is False), no concurrency cap beyond the CPUs.
- (b') **tuned**, what a competent user writes: ``reuse_actors=True``,
  ``tune.with_parameters(data=...)`` (loaded once, shipped through the object store), tensor
  slicing instead of a per-sample ``DataLoader``, ``max_concurrent_trials=2``.

Either way Ray is started by ``Tuner.fit()`` (Tune's default) and stopped by the script.
``python benchmarks/peers.py tuned STUDY.json TMPDIR`` runs (b') as a whole process (the
throughput part alternates it with ``gradsweep run``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainers import Splits, build_mlp, load_splits

KEYS = ("activation", "init", "bn", "lr")


def _model(config: dict[str, Any], study: dict[str, Any], data: Splits) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_mlp(
        data.n_features,
        data.n_classes,
        study["model"]["depth"],
        study["model"]["width"],
        config["activation"],
        None,
        config["init"],
        config["bn"],
    )


def _evaluate(model: torch.nn.Module, data: Splits, epoch: int) -> dict[str, float]:
    loss_fn = torch.nn.CrossEntropyLoss()
    model.eval()
    with torch.no_grad():
        val_logits = model(data.x_val)
        return {
            "epoch": epoch,
            "val_loss": loss_fn(val_logits, data.y_val).item(),
            "val_accuracy": (val_logits.argmax(1) == data.y_val).float().mean().item(),
            "test_accuracy": (model(data.x_test).argmax(1) == data.y_test).float().mean().item(),
        }


def default_trainable(config: dict[str, Any], study: dict[str, Any]) -> None:
    """(b): a DataLoader over a TensorDataset, the data loaded in the trial."""
    from ray import tune
    from torch.utils.data import DataLoader, TensorDataset

    data = load_splits(study["data"]["name"])
    model = _model(config, study, data)
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
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        tune.report(_evaluate(model, data, epoch))


def tuned_trainable(config: dict[str, Any], study: dict[str, Any], data: Splits) -> None:
    """(b'): the data from the object store, mini-batches by slicing a shuffled index."""
    from ray import tune

    torch.set_num_threads(1)
    model = _model(config, study, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loss_fn = torch.nn.CrossEntropyLoss()
    n, batch = data.x_train.shape[0], study["training"]["batch_size"]
    for epoch in range(1, study["training"]["epochs"] + 1):
        model.train()
        order = torch.randperm(n)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            if idx.numel() < 2:
                continue
            optimizer.zero_grad()
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            optimizer.step()
        tune.report(_evaluate(model, data, epoch))


def run_peer(study: dict[str, Any], trials: list[dict[str, Any]], tmp: Path, tuned: bool) -> float:
    """Seconds for ``Tuner.fit()`` of peer (b) or (b'), Ray's own start and stop included."""
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
    points = [{k: p[k] for k in KEYS} for p in trials]
    t0 = time.perf_counter()
    if tuned:
        trainable = tune.with_parameters(
            tuned_trainable, study=study, data=load_splits(study["data"]["name"])
        )
    else:
        trainable = tune.with_parameters(default_trainable, study=study)
    name = "tuned" if tuned else "hand-written"
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(points_to_evaluate=points, seed=0),
            metric="val_accuracy",
            mode="max",
            num_samples=len(trials),
            reuse_actors=tuned,
            max_concurrent_trials=study["max_concurrent"] if tuned else None,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(tmp / "ray"),
            verbose=0,
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment_name=name
                )
            ],
        ),
    )
    grid = tuner.fit()
    ray.shutdown()
    seconds = time.perf_counter() - t0
    ran = sorted(tuple(r.config[k] for k in KEYS) for r in grid)
    want = sorted(tuple(p[k] for k in KEYS) for p in points)
    errors = [r for r in grid if r.error]
    label = "(b')" if tuned else "(b)"
    print(f"  {label} same configurations as (a): {ran == want}; errored trials: {len(errors)}")
    return seconds


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[2]).read_text())
    run_peer(spec["study"], spec["trials"], Path(sys.argv[3]), tuned=sys.argv[1] == "tuned")
