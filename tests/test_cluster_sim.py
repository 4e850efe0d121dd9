"""A real sweep on a simulated multi-node cluster (`ray.cluster_utils.Cluster`) with Ray's token
authentication on and MLflow's basic-auth app in front of the tracking server: three worker
nodes that declare one GPU each, a head that runs no trials, and shared storage given as a
URI. Trials take half a GPU each. Two faults are injected while it runs:
  - one trial's worker process is SIGKILLed mid-epoch;
  - the node running another trial is removed from the cluster mid-trial.
Every trial must still finish from its checkpoints, with one MLflow run each and no epoch
logged twice."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_runs import child_runs
from sweeps.bert_freezing import STUDY
from sweeps.runner import main

pytestmark = pytest.mark.slow  # whole sweeps: the full suite, not the fast tier

ARMS = ["full", "freeze_first_9", "keep_first_9"]
EPOCHS = 4
KILLED_ARM = "full"  # its worker is SIGKILLed; another arm's node is removed


@pytest.fixture(scope="module")
def cluster_secrets(tmp_path_factory):
    """The secrets `emosweep secrets` makes before `ray up`, in every process's environment as
    cluster.yaml's setup_commands put them on every node: Ray's token auth on, MLflow's
    credentials for the trials."""
    import os

    from ray._private.authentication_test_utils import reset_auth_token_state

    from workloads.core import secrets

    folder = tmp_path_factory.mktemp("secrets") / ".emosweep-secrets"
    secrets.make(folder)
    env = secrets.client_env(folder)
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_auth_token_state()
    yield folder
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_auth_token_state()


@pytest.fixture(scope="module")
def auth_tracking(cluster_secrets, tmp_path_factory):
    """The head's tracking server as cluster.yaml runs it: MLflow's basic-auth app."""
    from workloads.core.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), secrets=cluster_secrets) as server:
        yield server


@pytest.fixture(scope="module")
def sim_cluster(cluster_secrets):
    import ray
    from ray.cluster_utils import Cluster

    from workloads.core.ray_start import one_machine

    ray.shutdown()
    with one_machine():  # the simulated nodes listen on loopback, as a laptop's Ray does
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(3)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, workers
        ray.shutdown()
        cluster.shutdown()


JOIN = """
import sys
import ray
from workloads.core.ray_start import start_ray
start_ray(sys.argv[1])
print("joined, nodes:", len(ray.nodes()))
"""


def test_a_client_without_the_token_is_refused_and_mlflow_asks_for_a_password(sim_cluster, auth_tracking,
                                                                                cluster_secrets, tmp_path):
    import base64
    import os
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from workloads.core import secrets

    cluster, _ = sim_cluster
    root = Path(__file__).resolve().parents[1]
    stranger = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "MLFLOW_TRACKING_"))}
    stranger.update(HOME=str(tmp_path), PYTHONPATH=str(root))  # no ~/.ray/auth_token of ours either
    stranger["RAY_gcs_server_port_wait_time_s"] = "2"  # a refused client gives up after 2 tries, not 20

    def join(env):
        return subprocess.run([sys.executable, "-c", JOIN, cluster.address], env=env, capture_output=True,
                              text=True, timeout=120)

    for name, env in {"no token": stranger, "a wrong token": {**stranger, "RAY_AUTH_MODE": "token",
                                                             "RAY_AUTH_TOKEN": "0" * 64}}.items():
        out = join(env)
        assert out.returncode != 0 and "joined" not in out.stdout, f"a client with {name} joined:\n{out.stdout}"
        assert "InvalidAuthToken" in out.stderr, out.stderr[-2000:]  # refused for the token, not anything else
    ok = join({**stranger, **secrets.client_env(cluster_secrets)})  # the control: the token is what it lacked
    assert ok.returncode == 0 and "joined, nodes: 4" in ok.stdout, ok.stderr[-2000:]

    def status(user: str | None, password: str | None) -> int:
        request = urllib.request.Request(f"{auth_tracking.uri}/api/2.0/mlflow/experiments/search?max_results=1")
        if user is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    user = secrets.read(cluster_secrets / secrets.MLFLOW_USER)
    assert status(None, None) == 401 and status(user, "not-the-password") == 401
    assert status(user, secrets.read(cluster_secrets / secrets.MLFLOW_PASSWORD)) == 200


def _results(exp_dir: Path) -> dict:
    out = {}
    for f in exp_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[f.parent.name] = rows
    return out


def _remove_node_mid_trial(cluster, workers, exp_dir: Path, removed: dict, stop: threading.Event) -> None:
    """Wait until a trial has reported epoch 1 or 2 (and has epochs left), then remove its node."""
    by_id = {w.node_id: w for w in workers}
    while not stop.is_set():
        for trial, rows in _results(exp_dir).items():
            if not rows:
                continue
            last = rows[-1]
            if last["config"]["arm"] == KILLED_ARM:  # the other fault's target
                continue
            # after its first checkpointed epoch and before its last but one: a window of two epochs,
            # which this thread's 0.1-s polls do not miss when epochs are short
            if 1 <= last.get("epoch", 0) <= EPOCHS - 2 and last.get("node_id") in by_id and not last.get("done"):
                node = by_id[last["node_id"]]
                cluster.remove_node(node)
                removed.update(trial=trial, node_id=last["node_id"], at=time.time())
                return
        time.sleep(0.1)


def test_sweep_on_simulated_cluster_survives_killed_worker_and_lost_node(sim_cluster, auth_tracking, tmp_path,
                                                                        monkeypatch):
    """With the cluster's token auth on and the tracking server behind basic-auth, as
    cluster.yaml runs them: the trials join with the token and log with the credentials."""
    # The node remover below watches the trials' result.json in the shared storage, which Tune
    # syncs when it saves its state: on its own period (10 s or more) since saves are no longer
    # forced at every checkpoint, longer than this sweep's epochs. Every half second here.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.5")
    mlflow_server = auth_tracking
    cluster, workers = sim_cluster
    storage = tmp_path / "shared"
    storage.mkdir()
    exp_dir = storage / "sim"
    fault = {"epoch": 2, "batch": 1, "kind": "kill", "arm": KILLED_ARM, "marker": str(tmp_path / "killed")}
    removed: dict = {}
    stop = threading.Event()
    remover = threading.Thread(target=_remove_node_mid_trial, args=(cluster, workers, exp_dir, removed, stop),
                               daemon=True)
    remover.start()
    try:
        table = main(STUDY, [
            "--smoke", "--arms", ",".join(ARMS), "--cpus-per-trial", "1", "--gpus-per-trial", "0.5",
            "--max-failures", "3", "--set", f"epochs={EPOCHS}", "--set", "train_size=192",
            "--set", f"inject_fault={json.dumps(fault)}", "--set", "checkpoint_every_s=0",  # resumes from epoch 1
            "--storage-path", f"file://{storage}", "--tracking-uri", mlflow_server.uri,
            "--experiment", "test-sim-cluster", "--name", "sim", "--verbose", "0",
            "--results-out", str(tmp_path / "table.csv"),
        ])
    finally:
        stop.set()

    # Every trial finished.
    assert len(table) == 3 and (table["status"] == "OK").all()
    assert (table["epochs_done"] == EPOCHS).all()
    assert (table["mlflow_unlogged_epochs"] == 0).all()

    results = _results(exp_dir)
    # Placement: each trial saw the GPU id Ray gave it, and ran on the CPU (there is no CUDA here).
    for rows in results.values():
        for row in rows:
            assert row["gpu_ids"] != "" and row["cuda_visible_devices"] == row["gpu_ids"]
            assert row["device"] == "cpu"
    first_nodes = {rows[0]["node_id"] for rows in results.values()}
    assert len(first_nodes) >= 2, "trials spread across nodes"

    # Fault 1: a worker was SIGKILLed mid-epoch; fault 2: a node was removed mid-trial.
    assert Path(fault["marker"]).exists()
    assert removed, "no trial was caught mid-run on a node to remove"
    moved = results[removed["trial"]]
    assert moved[-1]["node_id"] != removed["node_id"], "rescheduled on a remaining node"
    assert any(r["resumed_from_epoch"] >= 1 for r in moved), "continued from its checkpoint"

    client = MlflowClient(mlflow_server.uri)
    children = child_runs(client, "test-sim-cluster")
    assert len(children) == 3 and len({c.data.tags["trial_id"] for c in children}) == 3, "no duplicated run"
    failures = {c.data.tags["trial_id"]: int(c.data.tags["num_failures"]) for c in children}
    killed = table.loc[table["arm"] == KILLED_ARM, "trial"].item()
    assert removed["trial"] != killed
    assert failures[killed] >= 1 and failures[removed["trial"]] >= 1
    epochs_lost = 0
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), "every epoch logged exactly once"
        # Tune's result log has a row per epoch run; a row beyond EPOCHS is an epoch run again.
        epochs_lost += len(results[child.data.tags["trial_id"]]) - EPOCHS
    assert epochs_lost <= sum(failures.values()), "a failure costs at most the epoch in progress"
    print(f"\nfaults: failures per trial {failures}; epochs re-run {epochs_lost}; runs duplicated 0; "
          f"metrics lost 0")
