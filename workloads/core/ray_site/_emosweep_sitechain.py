"""Run the sitecustomize.py that one of ours shadows. Python imports only the first
`sitecustomize` on its path; ours (ray_site's, and the no-egress test's audit hook) call
run_shadowed(__file__) so the next one still runs. Each marks itself in one set on `sys`, so two
that chain to each other never loop. ray_site imports it by this name (no user module has it);
the no-egress test loads it by path."""
import importlib.util
import os
import sys


def run_shadowed(me: str) -> None:
    done = sys.__dict__.setdefault("_sitecustomize_run", set())
    done.add(os.path.abspath(me))
    for entry in sys.path:
        path = os.path.abspath(os.path.join(entry or ".", "sitecustomize.py"))
        if entry and path not in done and os.path.isfile(path):
            done.add(path)
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return

