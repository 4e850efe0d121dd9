"""How many trials can one MLflow server (SQLite backend, the runner's default) keep up with?

N concurrent clients each log epochs of ~30 metrics (one log_batch per epoch, as a trial does)
to a real server on loopback for a fixed time. Prints epochs logged per second and the
latency of one epoch's batch, for 1, 4 and 16 clients measured in one run.

    python bench/tracking_throughput.py [--seconds 10]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from workloads.core.mlflow_server import MlflowServer

from smallest import parse  # noqa: E402  (bench/, beside this file)


def client_loop(uri: str, exp_id: str, stop: float, latencies: list) -> None:
    client = MlflowClient(uri)
    run_id = client.create_run(exp_id).info.run_id
    step = 0
    while time.monotonic() < stop:
        now = int(time.time() * 1000)
        batch = [Metric(f"m{i}", float(step + i), now, step) for i in range(30)]
        t = time.perf_counter()
        client.log_batch(run_id, metrics=batch)
        latencies.append(time.perf_counter() - t)
        step += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    args = parse(p, seconds=1.0)
    with MlflowServer(tempfile.mkdtemp(prefix="emosweep-mlflow-bench-")) as server:
        client = MlflowClient(server.uri)
        print(f"{'clients':>8} {'epochs/s':>10} {'metrics/s':>10} {'p50 ms':>8} {'p95 ms':>8}")
        for n in (1, 4, 16):
            exp_id = client.create_experiment(f"bench-{n}")
            latencies: list = []
            stop = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client_loop, args=(server.uri, exp_id, stop, latencies)) for _ in range(n)]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - start
            q = statistics.quantiles(latencies, n=20)
            print(f"{n:>8} {len(latencies) / elapsed:>10.1f} {30 * len(latencies) / elapsed:>10.0f} "
                  f"{1000 * statistics.median(latencies):>8.1f} {1000 * q[18]:>8.1f}")


if __name__ == "__main__":
    main()
