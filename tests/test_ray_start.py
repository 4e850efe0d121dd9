"""A laptop sweep never joins a Ray it did not start: without --address, `start_ray` starts
its own local Ray even when another one runs on the machine and names itself in $RAY_ADDRESS
(Ray's own default joins it, or the latest cluster `ray start` left in its temp folder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HOLDER = r'''
import json, sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}), flush=True)
sys.stdin.read()  # holds its Ray until the test closes stdin
'''

PROBE = r'''
import json, ray
from workloads.core.ray_start import start_ray
start_ray()
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}))
'''


def test_without_address_a_new_local_ray_is_started_not_the_running_one_joined():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        theirs = json.loads(holder.stdout.readline())["gcs"]
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180,
                             env={**env, "RAY_ADDRESS": theirs})
        assert out.returncode == 0, out.stderr[-2000:]
        ours = json.loads(out.stdout.strip().splitlines()[-1])["gcs"]
        assert theirs and ours and ours != theirs
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
