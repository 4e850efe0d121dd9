"""How many trials can one MLflow server keep up with: SQLite (the laptop's default) against
PostgreSQL (a cluster head's, cluster.yaml), side by side in one run.

N concurrent clients each log epochs of 30 metrics (one log_batch per epoch, as a trial does)
to a real server on loopback for a fixed time. Per backend and client count it prints epochs
logged per second, the p50/p95 latency of one epoch's batch, the errors clients saw, the lost
writes (epochs a client was told were logged, missing when read back), and the CPU share of
the server's processes (MLflow's and PostgreSQL's) and of the clients' process: on 2 cores the
server's own CPU may bound both backends. Then the ratio PostgreSQL / SQLite at the most clients.

    python bench/tracking_throughput.py [--seconds 10] [--clients 1,16,64] [--pg-workers 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from workloads.core.mlflow_server import MlflowServer
from workloads.core.postgres import PostgresServer, find_bindir

from smallest import parse  # noqa: E402  (bench/, beside this file)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(roots: list[int]) -> float:
    """CPU time so far of the processes `roots` and all their descendants."""
    stats = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            stats[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)  # ppid; utime + stime
        except (OSError, IndexError, ValueError):
            continue
    total, seen, todo = 0.0, set(), [r for r in roots if r in stats]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo += [child for child, (ppid, _) in stats.items() if ppid == pid]
    return total


def client_loop(uri: str, exp_id: str, stop: float, latencies: list, acked: dict, errors: list) -> None:
    client = MlflowClient(uri)
    run_id = None
    while run_id is None and time.monotonic() < stop:  # a trial retries its run's creation, too
        try:
            run_id = client.create_run(exp_id).info.run_id
        except Exception as e:
            errors.append(type(e).__name__)
    if run_id is None:
        return
    step, acked[run_id] = 0, 0
    while time.monotonic() < stop:
        now = int(time.time() * 1000)
        batch = [Metric(f"m{i}", float(step + i), now, step) for i in range(30)]
        t = time.perf_counter()
        try:
            client.log_batch(run_id, metrics=batch)
        except Exception as e:  # counted, not fatal: the bench measures how often it happens
            errors.append(type(e).__name__)
        else:
            latencies.append(time.perf_counter() - t)
            acked[run_id] += 1
        step += 1


def lost_writes(client: MlflowClient, acked: dict) -> int:
    """Epochs acknowledged to a client but absent when read back."""
    lost = 0
    for run_id, n in acked.items():
        steps = {m.step for m in client.get_metric_history(run_id, "m0")}
        lost += max(0, n - len(steps))
    return lost


def measure(uri: str, clients: int, seconds: float, server_pids: list[int]) -> dict:
    client = MlflowClient(uri)
    exp_id = client.create_experiment(f"bench-{clients}-{time.time_ns()}")
    latencies: list = []
    acked: dict = {}
    errors: list = []
    stop = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(uri, exp_id, stop, latencies, acked, errors))
               for _ in range(clients)]
    server_cpu, own_cpu, start = cpu_seconds(server_pids), time.process_time(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    server_cpu, own_cpu = cpu_seconds(server_pids) - server_cpu, time.process_time() - own_cpu
    cores = os.cpu_count() or 1
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {"epochs_s": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p95_ms": 1000 * q[18], "errors": len(errors), "lost": lost_writes(client, acked),
            "server_cpu": server_cpu / (elapsed * cores), "client_cpu": own_cpu / (elapsed * cores)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", default="1,16,64", help="concurrent trial clients, comma-separated")
    p.add_argument("--pg-workers", type=int, default=2,
                   help="MLflow server workers on PostgreSQL (SQLite keeps 1: its writers queue on one file lock)")
    args = parse(p, seconds=1.0, clients="1,4")
    counts = [int(c) for c in args.clients.split(",")]
    backends = ["sqlite"] + (["postgresql"] if find_bindir() else [])
    if len(backends) == 1:
        print("no PostgreSQL server here (`apt-get install postgresql`): SQLite only")
    root = Path(tempfile.mkdtemp(prefix="emosweep-mlflow-bench-"))
    results: dict = {}
    print(f"{'backend':>10} {'workers':>7} {'clients':>7} {'epochs/s':>9} {'p50 ms':>7} {'p95 ms':>7} {'errors':>6} "
          f"{'lost':>5} {'server CPU':>10} {'client CPU':>10}")
    for backend in backends:
        pg = PostgresServer().start() if backend == "postgresql" else None
        workers = args.pg_workers if pg else 1
        try:
            with MlflowServer(root / backend, backend_store_uri=pg.uri if pg else None, workers=workers) as server:
                pids = [server._proc.pid] + ([pg.pid()] if pg else [])
                for n in counts:
                    r = results[(backend, n)] = measure(server.uri, n, args.seconds, pids)
                    print(f"{backend:>10} {workers:>7} {n:>7} {r['epochs_s']:>9.1f} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} "
                          f"{r['errors']:>6} {r['lost']:>5} {r['server_cpu']:>10.0%} {r['client_cpu']:>10.0%}")
        finally:
            if pg:
                pg.remove()
    top = max(counts)
    if ("postgresql", top) in results:
        pg_r, sq_r = results[("postgresql", top)], results[("sqlite", top)]
        met = pg_r["errors"] == 0 and pg_r["lost"] == 0 and pg_r["epochs_s"] >= sq_r["epochs_s"]
        bound = max(pg_r["server_cpu"] + pg_r["client_cpu"], sq_r["server_cpu"] + sq_r["client_cpu"])
        print(f"\nat {top} clients: PostgreSQL / SQLite epochs/s = {pg_r['epochs_s'] / max(sq_r['epochs_s'], 1e-9):.2f}; "
              f"PostgreSQL errors {pg_r['errors']}, lost writes {pg_r['lost']} "
              f"(goal: 0, 0 and a ratio >= 1: {'met' if met else 'NOT met'})")
        if bound > 0.85:
            print(f"the machine's CPUs bound this run ({bound:.0%} of {os.cpu_count()} cores busy with the server and "
                  f"the clients): the backends' own limits lie beyond it")


if __name__ == "__main__":
    main()
