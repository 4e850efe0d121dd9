"""Loaded at start-up by the processes of a Ray that emosweep starts (workloads/core/ray_start.py
puts this folder first on their PYTHONPATH): the raylet's workers and agents, and the dashboard.

Ray 2.60's dashboard asks the cloud metadata servers which cloud it runs in even when usage
stats are off: UsageStatsHead.run() calls get_cluster_config_to_report() before it checks the
switch, and on a machine that `ray up` did not make (no ~/ray_bootstrap_config.yaml) that
calls get_cloud_from_metadata_requests(), which looks up metadata.google.internal and connects
to 169.254.169.254. With RAY_USAGE_STATS_ENABLED=0, the answer is "unknown" without asking.
tests/test_no_egress.py fails if this stops working (a renamed function, say).

Python imports only the first `sitecustomize` on its path: the one this shadows, if any, is
run after it (_emosweep_sitechain.py).
"""
import os as _os
import sys as _sys


def _install() -> None:
    import importlib.abc
    import importlib.machinery

    target = "ray._common.usage.usage_lib"

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target_module=None):
            if name != target:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def patched(module):
                exec_module(module)
                module.get_cloud_from_metadata_requests = lambda: "unknown"

            spec.loader.exec_module = patched
            return spec

    _sys.meta_path.insert(0, _Finder())


if _os.environ.get("RAY_USAGE_STATS_ENABLED") == "0":
    _install()
import _emosweep_sitechain  # noqa: E402  (beside this file, so on the same path entry)

_emosweep_sitechain.run_shadowed(__file__)
