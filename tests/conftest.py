"""Shared fixtures: fixed seeds everywhere, one local Ray session per test module."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# A warm Ray the developer started (`gradsweep ray start`) must not run the tests' studies: the
# tests see an empty state folder of their own (test_warm_ray.py starts its own warm Ray).
os.environ["GRADSWEEP_STATE_DIR"] = tempfile.mkdtemp(prefix="gradsweep-test-state-")


@pytest.fixture(autouse=True)
def _seeds() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A real local Ray (2 CPUs) shared by one test module, shut down after it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
