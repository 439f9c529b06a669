"""The study's Ray session: attach to a cluster, or start (and later stop) an embedded one."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import ray

from search.errors import UserError

#: Ray would start a pool of idle workers for the driver, but Tune's trial actors live in
#: placement groups and never use them: starting them only delays the study.
NO_PRESTART = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def connect(address: str | None) -> bool:
    """Attach to ``address`` or start an embedded local Ray. True if this call started or
    attached a session that the study must shut down; False if one was already running."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # a copy: Ray adds to the dict it is given
            ray.init(include_dashboard=False, _system_config=dict(NO_PRESTART), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"--address: cannot attach to Ray at {address or 'local'}: {exc}") from None
    return True


def shutdown() -> None:
    ray.shutdown()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No garbage collection while Ray starts or stops beside another thread.

    A collection started by that thread's allocations may free a Ray object (an object reference
    of this or an earlier session) whose finalizer then calls into a core worker that is starting
    or stopping, and Ray ends the process ("The core worker has already been shutdown").
    Collected first, on this thread, while Ray is steady.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
