"""How a running study is interrupted: SIGTERM (Ray's ``job stop``, ``kill``) as Ctrl+C."""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from search.cli.terminal import err

#: Whether this process blocks SIGTERM for a study now (read by the fork hook below), and
#: whether that hook is registered (it can't be unregistered: once a process).
_SIGTERM_BLOCKED: list[bool] = []
_FORK_HOOK: list[bool] = []


def _unblock_sigterm_after_fork() -> None:
    """Processes this one starts while a study runs (a local Ray's GCS, raylet, monitors) take
    SIGTERM as usual: Ray stops them with it."""
    if _SIGTERM_BLOCKED:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While a study runs, SIGTERM ends it as Ctrl+C does: parent run KILLED, trials closed
    'interrupted', resumable. Ray's ``job stop`` sends SIGTERM (SIGKILL after a grace period).

    Not a signal handler: ``ray.init`` puts Ray's own over it (exit at once: a FAILED study), and
    Ray's C++ core installs a failure handler that aborts the process on SIGTERM. SIGTERM is
    blocked instead, before Ray starts a thread, so that no handler ever sees it; one thread takes
    it with ``sigwait`` and interrupts the main thread as Ctrl+C would. Children started through
    ``subprocess`` with a ``preexec_fn`` (how Ray starts its processes) or ``os.fork`` unblock it
    again (:func:`_unblock_sigterm_after_fork`).
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not (
        threading.main_thread()
    ):
        yield
        return
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=_unblock_sigterm_after_fork)
        _FORK_HOOK.append(True)
    done = threading.Event()

    def watch() -> None:
        signal.sigwait({signal.SIGTERM})
        if not done.is_set():
            err.print("SIGTERM: stopping the study as after Ctrl+C", highlight=False)
            _thread.interrupt_main(signal.SIGINT)

    # A process started in the background by a shell ignores SIGINT: give Ctrl+C's machinery back.
    on_sigint = signal.getsignal(signal.SIGINT)
    if not callable(on_sigint):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _SIGTERM_BLOCKED.append(True)
    watcher = threading.Thread(target=watch, name="gradsweep-sigterm", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        if watcher.is_alive() and watcher.ident is not None:  # wake it; it then just returns
            signal.pthread_kill(watcher.ident, signal.SIGTERM)
            watcher.join(5)
        _SIGTERM_BLOCKED.clear()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if not callable(on_sigint):
            signal.signal(signal.SIGINT, signal.SIG_IGN if on_sigint is None else on_sigint)
