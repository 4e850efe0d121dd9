"""The MLflow server emosweep runs on loopback, and the one a whole $EMOSWEEP_HOME shares.

Kept free of MLflow's Python package (the server runs as `python -m mlflow server`), so the
keeper process and the driver's server handling import in milliseconds.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_healthy(uri: str, dead, log: Path, timeout: float) -> None:
    """Poll `uri`/health until it answers; `dead()` says why not (the process that serves it
    exited) and ends the wait early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        why = dead()
        if why:
            raise RuntimeError(f"{why}; see {log}")
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).read()
            return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"mlflow server at {uri} not ready after {timeout:.0f}s; see {log}")


class MlflowServer:
    """A real `mlflow server` on a free loopback port, SQLite backend, proxied artifacts.

    `start()` returns at once so the server boots while Ray starts; `wait_ready()` blocks
    until its /health endpoint answers. Nothing listens beyond 127.0.0.1.
    """

    def __init__(self, root: str | os.PathLike, port: int | None = None):
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        # MLflow 3's job runner (four huey consumers, for GenAI jobs emosweep never submits) costs
        # two seconds of boot and four processes; it is off unless the environment asks for it
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
               os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
        with open(self.root / "mlflow-server.log", "ab") as log:  # the child keeps its own copy
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        return self

    def wait_ready(self, timeout: float = 120.0) -> "MlflowServer":
        def dead():
            if self._proc is not None and self._proc.poll() is not None:
                return f"mlflow server exited with code {self._proc.returncode}"
        _wait_healthy(self.uri, dead, self.root / "mlflow-server.log", timeout)
        return self

    def stop(self, wait: bool = True) -> None:
        """SIGTERM to the server's whole process group: `mlflow server` runs uvicorn and a job
        runner as children, and signalling only the parent leaves it waiting on them. With
        wait=False the server finishes its shutdown on its own (every write is already
        committed: SQLite commits per request)."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                if not wait:
                    self._proc = None
                    return
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def default_idle_s() -> float:
    return float(os.environ.get("EMOSWEEP_MLFLOW_IDLE_S", 1800))


class SharedServer:
    """The MLflow server of one $EMOSWEEP_HOME/mlflow, shared by every sweep, `emosweep demo` and
    `emosweep predict` on this machine: started on first use, reused while it answers, and
    stopped by its keeper once nobody has held it for `idle_s` (default 30 min,
    $EMOSWEEP_MLFLOW_IDLE_S). A user holds it between acquire() and release() (a lease file
    named by its pid, so a user that dies holds nothing). The keeper
    (`python -m workloads.core.mlflow_server keep ...`) is a small process that owns the server.

    acquire() returns at once (a new server boots while Ray starts); wait_ready() blocks until
    /health answers. `server.json` in the root says where it listens."""

    def __init__(self, root: str | os.PathLike, port: int | None = None, idle_s: float | None = None):
        self.root = Path(root).resolve()
        self.preferred_port, self.idle_s = port, default_idle_s() if idle_s is None else idle_s
        self.port: int | None = None
        self.uri: str | None = None
        self.reused = False
        self._keeper_pid: int | None = None

    @property
    def info_file(self) -> Path:
        return self.root / "server.json"

    def running(self) -> dict | None:
        """server.json, if its keeper lives (its server may still be booting), else None."""
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None
        if not _pid_alive(int(info.get("keeper_pid", 0))):
            return None
        return info

    def acquire(self) -> "SharedServer":
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "leases").mkdir(exist_ok=True)
        with open(self.root / ".server.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            info = self.running()
            if info is None:
                port = self.preferred_port if self.preferred_port and port_free(self.preferred_port) else free_port()
                with open(self.root / "mlflow-server.log", "ab") as log:
                    keeper = subprocess.Popen(
                        [sys.executable, "-m", "workloads.core.mlflow_server", "keep", str(self.root), str(port),
                         str(self.idle_s)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True)
                info = {"uri": f"http://127.0.0.1:{port}", "port": port, "keeper_pid": keeper.pid,
                        "started": time.time(), "idle_s": self.idle_s}
                self.info_file.write_text(json.dumps(info))
            else:
                self.reused = True
            (self.root / "leases" / str(os.getpid())).touch()
        self.port, self.uri, self._keeper_pid = int(info["port"]), info["uri"], int(info["keeper_pid"])
        return self

    def wait_ready(self, timeout: float = 120.0) -> "SharedServer":
        _wait_healthy(self.uri, lambda: None if _pid_alive(self._keeper_pid) else "the MLflow server's keeper exited",
                      self.root / "mlflow-server.log", timeout)
        return self

    def release(self) -> None:
        try:
            (self.root / "leases" / str(os.getpid())).unlink()
        except FileNotFoundError:
            pass

    def stop(self) -> bool:
        """Stop the keeper (and so its server) now, whoever holds it. Returns whether one ran."""
        info = self.running()
        if info is None:
            return False
        os.kill(int(info["keeper_pid"]), signal.SIGTERM)
        return True


def keep(root: str, port: int, idle_s: float) -> None:
    """The keeper: run the server of `root`; stop it when no live lease has been seen for idle_s,
    on SIGTERM, or when it dies."""
    root_path = Path(root)
    server = MlflowServer(root_path, port=port).start()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    idle_since = time.monotonic()
    try:
        while not stopping and server._proc.poll() is None:
            held = False
            for lease in (root_path / "leases").glob("*"):
                if lease.name.isdigit() and _pid_alive(int(lease.name)):
                    held = True
                else:
                    lease.unlink(missing_ok=True)  # its holder died without releasing
            if held:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_s:
                break
            time.sleep(1.0)
    finally:
        server.stop()
        try:
            info = json.loads((root_path / "server.json").read_text())
            if int(info.get("keeper_pid", 0)) == os.getpid():
                (root_path / "server.json").unlink()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":  # python -m workloads.core.mlflow_server keep ROOT PORT IDLE_S: the shared server's keeper
    if len(sys.argv) == 5 and sys.argv[1] == "keep":
        keep(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit("usage: python -m workloads.core.mlflow_server keep ROOT PORT IDLE_S")
