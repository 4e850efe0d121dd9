"""A trial can run data-parallel on Ray Train (DDP, gloo on CPU) inside the sweep, and it
takes the same optimisation steps as a single-process trial: per-epoch metrics agree."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from mlflow_runs import child_runs
from sweeps.bert_freezing import STUDY
from sweeps.runner import main

import pytest

pytestmark = pytest.mark.slow  # whole sweeps: the full suite, not the fast tier

COMMON = ["--smoke", "--arms", "full", "--scheduler", "fifo", "--cpus-per-trial", "1", "--verbose", "0",
          "--set", "epochs=2", "--set", "dropout=0.0", "--set", "lr=0.001", "--set", "batch_size=16"]
KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc")


def _curves(client, experiment: str) -> tuple[dict, dict]:
    (child,) = child_runs(client, experiment)
    curves = {k: [m.value for m in sorted(client.get_metric_history(child.info.run_id, k), key=lambda m: m.step)]
              for k in KEYS}
    return curves, child.data.params


def test_two_gloo_workers_match_one(ray_cluster, mlflow_server, tmp_path):
    for workers in (2, 1):
        table = main(STUDY, [*COMMON, "--workers-per-trial", str(workers), "--tracking-uri", mlflow_server.uri,
                             "--experiment", f"test-dp-{workers}", "--storage-path", str(tmp_path / f"ray{workers}"),
                             "--name", f"dp{workers}"])
        assert table.loc[0, "status"] == "OK" and table.loc[0, "epochs_done"] == 2
    client = MlflowClient(mlflow_server.uri)
    two, params2 = _curves(client, "test-dp-2")
    one, params1 = _curves(client, "test-dp-1")
    assert params2["world_size"] == "2" and params1["world_size"] == "1"
    assert len(two["train_loss"]) == len(one["train_loss"]) == 2
    assert two["train_loss"][0] != two["train_loss"][1], "the model trained"
    worst = 0.0
    for key in KEYS:
        for a, b in zip(two[key], one[key]):
            assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), (key, two[key], one[key])
            worst = max(worst, abs(a - b))
    print(f"\n2 workers vs 1: train_loss {two['train_loss']} vs {one['train_loss']}; largest gap {worst:.2e}")
