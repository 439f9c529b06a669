"""How one configuration trains: data sets, the MLP zoo, the loop, gradient diagnostics.

The bottom floor of gradsweep: it imports neither ``spaces`` nor ``search``, and knows nothing of
Ray, Optuna or MLflow.
"""

from trainers.activations import ACTIVATIONS, Activation, build_activation
from trainers.datasets import DATASETS, DataError, Splits, load_splits
from trainers.diagnostics import FLAGS, GradientProbe, summarize
from trainers.initializers import INITIALIZERS, initialize
from trainers.loop import (
    OPTIMIZERS,
    EpochReport,
    LoopState,
    TrainResult,
    TrainSettings,
    evaluate,
    seed_everything,
    train,
)
from trainers.model import BATCH_NORM_PLACEMENTS, MLP, build_mlp, learned_slopes

__all__ = [
    "ACTIVATIONS",
    "BATCH_NORM_PLACEMENTS",
    "DATASETS",
    "FLAGS",
    "INITIALIZERS",
    "MLP",
    "OPTIMIZERS",
    "Activation",
    "DataError",
    "EpochReport",
    "GradientProbe",
    "LoopState",
    "Splits",
    "TrainResult",
    "TrainSettings",
    "build_activation",
    "build_mlp",
    "evaluate",
    "initialize",
    "learned_slopes",
    "load_splits",
    "seed_everything",
    "summarize",
    "train",
]
