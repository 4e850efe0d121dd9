"""A sweep under ASHA, the default scheduler of a search: trials the scheduler stops between
epochs still leave complete MLflow runs, the last ones of the sweep included (Tune stops
their actors at once when the sweep ends; the actor waits for the trial to close its run)."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from mlflow_runs import sweep_runs
from sweeps.fer_architectures import STUDY
from sweeps.runner import main

pytestmark = pytest.mark.slow  # a whole sweep: the full suite, not the fast tier

ARM = "basic_cnn"  # the smallest FER network: its configurations differ, so ASHA stops some


def test_stopped_trials_leave_complete_runs(ray_cluster, mlflow_server, tmp_path):
    table = main(STUDY, [
        "--smoke", "--arms", ARM, "--num-samples", "4", "--scheduler", "asha", "--set", "epochs=3",
        "--tracking-uri", mlflow_server.uri, "--experiment", "test-asha", "--name", "asha-sweep",
        "--storage-path", str(tmp_path / "ray"), "--verbose", "0",
    ])
    assert len(table) == 4 and table["status"].isin(["OK", "STOPPED"]).all()
    done = dict(zip(table["trial"], table["epochs_done"]))  # the trial's folder is named by its id
    assert min(done.values()) < 3 == max(done.values()), f"ASHA stopped no trial early: {done}"
    client = MlflowClient(mlflow_server.uri)
    _, children = sweep_runs(client, "test-asha")
    assert len(children) == 4
    for child in children:
        epochs = done[child.data.tags["trial_id"]]
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_acc"))
        assert steps == list(range(1, epochs + 1)), (child.data.tags["trial_id"], epochs, steps)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"confusion_matrix.png", "classification_report.txt", "test_metrics.json"} <= artifacts, (child.data.tags["trial_id"], epochs, artifacts)
