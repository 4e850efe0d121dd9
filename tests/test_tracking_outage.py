"""The MLflow server goes away mid-sweep. Trials keep training; what they could not log is
logged when the server is back, once; and if it never comes back, the loss is reported."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

from mlflow.tracking import MlflowClient

from mlflow_runs import child_runs
from sweeps.bert_freezing import STUDY
from sweeps.runner import main
from workloads.core.loop import _save_unlogged
from workloads.core.mlflow_server import MlflowServer, free_port
from workloads.core.tracking import TrackingContext, TrialRun

import pytest

pytestmark = pytest.mark.slow  # whole sweeps: the full suite, not the fast tier

EPOCHS = 12  # about a second each: training goes on through the 8-s outage


def _outage(server: MlflowServer, down_s: float, log: dict) -> None:
    """Once the first epoch is logged, SIGKILL the server's processes (mid-request, no
    goodbye), wait down_s seconds, then restart it on the same port and database."""
    client = MlflowClient(server.uri)
    while True:
        runs = child_runs(client, "test-outage")
        if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
            break
        time.sleep(0.2)
    os.killpg(server._proc.pid, signal.SIGKILL)
    server._proc.wait()
    server.stop()
    log["down"] = time.time()
    time.sleep(down_s)
    server.start().wait_ready()
    log["up"] = time.time()


@pytest.fixture
def backend():
    """The tracking server's database as a cluster head runs it: a real PostgreSQL server
    (Debian's package, which .ci/run installs); SQLite, the laptop's, where none is installed."""
    from workloads.core.postgres import PostgresServer, find_bindir

    if find_bindir() is None:
        print("no PostgreSQL server here (`apt-get install postgresql`): the outage runs on SQLite")
        yield None
        return
    with PostgresServer() as pg:
        yield pg.uri


def test_trials_train_through_an_outage_and_nothing_is_lost(ray_cluster, backend, tmp_path):
    """The server is SIGKILLed mid-sweep (mid-request, no goodbye) and comes back on the same
    PostgreSQL database 8 s later; every epoch is logged once."""
    server = MlflowServer(tmp_path / "mlflow", backend_store_uri=backend).start().wait_ready()
    log: dict = {}
    outage = threading.Thread(target=_outage, args=(server, 8.0, log), daemon=True)
    outage.start()
    try:
        table = main(STUDY, [
            "--smoke", "--arms", "full", "--set", f"epochs={EPOCHS}", "--set", "train_size=192",
            "--set", "tracking_every_s=0",  # each epoch synced as it ends: the outage starts after epoch 1
            "--storage-path", str(tmp_path / "ray"), "--tracking-uri", server.uri, "--experiment", "test-outage",
            "--name", "outage", "--verbose", "0",
        ])
        outage.join(timeout=60)
        assert "up" in log, "the outage never happened"
        assert table.loc[0, "status"] == "OK" and table.loc[0, "mlflow_unlogged_epochs"] == 0

        rows = [json.loads(x) for x in next((tmp_path / "ray" / "outage").glob("*/result.json")).read_text().splitlines()]
        assert rows[-1]["mlflow_sync_failures"] >= 1, "the trial did hit the outage"
        during = [r for r in rows if log["down"] <= r["timestamp"] <= log["up"]]
        assert during, "training went on while MLflow was down"

        client = MlflowClient(server.uri)
        (child,) = child_runs(client, "test-outage")
        assert child.info.status == "FINISHED"
        for key in ("train_loss", "val_loss", "val_acc"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)
        assert {"confusion_matrix.png", "test_metrics.json"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    finally:
        server.stop()


def test_an_unrecoverable_outage_is_reported_not_hidden(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    run = TrialRun(TrackingContext(dead, "0", "parent"), "t1", "name", {"lr": 1}, {}, str(tmp_path))
    history = [{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 0.9}]
    start = time.monotonic()
    assert run.sync(history) is False
    assert run.sync_until(history, patience_s=1.0, interval_s=0.5) is False
    assert time.monotonic() - start < 60, "fails fast instead of retrying for minutes"
    assert run.unlogged(history) == [1, 2] and run.failures >= 2
    assert "Connection" in run.last_error or "connect" in run.last_error.lower()

    _save_unlogged(run, history)  # outside a Tune trial it lands beside the trial's artifacts
    saved = json.loads((tmp_path / "mlflow_unlogged.json").read_text())
    assert [h["epoch"] for h in saved["epochs"]] == [1, 2] and saved["error"] == run.last_error


def test_shared_server_is_reused_and_stops_once_unused(tmp_path):
    """Sweeps, the demo and predict share one server per $EMOSWEEP_HOME: a second user gets the
    running one; a holder that died holds nothing; the keeper stops it once nobody holds it."""
    import json
    import urllib.request

    from workloads.core.mlflow_server import SharedServer

    first = SharedServer(tmp_path / "mlflow", idle_s=2).acquire().wait_ready()
    second = SharedServer(tmp_path / "mlflow", idle_s=2).acquire().wait_ready()
    assert not first.reused and second.reused and second.uri == first.uri
    info = json.loads((tmp_path / "mlflow" / "server.json").read_text())
    assert info["uri"] == first.uri
    (tmp_path / "mlflow" / "leases" / "4194999").touch()  # a pid no process has: its holder died
    time.sleep(4)  # longer than idle_s: our own lease still holds it
    urllib.request.urlopen(f"{first.uri}/health", timeout=5).read()
    assert not (tmp_path / "mlflow" / "leases" / "4194999").exists()  # the dead holder's lease is cleared
    first.release()
    deadline = time.time() + 60
    while first.running() is not None and time.time() < deadline:
        time.sleep(0.5)
    assert first.running() is None and not (tmp_path / "mlflow" / "server.json").exists()
    try:
        urllib.request.urlopen(f"{first.uri}/health", timeout=2)
        stopped = False
    except OSError:
        stopped = True
    assert stopped, "the server outlived its keeper"


def test_a_stop_returns_once_the_keeper_is_gone_so_the_next_user_starts_a_new_one(tmp_path):
    """`emosweep tracking --stop` then a sweep at once (bench/vs_optuna.py does so between its
    sides): the stop used to return at the signal, the sweep took the dying keeper's server as
    running, and lost it. Now the next acquire starts a server of its own that answers."""
    from workloads.core.mlflow_server import SharedServer, same_process

    first = SharedServer(tmp_path / "mlflow").acquire().wait_ready()
    first.release()
    info = first.running()
    assert SharedServer(tmp_path / "mlflow").stop()
    assert not same_process(info["keeper_pid"], info.get("keeper_start"))  # gone when stop returns
    second = SharedServer(tmp_path / "mlflow", port=first.port).acquire().wait_ready()
    try:
        assert not second.reused and second._keeper_pid != first._keeper_pid
    finally:
        second.release()
        SharedServer(tmp_path / "mlflow").stop()


@pytest.mark.slow
def test_a_sigkilled_keepers_server_is_adopted_and_stopped(tmp_path):
    """A keeper killed with SIGKILL leaves its server serving the store. The next user adopts
    that server (the same address, no second server on the SQLite file), `emosweep tracking`
    shows it, and stop() stops it."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from workloads.core.mlflow_server import SharedServer, same_process

    root = tmp_path / "mlflow"
    first = SharedServer(root, idle_s=600).acquire().wait_ready()
    info = json.loads((root / "server.json").read_text())
    deadline = time.time() + 30
    while "server_pid" not in info and time.time() < deadline:  # the keeper records its server
        time.sleep(0.2)
        info = json.loads((root / "server.json").read_text())
    os.kill(info["keeper_pid"], signal.SIGKILL)
    first.release()
    time.sleep(1)
    urllib.request.urlopen(f"{first.uri}/health", timeout=5).read()  # the orphan serves on
    orphan = first.running()
    assert orphan is not None and orphan["orphan"]

    env = {**os.environ, "EMOSWEEP_HOME": str(tmp_path)}
    shown = subprocess.run([sys.executable, "-m", "sweeps.cli", "tracking"], env=env, capture_output=True, text=True)
    assert "without its keeper" in shown.stdout and first.uri in shown.stdout

    second = SharedServer(root, idle_s=600).acquire().wait_ready()
    assert second.adopted and second.uri == first.uri
    adopted = json.loads((root / "server.json").read_text())
    assert adopted["server_pid"] == info["server_pid"] and adopted["keeper_pid"] != info["keeper_pid"]
    assert second.running() is not None and not second.running().get("orphan")
    second.release()

    stopped = subprocess.run([sys.executable, "-m", "sweeps.cli", "tracking", "--stop"], env=env,
                             capture_output=True, text=True)
    assert "stopped the MLflow server" in stopped.stdout, stopped.stderr
    deadline = time.time() + 30
    while same_process(info["server_pid"], info["server_start"]) and time.time() < deadline:
        time.sleep(0.2)
    assert not same_process(info["server_pid"], info["server_start"]), "the adopted server outlived --stop"


def test_stop_never_signals_a_process_that_reused_the_servers_pid(tmp_path):
    """server.json names a pid that now belongs to another process (same pid, another start
    time): nothing is running, and stop() signals nobody."""
    import json
    import subprocess

    from workloads.core.mlflow_server import SharedServer, process_start

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        root = tmp_path / "mlflow"
        root.mkdir()
        start = int(process_start(stranger.pid)) - 1  # the pid's earlier owner
        (root / "server.json").write_text(json.dumps({
            "uri": "http://127.0.0.1:9", "port": 9, "keeper_pid": stranger.pid, "keeper_start": str(start),
            "server_pid": stranger.pid, "server_start": str(start)}))
        server = SharedServer(root)
        assert server.running() is None
        assert server.stop() is False
        time.sleep(0.5)
        assert stranger.poll() is None, "a stranger that reused the pid was signalled"
    finally:
        stranger.kill()
        stranger.wait()
