"""Every process a bench's command starts, sampled from /proc: peak memory and CPU seconds.

Not only the command's descendants: a shared Ray or MLflow keeper detaches from the command
that starts it, so every process that was not there before counts. Each is named by its part
(`role`): a Ray worker by its title, GCS, the raylet, the MLflow server, or the command's own
script.

    procs = Processes()          # from now on
    code = procs.wait(popen)     # the command's own process (reported apart), to its end
    summary = procs.stop()       # peak memory: the driver's, the largest other's, page cache
    procs.cpu_by_role()          # {"ray::ImplicitFunc": 118.2, "mlflow server": 9.1, ...}
"""
from __future__ import annotations

import os
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def _status(pid: int) -> dict | None:
    """A process's resident memory (kB: anonymous, file-backed, shared) and command line."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    kb = {k: int(fields.get(k, "0 kB").split()[0]) for k in ("RssAnon", "RssFile", "RssShmem")}
    return {**kb, "cmd": cmd or fields.get("Name", "?").strip()}


def cpu_s(pid: int) -> float | None:
    """utime + stime of a process so far, in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def role(cmd: str) -> str:
    """A process's part: Ray's worker (by its title), GCS, raylet, the MLflow server, or the
    command's own name."""
    words = cmd.split()
    exe = words[0].rsplit("/", 1)[-1] if words else "?"
    if exe.startswith("ray::"):  # ray::ImplicitFunc.train → ray::ImplicitFunc (the method it runs now)
        return exe.split(".")[0]
    if exe in ("raylet", "gcs_server"):
        return exe
    if "default_worker.py" in cmd:
        return "ray worker"
    if "mlflow" in cmd and ("server" in cmd or "uvicorn" in cmd or "gunicorn" in cmd or "huey" in cmd):
        return "mlflow server"
    if exe.startswith("python") and len(words) > 1:
        script = next((w for w in words[1:] if not w.startswith("-")), "")
        return f"python {script.rsplit('/', 1)[-1]}"[:40]
    return exe[:40]


class Processes:
    """Peak memory and CPU time of every process started while it runs, sampled every `every` s.
    A process's CPU is its last sample's: one that lives less than a sample, or its last
    fraction, is missed (a fraction of a second each)."""

    def __init__(self, every: float = 0.5):
        self.before = set(self._pids())
        self.me = os.getpid()
        self.peak: dict = {}  # pid → {"anon": MB, "file": MB, "cpu": s, "cmd": …}
        self.driver: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    @staticmethod
    def _pids():
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]

    def _run(self, every):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(every)

    def _sample(self):
        for pid in self._pids():
            if pid not in self.before and pid != self.me:
                self._sample_one(pid)

    def _sample_one(self, pid: int) -> None:
        s = _status(pid)
        cpu = cpu_s(pid)
        if s is None or cpu is None:
            return
        p = self.peak.setdefault(pid, {"anon": 0.0, "file": 0.0, "cpu": 0.0, "cmd": s["cmd"]})
        p["anon"] = max(p["anon"], s["RssAnon"] / 1024)
        p["file"] = max(p["file"], (s["RssFile"] + s["RssShmem"]) / 1024)
        p["cpu"] = max(p["cpu"], cpu)
        if s["cmd"] and not s["cmd"].startswith("ray::IDLE"):
            p["cmd"] = s["cmd"]  # a Ray worker's title names the actor or task it runs

    def wait(self, proc, every: float = 0.1) -> int:
        """Wait for `proc` (a Popen: the command, made self.driver) to end, sampling it every
        `every` s (a command of under a second is seen too) and once more after it ended but
        before it is reaped, so its CPU is whole. Its exit code."""
        self.driver = proc.pid
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            self._sample_one(proc.pid)
            time.sleep(every)
        self._sample_one(proc.pid)  # ended, still in /proc: its CPU to the end
        return proc.wait()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()  # the last word of what still runs
        drv = self.peak.get(self.driver, {"anon": 0.0, "file": 0.0})
        others = [(pid, p) for pid, p in self.peak.items() if pid != self.driver]
        big = max(others, key=lambda x: x[1]["anon"], default=(None, {"anon": 0.0, "cmd": "-"}))[1]
        return {"driver_mb": drv["anon"], "driver_cpu_s": drv.get("cpu", 0.0), "other_mb": big["anon"],
                "other": role(big.get("cmd", "-")),
                "file_mb": max([p["file"] for p in self.peak.values()] or [0.0]), "processes": len(self.peak)}

    def cpu_by_role(self) -> dict:
        """CPU seconds per part, largest first; the command's own process is "driver"."""
        out: dict = {}
        for pid, p in self.peak.items():
            name = "driver" if pid == self.driver else role(p["cmd"])
            out[name] = out.get(name, 0.0) + p["cpu"]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
