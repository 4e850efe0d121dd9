"""The local Ray sweeps share: started by the first user, joined by the next, on loopback only,
its workers given each sweep's own environment, and stopped by its keeper once unused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sockets import descendants, listeners

ROOT = Path(__file__).resolve().parents[1]

# a driver that holds the shared Ray, runs one task there and reports what the worker saw
DRIVER = """
import json, os, sys
import ray
from workloads.core.shared_ray import SharedRay
shared = SharedRay(sys.argv[1]).acquire()
shared.connect()
@ray.remote
def probe():
    return {"marker": os.environ.get("EMOSWEEP_TEST_MARKER"), "pid": os.getpid()}
print(json.dumps({"reused": shared.reused, "address": shared.address, **ray.get(probe.remote())}))
ray.shutdown()
shared.release()
"""


def _drive(root: Path, marker: str) -> dict:
    env = {**os.environ, "EMOSWEEP_RAY_IDLE_S": "4", "EMOSWEEP_TEST_MARKER": marker, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", DRIVER, str(root)], env=env, capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_local_ray_is_shared_on_loopback_and_stopped_when_idle(tmp_path):
    root = tmp_path / "ray-local"
    first = _drive(root, "first")
    info = json.loads((root / "ray.json").read_text())
    keeper = int(info["keeper_pid"])
    try:
        assert not first["reused"] and first["marker"] == "first"
        second = _drive(root, "second")
        # the same Ray, joined; the worker saw the second driver's environment, not the first's
        assert second["reused"] and second["address"] == first["address"]
        assert second["marker"] == "second"
        assert json.loads((root / "ray.json").read_text())["keeper_pid"] == keeper

        ray_pids = descendants(keeper) - {keeper}
        held = [x for x in listeners() if x["pid"] in ray_pids]
        assert held, "the shared Ray listens somewhere"
        assert all(x["loopback"] for x in held), [x for x in held if not x["loopback"]]

        status = subprocess.run([sys.executable, "-m", "sweeps.cli", "ray"], capture_output=True, text=True,
                                cwd=ROOT, env={**os.environ, "EMOSWEEP_HOME": str(tmp_path)}, timeout=60)
        assert first["address"] in status.stdout and "0 sweep(s)" in status.stdout, status.stdout

        # nobody holds it: the keeper stops it after its idle time (4 s), and its Ray with it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (root / "ray.json").exists():
            time.sleep(0.5)
        assert not (root / "ray.json").exists(), "the idle shared Ray was not stopped"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in [keeper, *ray_pids]):
            time.sleep(0.5)
        assert not [p for p in [keeper, *ray_pids] if _alive(p)], "processes of the stopped Ray are left"
    finally:
        if _alive(keeper):
            os.kill(keeper, 15)


def test_a_shared_ray_that_died_under_its_keeper_is_replaced(tmp_path):
    """`ray stop`, a crash or the OOM killer can take the Ray and leave its keeper: the next sweep
    starts a new keeper and Ray instead of waiting on the dead one's GCS for good."""
    root = tmp_path / "ray-local"
    first = _drive(root, "first")
    keeper = int(json.loads((root / "ray.json").read_text())["keeper_pid"])
    try:
        for pid in descendants(keeper) - {keeper}:  # the Ray, not its keeper
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        assert _alive(keeper)
        again = _drive(root, "again")
        assert not again["reused"] and again["address"] != first["address"] and again["marker"] == "again"
        assert not _alive(keeper)
        assert json.loads((root / "ray.json").read_text())["keeper_pid"] != keeper
    finally:
        if _alive(keeper):
            os.kill(keeper, 9)
        info = json.loads((root / "ray.json").read_text()) if (root / "ray.json").exists() else {}
        if info.get("keeper_pid") and _alive(int(info["keeper_pid"])):
            os.kill(int(info["keeper_pid"]), 15)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
