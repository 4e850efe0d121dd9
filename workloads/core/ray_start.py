"""Start or join Ray, the same way for a sweep, `emosweep data prepare` and the benches.

Imports nothing heavy (Ray itself only when called), so a process that may never need Ray
pays nothing for it."""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch between a one-machine Ray and a cluster node


def start_ray(address: str | None = None, quiet: bool = True, **kwargs) -> None:
    """Join the cluster at `address` (never one that was not asked for), or start a local Ray
    that listens on loopback only, lean: no dashboard, no metrics exporter (nor its export
    errors), no usage report. Quiet: the workers' output stays in Ray's session logs. Nothing
    happens if this process already runs Ray.

    Loopback: Ray 2.60 binds each gRPC server (GCS, raylet's node and object managers, every
    core worker, the driver's own) to 127.0.0.1 only when the node's IP is 127.0.0.1
    (`listen_to_localhost_only` in src/ray/rpc/grpc_server.cc), and the runtime-env and
    dashboard agents bind the node's IP. But `ray.init(_node_ip_address="127.0.0.1")` is
    turned back into the LAN address (`services.resolve_ip_for_localhost`) unless
    `ray_constants.ENABLE_RAY_CLUSTER` is off, as it is on macOS and Windows, where Ray runs
    one machine on 127.0.0.1. Turning it off here (and in the environment the raylet, workers
    and agents inherit) gives a Linux laptop the same one-machine Ray; it is restored after.
    A lazy `console.quiet_logs` waiting for Ray is applied first (`when_ray_starts`)."""
    import ray

    from .console import when_ray_starts

    when_ray_starts()
    if ray.is_initialized():
        return
    if address:
        # a Ray on this machine's loopback (another emosweep's, a test's) is joined as a process
        # of that same one-machine node; Ray would otherwise look for a raylet on the LAN address
        with one_machine() if on_loopback(address) else nullcontext():
            ray.init(address=address, log_to_driver=not quiet, **kwargs)
        return
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    with_ray_site(os.environ)
    # "local": a Ray of its own. Ray's default (no address) joins the latest cluster it finds in
    # its temp folder, or $RAY_ADDRESS: a laptop sweep would run its trials on a stranger's Ray.
    with one_machine():
        ray.init(address="local", include_dashboard=False, log_to_driver=not quiet, **kwargs)


RAY_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_site")


def with_ray_site(env) -> None:
    """Put ray_site/ first on PYTHONPATH in `env`, which the Ray started next (raylet, workers,
    dashboard) inherits: its sitecustomize stops Ray's cloud probe when usage stats are off
    (see ray_site/sitecustomize.py)."""
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if RAY_SITE not in parts:
        env["PYTHONPATH"] = os.pathsep.join([RAY_SITE, *parts])


def on_loopback(address: str) -> bool:
    """Whether a Ray address (host:port, ray://host:port) names this machine's loopback."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


@contextmanager
def one_machine():
    """Ray's one-machine mode while the block runs: every node started in it (ray.init, or
    ray.cluster_utils.Cluster's simulated nodes) takes 127.0.0.1 as its IP and listens there."""
    import ray._private.ray_constants as ray_constants

    before_env, before = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = before_env
