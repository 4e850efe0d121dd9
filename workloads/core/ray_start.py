"""Start or join Ray, the same way for a sweep, `emosweep data prepare` and the benches.

Imports nothing heavy (Ray itself only when called), so a process that may never need Ray
pays nothing for it."""
from __future__ import annotations

import os


def start_ray(address: str | None = None, quiet: bool = True, **kwargs) -> None:
    """Join the cluster at `address` (never one that was not asked for), or start a local Ray
    lean: no dashboard, no metrics exporter (nor its export errors), no usage report. Quiet: the workers' output stays in
    Ray's session logs. Nothing happens if this process already runs Ray."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=not quiet, **kwargs)
        return
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # "local": a Ray of its own. Ray's default (no address) joins the latest cluster it finds in
    # its temp folder, or $RAY_ADDRESS: a laptop sweep would run its trials on a stranger's Ray.
    ray.init(address="local", include_dashboard=False, log_to_driver=not quiet, **kwargs)
