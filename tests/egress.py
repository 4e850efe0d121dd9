"""Record every attempt to reach beyond loopback, by every process a scenario starts.

Two nets, used together where the machine allows:
- A private network namespace (`unshare --net --mount`, as root) holding only loopback, whose
  /etc/resolv.conf names a resolver of our own on 127.0.0.1:53. It records each name any
  process asks for (Python or not: Ray's raylet and GCS are C++) and answers "no such name" at
  once, so nothing waits on a timeout. Offline, a lookup fails before any socket opens; without
  this resolver a test would pass while telemetry was on.
- An audit hook (`sitecustomize` on PYTHONPATH, so every Python process started inherits it:
  the CLI, the MLflow server and its workers, Ray's workers and agents, the demo) that logs each
  `socket.getaddrinfo` of a name and each `socket.connect` to an address outside loopback, and
  each process it was loaded into (so a test can check that the hook reached them at all).

    python tests/egress.py SCENARIO.json OUT.json     # run inside the namespace
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

LOG_ENV = "EMOSWEEP_EGRESS_LOG"

SITECUSTOMIZE = r'''
import os as _os, sys as _sys
_log = _os.environ.get("EMOSWEEP_EGRESS_LOG")
if _log:
    import ipaddress as _ip, json as _json

    def _note(kind, what):
        with open(_log, "a") as f:
            f.write(_json.dumps({"pid": _os.getpid(), "kind": kind, "what": what,
                                 "argv": " ".join(_sys.argv)[:300]}) + "\n")

    _LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
    try:
        import socket as _socket
        _LOCAL_NAMES.add(_socket.gethostname())
    except Exception:
        pass

    def _loopback(host):
        try:
            a = _ip.ip_address(host.split("%")[0])
            return a.is_loopback or a.is_unspecified
        except ValueError:
            return None  # a name, not an address

    def _hook(event, args):
        try:
            if event == "socket.getaddrinfo":
                host = args[0].decode() if isinstance(args[0], bytes) else args[0]
                if host is None or host in _LOCAL_NAMES or _loopback(host) is not None:
                    return  # no lookup (an address), or one /etc/hosts answers
                _note("lookup", host)
            elif event == "socket.connect":
                addr = args[1]
                if isinstance(addr, tuple) and isinstance(addr[0], str) and _loopback(addr[0]) is False:
                    _note("connect", f"{addr[0]}:{addr[1]}")
        except Exception:
            pass

    _note("process", "")
    _sys.addaudithook(_hook)

# the sitecustomize this one shadows (emosweep's own for Ray's processes) still runs
import importlib.util as _util
_spec = _util.spec_from_file_location("_emosweep_sitechain", CHAIN)
_chain = _util.module_from_spec(_spec)
_spec.loader.exec_module(_chain)
_chain.run_shadowed(__file__)
'''


CHAIN = Path(__file__).resolve().parent.parent / "workloads" / "core" / "ray_site" / "_emosweep_sitechain.py"


def hook_dir(where: Path) -> Path:
    """A folder holding the audit hook as `sitecustomize.py`, to put first on PYTHONPATH."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(SITECUSTOMIZE.replace("CHAIN", repr(str(CHAIN))))
    return where


def namespace_available() -> str | None:
    """None where a private network and mount namespace can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "no unshare or ip command"
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare failed: {probe.stderr.strip()}"


class Resolver:
    """A DNS server on 127.0.0.1:53 that writes down every name asked and says NXDOMAIN."""

    def __init__(self):
        self.names: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            packet, peer = self.sock.recvfrom(4096)
            try:
                name, end = _question(packet)
            except (IndexError, UnicodeDecodeError):
                continue
            self.names.append(name)
            # the same id and question, flags: response, recursion available, rcode 3 (NXDOMAIN)
            reply = packet[:2] + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + packet[12:end + 4]
            self.sock.sendto(reply, peer)


def _question(packet: bytes) -> tuple[str, int]:
    labels, i = [], 12
    while packet[i]:
        labels.append(packet[i + 1:i + 1 + packet[i]].decode("ascii"))
        i += 1 + packet[i]
    return ".".join(labels), i + 1


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read(1)
                return True
        except OSError:
            time.sleep(0.5)
    return False


def run_scenario(scenario: dict) -> dict:
    """Run each step (in order; a background step runs until its page answers, then is
    stopped) and return the steps' exit codes and output tails, and the names asked."""
    in_namespace = scenario.get("namespace", False)
    resolver = None
    if in_namespace:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        conf = Path(scenario["work"]) / "resolv.conf"
        conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        subprocess.run(["mount", "--bind", str(conf), "/etc/resolv.conf"], check=True)
        resolver = Resolver()
    env = {**os.environ, **scenario["env"]}
    steps = []
    for step in scenario["steps"]:
        t0 = time.monotonic()
        if step.get("probe"):
            proc = subprocess.Popen(step["argv"], env={**env, **step.get("env", {})}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            answered = _wait_http(step["probe"], step.get("timeout", 120))
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            rc = 0 if answered else 1
        else:
            done = subprocess.run(step["argv"], env={**env, **step.get("env", {})}, capture_output=True, text=True,
                                  timeout=step.get("timeout", 600))
            rc, out = done.returncode, done.stdout + done.stderr
        steps.append({"name": step["name"], "rc": rc, "tail": out[-3000:], "seconds": round(time.monotonic() - t0, 1)})
    time.sleep(1)  # late lookups of background threads
    return {"steps": steps, "names": list(resolver.names) if resolver else None}


if __name__ == "__main__":
    scenario = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run_scenario(scenario)))
    os._exit(0)  # the resolver's thread and any leftover child are not waited for
