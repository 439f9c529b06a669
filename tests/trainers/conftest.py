"""Fixtures for the trainers tests: one intra-op thread for the tiny models they train."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Width-16 layers gain nothing from a second thread; on a busy 2-core box the threads spin
    and wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
