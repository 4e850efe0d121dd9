"""A real PostgreSQL server on loopback, for the tracking server at a cluster's load.

One SQLite-backed MLflow server serializes every write on the database file (about 70 epoch
logs a second on 2 cores, bench/tracking_throughput.py); PostgreSQL takes concurrent writers.
This runs the distribution's own server (Debian: `apt-get install postgresql`, which .ci/run
and cluster.yaml's head do) in a folder of its own: `initdb`, then `pg_ctl start` listening on
127.0.0.1 only, and a database for MLflow. As root it runs as the `postgres` system user, since
PostgreSQL refuses to run as root.

    with PostgresServer(folder) as pg:
        MlflowServer(root, backend_store_uri=pg.uri)   # postgresql://emosweep@127.0.0.1:PORT/mlflow
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .mlflow_server import free_port

USER = "emosweep"
DATABASE = "mlflow"


def find_bindir() -> Path | None:
    """Where PostgreSQL's server programs are: $EMOSWEEP_PG_BINDIR, else `pg_config --bindir`,
    else the newest /usr/lib/postgresql/*/bin (Debian keeps initdb and pg_ctl off the PATH)."""
    if os.environ.get("EMOSWEEP_PG_BINDIR"):
        return Path(os.environ["EMOSWEEP_PG_BINDIR"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0)
    for found in [*reversed(candidates), *([str(Path(shutil.which("pg_ctl")).parent)] if shutil.which("pg_ctl") else [])]:
        if (Path(found) / "initdb").exists() and (Path(found) / "pg_ctl").exists():
            return Path(found)
    return None


class PostgresServer:
    """`start()` initializes the cluster folder if new (it survives a stop: a restart keeps
    the data), starts the server on a free loopback port and creates the MLflow database."""

    def __init__(self, root: str | os.PathLike | None = None, port: int | None = None):
        self.bindir = find_bindir()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL server here: `apt-get install postgresql` (Debian/Ubuntu)")
        # the postgres user must reach the folder: a fresh one directly under the system's temp
        # folder (a pytest tmp folder sits inside a root-only one)
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="emosweep-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.uri = f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        out = subprocess.run([*self._as, *cmd], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd[:2])}: {out.stderr.strip() or out.stdout.strip()}")

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            # trust on loopback: the server listens on 127.0.0.1 only, for this machine's MLflow
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
                      "--encoding=UTF8", "--no-instructions")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200 "
                   "-c fsync=on -c synchronous_commit=on")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")
        created = subprocess.run([*self._as, str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                                  "-U", USER, "-d", "postgres", "-tAc",
                                  f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                                 capture_output=True, text=True)
        if created.stdout.strip() != "1":
            self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)
        return self

    def pid(self) -> int:
        """The postmaster's process id (its children serve the connections)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, mode: str = "fast") -> None:
        """`mode` as pg_ctl's: fast (roll back open transactions), immediate (a crash)."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                           capture_output=True, text=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.remove()
