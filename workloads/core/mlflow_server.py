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


# The server's database connection pool per worker: one connection for each of the threads its
# requests run on (anyio's 40), and some over. SQLAlchemy's default (5, overflow 10) starved at
# 64 concurrent trial clients, on either backend: requests waited 30-60 s for a connection and
# failed (bench/tracking_throughput.py: SQLite 0.2 epoch-logs/s with 34 errors, PostgreSQL 3.3/s
# with 27; with this pool, no errors).
POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "40", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "10"}


def listens(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts connections at host:port."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


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

    def __init__(self, root: str | os.PathLike, port: int | None = None, backend_store_uri: str | None = None,
                 workers: int = 1, secrets: str | os.PathLike | None = None):
        """`backend_store_uri`: default SQLite in `root`; a postgresql:// URI for a cluster's
        load. `secrets`: a folder made by `emosweep secrets`; the server then runs MLflow's
        basic-auth app, whose only user is the sweeps' (its users database sits in `root`)."""
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.workers, self.secrets = workers, secrets
        self._proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", str(self.root / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]
        # MLflow 3's job runner (four huey consumers, for GenAI jobs emosweep never submits) costs
        # two seconds of boot and four processes; it is off unless the environment asks for it
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
               os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
        env.update({k: os.environ.get(k, v) for k, v in POOL.items()})
        if self.secrets is not None:
            from .secrets import FLASK_KEY, basic_auth_config, read

            config = basic_auth_config(self.secrets, f"sqlite:///{self.root / 'basic_auth.db'}",
                                       self.root / "basic_auth.ini")
            cmd += ["--app-name", "basic-auth"]
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = read(Path(self.secrets) / FLASK_KEY)
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


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None (gone, or no /proc on this system)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            stat = f.read()
    except (OSError, ValueError):
        return None
    return stat[stat.rindex(")") + 2:].split()  # the name in () may hold spaces


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where it is
    gone or the system has no /proc. With the pid it names one process: a pid is reused, a
    (pid, start) pair is not."""
    fields = _stat(pid)
    return fields[19] if fields else None  # field 22


def same_process(pid, start) -> bool:
    """Whether `pid` is still the live process that had `start` (a recorded process_start); a
    zombie (dead, not yet reaped by its parent) is not."""
    if not pid or not _pid_alive(int(pid)):
        return False
    fields = _stat(int(pid))
    if fields is None:  # no /proc: the pid is all there is to go by
        return True
    return fields[0] != "Z" and (start is None or fields[19] == str(start))


def _healthy(uri: str) -> bool:
    try:
        urllib.request.urlopen(f"{uri}/health", timeout=2).read()
        return True
    except OSError:
        return False


def default_idle_s() -> float:
    return float(os.environ.get("EMOSWEEP_MLFLOW_IDLE_S", 1800))


class SharedServer:
    """The MLflow server of one $EMOSWEEP_HOME/mlflow, shared by every sweep, `emosweep demo` and
    `emosweep predict` on this machine: started on first use, reused while it answers, and
    stopped by its keeper once nobody has held it for `idle_s` (default 30 min,
    $EMOSWEEP_MLFLOW_IDLE_S). A user holds it between acquire() and release() (a lease file
    named by its pid, so a user that dies holds nothing). The keeper
    (`python -m workloads.core.mlflow_server keep ...`) is a small process that owns the server.

    `server.json` in the root says where it listens, and which processes keep and serve it
    (pid and start time each, so a reused pid is never mistaken for them). A server whose
    keeper died (SIGKILL) goes on serving the store: the next acquire() adopts it with a new
    keeper rather than start a second server on the same SQLite file.

    acquire() returns at once (a new server boots while Ray starts); wait_ready() blocks until
    /health answers."""

    def __init__(self, root: str | os.PathLike, port: int | None = None, idle_s: float | None = None):
        self.root = Path(root).resolve()
        self.preferred_port, self.idle_s = port, default_idle_s() if idle_s is None else idle_s
        self.port: int | None = None
        self.uri: str | None = None
        self.reused = False
        self.adopted = False
        self._keeper_pid: int | None = None

    @property
    def info_file(self) -> Path:
        return self.root / "server.json"

    def _info(self) -> dict | None:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> dict | None:
        """server.json if its keeper lives (its server may still be booting), or if its keeper
        died but its server still serves (then with "orphan": True); else None."""
        info = self._info()
        if info is None:
            return None
        if same_process(info.get("keeper_pid"), info.get("keeper_start")):
            return info
        if same_process(info.get("server_pid"), info.get("server_start")) and _healthy(info["uri"]):
            return {**info, "orphan": True}
        return None

    def _spawn_keeper(self, port: int, adopt: dict | None = None) -> dict:
        args = [str(self.root), str(port), str(self.idle_s)]
        if adopt:
            args += [str(adopt["server_pid"]), str(adopt.get("server_start") or "")]
        with open(self.root / "mlflow-server.log", "ab") as log:
            keeper = subprocess.Popen([sys.executable, "-m", "workloads.core.mlflow_server", "keep", *args],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        info = {**(adopt or {}), "uri": f"http://127.0.0.1:{port}", "port": port, "keeper_pid": keeper.pid,
                "keeper_start": process_start(keeper.pid), "idle_s": self.idle_s}
        info.setdefault("started", time.time())
        info.pop("orphan", None)
        _write_json(self.info_file, info)
        return info

    def acquire(self) -> "SharedServer":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "leases").mkdir(exist_ok=True)
        with self._lock():
            info = self.running()
            if info is None:
                port = self.preferred_port if self.preferred_port and port_free(self.preferred_port) else free_port()
                info = self._spawn_keeper(port)
            elif info.get("orphan"):
                print(f"[emosweep] adopting the MLflow server at {info['uri']} (pid {info['server_pid']}), whose "
                      f"keeper is gone", file=sys.stderr)
                info = self._spawn_keeper(int(info["port"]), adopt=info)
                self.reused = self.adopted = True
            else:
                self.reused = True
            (self.root / "leases" / str(os.getpid())).touch()
        self.port, self.uri, self._keeper_pid = int(info["port"]), info["uri"], int(info["keeper_pid"])
        return self

    def _lock(self):
        return _file_lock(self.root / ".server.lock")

    def wait_ready(self, timeout: float = 120.0) -> "SharedServer":
        _wait_healthy(self.uri, lambda: None if _pid_alive(self._keeper_pid) else "the MLflow server's keeper exited",
                      self.root / "mlflow-server.log", timeout)
        return self

    def release(self) -> None:
        try:
            (self.root / "leases" / str(os.getpid())).unlink()
        except FileNotFoundError:
            pass

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server now, whoever holds it: through its keeper, or (an orphan) by
        signalling the server's own process group. Returns whether one ran, once its keeper has
        exited: a sweep started right after a stop that returned at the signal found the dying
        keeper still alive, took its server as running, and lost it (bench/vs_optuna.py did so).
        Only processes whose pid and start time match server.json are signalled."""
        info = self.running()
        if info is None:
            return False
        if not info.get("orphan"):
            os.kill(int(info["keeper_pid"]), signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and same_process(info["keeper_pid"], info.get("keeper_start")):
                time.sleep(0.1)
            return True
        _stop_group(int(info["server_pid"]), info.get("server_start"))
        self.info_file.unlink(missing_ok=True)
        return True


def _write_json(path: Path, info: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


class _file_lock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


def _stop_group(pid: int, start, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by `pid` (the server: started in a session of its own, its
    uvicorn workers with it), SIGKILL after `timeout`; nothing if `pid` is no longer that
    process."""
    if not same_process(pid, start):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and same_process(pid, start):
        time.sleep(0.2)
    if same_process(pid, start):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _held(root: Path) -> bool:
    """Whether a live process holds a lease; a dead holder's lease is cleared."""
    held = False
    for lease in (root / "leases").glob("*"):
        if lease.name.isdigit() and _pid_alive(int(lease.name)):
            held = True
        else:
            lease.unlink(missing_ok=True)  # its holder died without releasing
    return held


def wait_until_idle(root: Path, lock_path: Path, idle_s: float, keep_going) -> "_file_lock | None":
    """A keeper's watch: return once no live lease under `root` has been seen for idle_s (then
    holding `lock_path`, the lock users acquire under, so that nobody is handed what is about
    to stop: the caller releases it), or when keep_going() turns false (then None)."""
    idle_since = time.monotonic()
    while keep_going():
        if _held(root):
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > idle_s:
            lock = _file_lock(lock_path).__enter__()
            if not _held(root):  # nobody arrived meanwhile: stop, holding the lock
                return lock
            lock.__exit__()
            idle_since = time.monotonic()
        time.sleep(1.0)
    return None


def drop_own_info(info_file: Path, keeper_pid: int) -> None:
    """A stopping keeper removes the file that names it (server.json, ray.json), unless a newer
    keeper has written its own there meanwhile."""
    try:
        if int(json.loads(info_file.read_text()).get("keeper_pid", 0)) == keeper_pid:
            info_file.unlink()
    except (OSError, ValueError):
        pass


def keep(root: str, port: int, idle_s: float, adopt_pid: int | None = None, adopt_start: str | None = None) -> None:
    """The keeper: run the server of `root` (or watch the one it adopts, `adopt_pid`); stop it
    when no live lease has been seen for idle_s, on SIGTERM, or when it dies. The idle stop
    takes the lock acquire() takes, so a user that arrives as the keeper gives up is never
    handed a server that is about to stop."""
    root_path = Path(root)
    if adopt_pid:
        server, pid, start = None, adopt_pid, adopt_start or None
    else:
        server = MlflowServer(root_path, port=port).start()
        pid, start = server._proc.pid, process_start(server._proc.pid)
    me = os.getpid()
    with _file_lock(root_path / ".server.lock"):  # acquire() wrote server.json before this keeper could run
        info = json.loads((root_path / "server.json").read_text()) if (root_path / "server.json").exists() else {}
        if int(info.get("keeper_pid", 0)) == me:
            _write_json(root_path / "server.json", {**info, "server_pid": pid, "server_start": start})
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    def alive() -> bool:
        return server._proc.poll() is None if server is not None else same_process(pid, start)

    lock = None
    try:
        lock = wait_until_idle(root_path, root_path / ".server.lock", idle_s, lambda: not stopping and alive())
    finally:
        if server is not None:
            server.stop()
        else:
            _stop_group(pid, start)
        drop_own_info(root_path / "server.json", me)
        if lock is not None:
            lock.__exit__()


if __name__ == "__main__":  # python -m workloads.core.mlflow_server keep ROOT PORT IDLE_S [PID START]: the keeper
    if len(sys.argv) in (5, 7) and sys.argv[1] == "keep":
        keep(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
             *((int(sys.argv[5]), sys.argv[6]) if len(sys.argv) == 7 else ()))
    else:
        sys.exit("usage: python -m workloads.core.mlflow_server keep ROOT PORT IDLE_S [ADOPT_PID ADOPT_START]")
