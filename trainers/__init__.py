"""How one configuration trains: data sets, the MLP zoo, the loop, gradient diagnostics, and
several seeds of one configuration fused into one batched model.

The bottom floor of gradsweep: it imports neither ``spaces`` nor ``search``, and knows nothing of
Ray, Optuna or MLflow.
"""

from trainers.activations import ACTIVATIONS, Activation, build_activation
from trainers.datasets import DATASETS, DataError, Splits, load_splits
from trainers.diagnostics import FLAGS, FusedGradientProbe, GradientProbe, summarize
from trainers.fused import FusedMLP, evaluate_fused, fuse
from trainers.fused_loop import FusedLoopState, train_fused
from trainers.initializers import INITIALIZERS, concrete_init, initialize
from trainers.loop import (
    OPTIMIZERS,
    EpochReport,
    LoopState,
    TrainResult,
    TrainSettings,
    evaluate,
    seed_everything,
    shuffle_generator,
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
    "FusedGradientProbe",
    "FusedLoopState",
    "FusedMLP",
    "GradientProbe",
    "LoopState",
    "Splits",
    "TrainResult",
    "TrainSettings",
    "build_activation",
    "build_mlp",
    "concrete_init",
    "evaluate",
    "evaluate_fused",
    "fuse",
    "initialize",
    "learned_slopes",
    "load_splits",
    "seed_everything",
    "shuffle_generator",
    "summarize",
    "train",
    "train_fused",
]
