"""A local Ray that outlives one sweep, stopped when idle the way the MLflow server is.

Starting Ray costs a sweep 5 to 7 s on a laptop before anything else can happen. Sweeps of a
$EMOSWEEP_HOME started without `--address` share one local Ray instead: the first starts it,
the next ones join it (under a second), and its keeper stops it once nobody has used it for
`idle_s` (default 10 min, $EMOSWEEP_RAY_IDLE_S; 0 gives every sweep a Ray of its own, as before).

The keeper (`python -m workloads.core.shared_ray keep ROOT IDLE_S`) is a small process that
starts the Ray (one machine, loopback only, as `ray_start.start_ray` does), writes its address
into `ROOT/ray.json`, and holds it. A sweep holds it between acquire() and release() (a lease
file named by its pid: a sweep that dies holds nothing). `ray.json` also records what a joining
sweep must share with the workers the Ray starts (the Python, the Ray version and the project
they import); a sweep that differs gets a Ray of its own. The environment a sweep's workers see
is the sweep's own: its EMOSWEEP_*, MLFLOW_*, TUNE_*, HF_* and thread settings travel with the
job (`job_env`), not the keeper's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .mlflow_server import (_file_lock, _write_json, drop_own_info, listens, process_start, same_process,
                           wait_until_idle)

PROJECT = str(Path(__file__).resolve().parents[2])
# what a sweep's workers take from the sweep (not the keeper) when it joins the shared Ray
JOB_ENV_PREFIXES = ("EMOSWEEP_", "MLFLOW_", "TUNE_", "HF_", "TRANSFORMERS_", "TORCH_", "OMP_", "MKL_", "PYTHON")


def default_idle_s() -> float:
    return float(os.environ.get("EMOSWEEP_RAY_IDLE_S", 600))


def identity() -> dict:
    """What a joining sweep must share with the Ray's workers."""
    import ray

    return {"python": sys.executable, "ray": ray.__version__, "project": PROJECT}


def job_env() -> dict:
    """The sweep's environment its workers need, passed with the job (runtime_env env_vars)."""
    return {k: v for k, v in os.environ.items() if k.startswith(JOB_ENV_PREFIXES) and k != "PYTHONSTARTUP"}


