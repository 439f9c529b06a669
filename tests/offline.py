"""No host but this one: socket replacements that refuse every other host and say who was asked.

A fixture installs them in the test's process; :func:`sitecustomize` writes a module that installs
them in every Python process a command starts (the CLI, Ray's workers and agents), so a whole
``gradsweep run`` can be checked offline.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1", "")


def refusing(refused: Callable[[object], object]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Stand-ins for ``socket.getaddrinfo`` and ``socket.socket.connect``: loopback and local
    (Unix) sockets pass, any other host is handed to ``refused`` and then refused as no network
    would."""
    resolve, connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host not in LOOPBACK and host is not None:
            refused(host)
            raise socket.gaierror(f"network blocked by the test: {host}")
        return resolve(host, *args, **kwargs)  # type: ignore[arg-type]

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else ""
        if host not in LOOPBACK:
            refused(host)
            raise OSError(f"network blocked by the test: {host}")
        connect(self, address)  # type: ignore[arg-type]

    return getaddrinfo, guarded


def sitecustomize(folder: Path, log: Path) -> Path:
    """Write ``folder/sitecustomize.py``: with ``folder`` first on ``PYTHONPATH``, every Python
    process installs :func:`refusing` at start and appends to ``log`` a line ``loaded <pid>``,
    then one per host it was refused; each line ends in a tab and the process's command line.
    Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import os, socket, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from offline import refusing\n"
        f"LOG = {str(log)!r}\n"
        "def _note(line):\n"
        "    with open(LOG, 'a') as f:\n"
        "        f.write(f'{line}\\n')\n"
        "COMMAND = ' '.join(sys.argv)[:300]\n"
        "_note(f'loaded {os.getpid()}\\t{COMMAND}')\n"
        "def _refused(host):\n"
        "    _note(f'{host}\\t{COMMAND}')\n"
        "socket.getaddrinfo, socket.socket.connect = refusing(_refused)\n"
        "sys.path.pop(0)\n"
    )
    return folder
