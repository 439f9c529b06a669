"""The study's Ray session: attach to a cluster, or start (and later stop) an embedded one.

An embedded Ray is the study's own: its node is addressed as 127.0.0.1 and it requires a token
made for this session. Some of Ray's ports answer on every interface (gRPC's default), but no
process, here or on another machine, can join or use it without the token (an open Ray port
runs anyone's code). Attaching to a user's cluster changes
none of that cluster's settings.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
from collections.abc import Iterator
from typing import Any

import ray
from ray._private import ray_constants

from search import environment
from search.errors import UserError

#: Ray would start a pool of idle workers for the driver, but Tune's trial actors live in
#: placement groups and never use them: starting them only delays the study.
NO_PRESTART = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
LOOPBACK = "127.0.0.1"
#: Environment of an embedded session: token auth with the session's own token (read by the
#: driver and inherited by every Ray process it starts), and no "cluster" networking, without
#: which Ray replaces a loopback node address by the machine's network address.
_EMBEDDED_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
#: What an embedded session changed, to restore when it stops: environment, Ray's flag.
_saved: dict[str, Any] = {}


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Attach to ``address`` (else ``RAY_ADDRESS``); without either, to the warm Ray of
    ``gradsweep ray start`` if one runs (:mod:`search.warm_ray`), else start an embedded local
    Ray (``num_cpus`` logical CPUs: the machine's by default; asking for a number also means a
    Ray of its own). ``local`` always means an embedded one. True if this call started or
    attached a session that the study must shut down; False if one was already running."""
    if ray.is_initialized():
        return False
    from search import warm_ray  # here: it imports this module's settings

    address = environment.ray_address(address)  # RAY_ADDRESS, as Ray's own default reads it

    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    warm = warm_ray.usable() if address is None and num_cpus is None else None
    try:
        if address and address != "local":
            ray.init(address=address, **kwargs)
        elif warm is not None:
            _auth_settings(warm.token)
            try:
                ray.init(address=warm.address, **kwargs)
            except BaseException:
                _restore_settings()
                raise
        else:
            _embedded_settings()
            try:  # a copy: Ray adds to the dict it is given
                ray.init(
                    address="local",  # never a cluster found in /tmp/ray
                    include_dashboard=False,
                    _node_ip_address=LOOPBACK,
                    num_cpus=num_cpus,
                    _system_config=dict(NO_PRESTART),
                    **kwargs,
                )
            except BaseException:
                _restore_settings()
                raise
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if warm is not None:
            raise UserError(
                f"cannot attach to the warm Ray at {warm.address} ({exc}); 'gradsweep ray stop' "
                "ends it, or --address local runs this study on a Ray of its own"
            ) from None
        raise UserError(f"--address: cannot attach to Ray at {address or 'local'}: {exc}") from None
    return True


def node_resources() -> list[dict[str, float]]:
    """Total resources of each live node of the session's cluster."""
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def autoscaling() -> bool:
    """Whether the connected cluster runs Ray's autoscaler (v2, as KubeRay's does): nodes may
    still come. The v1 monitor also runs on fixed clusters, so it is not a sign."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # an older Ray, or no GCS client: a fixed cluster, as before
        return False


def request_resources(bundle: dict[str, float]) -> None:
    """Ask the cluster's autoscaler for a node that holds ``bundle``."""
    from ray.autoscaler.sdk import request_resources as ask

    ask(bundles=[bundle])


def shutdown() -> None:
    """Stop (or detach from) the study's Ray, and undo what an embedded session set."""
    ray.shutdown()
    _restore_settings()


def _embedded_settings() -> None:
    """Loopback only and a fresh token, for this process and the Ray processes it starts."""
    _auth_settings(secrets.token_hex(32))


def _auth_settings(token: str) -> None:
    """Token auth with ``token``, loopback addresses, for this process (and what it starts)."""
    _saved["env"] = {key: os.environ.get(key) for key in _EMBEDDED_ENV}
    _saved["cluster"] = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read when ray.init resolves the node address
    _reload_auth()


def _restore_settings() -> None:
    """The environment and Ray flag as they were before the embedded session (no-op else)."""
    if "env" not in _saved:
        return
    for key, value in _saved.pop("env").items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    ray_constants.ENABLE_RAY_CLUSTER = _saved.pop("cluster")
    _reload_auth()


def _reload_auth() -> None:
    """Make this process's Ray core read the auth mode and token from the environment again:
    both are cached on first use, and a second study in the same process has a new token."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


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