class SharedRay:
    """The shared local Ray of one folder ($EMOSWEEP_HOME/ray-local)."""

    def __init__(self, root: str | os.PathLike, idle_s: float | None = None):
        self.root = Path(root).resolve()
        self.idle_s = default_idle_s() if idle_s is None else idle_s
        self.address: str | None = None
        self.auth_mode: str | None = None
        self.reused = False

    @property
    def info_file(self) -> Path:
        return self.root / "ray.json"

    def running(self) -> dict | None:
        """ray.json while its keeper lives (the Ray may still be starting), else None."""
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None
        return info if same_process(info.get("keeper_pid"), info.get("keeper_start")) else None

    def acquire(self, timeout: float = 120.0) -> "SharedRay":
        """Hold the shared Ray (started if none runs) and wait until it takes drivers. Raises
        RuntimeError when it cannot be started or differs from this process (identity)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "leases").mkdir(exist_ok=True)
        with _file_lock(self.root / ".ray.lock"):
            info = self.running()
            if info is not None and "address" in info and not listens(*info["address"].rsplit(":", 1)):
                # its Ray is gone (`ray stop`, a crash, the OOM killer) and the keeper lives on:
                # a sweep that joined would wait on a dead GCS for good. A new keeper, a new Ray
                self._retire(info)
                info = None
            if info is None:
                info = self._spawn_keeper()
            else:
                self.reused = True
            (self.root / "leases" / str(os.getpid())).touch()
        deadline = time.monotonic() + timeout
        while "address" not in info:
            if time.monotonic() > deadline or self.running() is None:
                self.release()
                raise RuntimeError(f"the shared Ray did not start; see {self.root / 'keeper.log'}")
            time.sleep(0.2)
            info = self.running() or info
        if info.get("identity") != identity():
            self.release()
            raise RuntimeError(f"the shared Ray runs another Python, Ray or project ({info.get('identity')})")
        self.address, self.auth_mode = info["address"], info.get("auth_mode")
        return self

    def connect(self, quiet: bool = True) -> None:
        """Join it as this process's Ray, the workers of this job getting this process's
        environment (job_env)."""
        from .ray_start import start_ray

        if self.auth_mode:
            from ray._raylet import Config

            os.environ["RAY_AUTH_MODE"] = self.auth_mode
            Config.initialize("")  # Ray reads the mode from its cached config (its own _enable_token_auth does this)
        start_ray(self.address, quiet=quiet, runtime_env={"env_vars": job_env()})

    def _spawn_keeper(self) -> dict:
        with open(self.root / "keeper.log", "ab") as log:
            keeper = subprocess.Popen([sys.executable, "-m", "workloads.core.shared_ray", "keep", str(self.root),
                                       str(self.idle_s)], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        info = {"keeper_pid": keeper.pid, "keeper_start": process_start(keeper.pid), "idle_s": self.idle_s,
                "started": time.time()}
        _write_json(self.info_file, info)
        return info

    def _retire(self, info: dict) -> None:
        """Kill a keeper whose Ray has died and drop its ray.json (under the lock)."""
        if same_process(info.get("keeper_pid"), info.get("keeper_start")):
            os.kill(int(info["keeper_pid"]), signal.SIGKILL)  # its Ray is dead: nothing to shut down
        self.info_file.unlink(missing_ok=True)
        print(f"[emosweep] the shared Ray at {info['address']} had stopped under its keeper; starting a new one",
              file=sys.stderr, flush=True)

    def release(self) -> None:
        (self.root / "leases" / str(os.getpid())).unlink(missing_ok=True)

    def holders(self) -> int:
        return sum(1 for _ in (self.root / "leases").glob("*")) if (self.root / "leases").is_dir() else 0

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop it now, whoever holds it (their sweeps lose their trials). Returns whether one ran."""
        info = self.running()
        if info is None:
            return False
        os.kill(int(info["keeper_pid"]), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        # until the keeper has exited, not just dropped ray.json: it drops the file before its
        # ray.shutdown(), and a sweep started meanwhile lost its MLflow server's keeper to the
        # dying Ray (bench/vs_optuna.py stops both between its sides, and failed so)
        while time.monotonic() < deadline and (self.running() is not None
                                               or same_process(info["keeper_pid"], info.get("keeper_start"))):
            time.sleep(0.2)
        return True


def keep(root: str, idle_s: float) -> None:
    """The keeper: start the Ray, publish its address, stop it when no live lease has been seen
    for idle_s or on SIGTERM. The idle stop takes the lock acquire() takes, so a sweep that
    arrives as the keeper gives up is never handed a Ray about to stop."""
    import ray

    from .ray_start import start_ray

    root_path = Path(root)
    stopping: list = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    start_ray(None, quiet=True)
    me = os.getpid()
    with _file_lock(root_path / ".ray.lock"):
        info = json.loads((root_path / "ray.json").read_text()) if (root_path / "ray.json").exists() else {}
        if int(info.get("keeper_pid", 0)) != me:
            ray.shutdown()
            return
        # Ray 2.60 turns token authentication on for a new local Ray (the token in ~/.ray/auth_token);
        # a driver joining by address must ask for it (connect())
        _write_json(root_path / "ray.json", {**info, "address": ray.get_runtime_context().gcs_address,
                                             "identity": identity(), "auth_mode": os.environ.get("RAY_AUTH_MODE")})
    lock = None
    try:
        lock = wait_until_idle(root_path, root_path / ".ray.lock", idle_s, lambda: not stopping)
    finally:
        drop_own_info(root_path / "ray.json", me)
        if lock is not None:
            lock.__exit__()
        ray.shutdown()


if __name__ == "__main__":  # python -m workloads.core.shared_ray keep ROOT IDLE_S: the keeper
    if len(sys.argv) == 4 and sys.argv[1] == "keep":
        keep(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit("usage: python -m workloads.core.shared_ray keep ROOT IDLE_S")
