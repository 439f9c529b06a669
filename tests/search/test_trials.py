"""The driver's start-up is frozen out of the garbage collector while the trials run, and given
back after them, also when they end with Ctrl+C."""

from __future__ import annotations

import gc

import pytest

from search.trials import start_up_frozen


def test_the_start_up_is_frozen_while_the_trials_run_and_given_back_after() -> None:
    held: list[int] = []
    with start_up_frozen():
        assert gc.get_freeze_count() > 0
        assert not any(o is held for o in gc.get_objects())  # frozen: no collection scans it
    assert gc.get_freeze_count() == 0
    with pytest.raises(KeyboardInterrupt), start_up_frozen():
        raise KeyboardInterrupt
    assert gc.get_freeze_count() == 0
