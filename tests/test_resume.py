"""An interrupted sweep resumes: finished trials are not re-run and no MLflow run or epoch
is duplicated. The driver is a real subprocess joined to the test's Ray cluster, stopped
after its first trial finished, killed outright (SIGKILL, no chance to save anything)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_runs import child_runs, sweep_runs

pytestmark = pytest.mark.slow  # whole sweeps: the full suite, not the fast tier

ROOT = Path(__file__).resolve().parents[1]
ARMS = "full,prune_heads_50"


def _driver(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "sweeps" / "bert_freezing.py"), *args],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())


# SIGKILL only: the driver gets no chance to save anything, the harder case. (Ctrl-C, where Tune
# saves its state first, goes through the same Tuner.restore and MLflow reattachment; its run
# was dropped to keep the suite within its time budget.)
@pytest.mark.parametrize("sig", [signal.SIGKILL], ids=["sigkill"])
def test_interrupted_sweep_resumes_without_rerunning_or_duplicating(ray_cluster, mlflow_server, tmp_path, sig):
    experiment = f"test-resume-{sig.name.lower()}"
    client = MlflowClient(mlflow_server.uri)
    common = ["--address", ray_cluster, "--tracking-uri", mlflow_server.uri, "--storage-path", str(tmp_path),
              "--verbose", "0"]
    log = tmp_path / "driver.log"
    first = _driver(["--smoke", "--arms", ARMS, "--max-concurrent", "1", "--experiment", experiment,
                     "--name", "resume-me", "--set", "epochs=2", *common], log)

    deadline = time.monotonic() + 240
    finished = []
    while time.monotonic() < deadline and first.poll() is None:
        finished = [r for r in child_runs(client, experiment) if r.info.status == "FINISHED"]
        if finished:
            break
        time.sleep(0.5)
    assert finished, f"no trial finished before the deadline:\n{log.read_text()[-3000:]}"
    first.send_signal(sig)
    assert first.wait(timeout=120) is not None

    done_before = {r.data.tags["trial_id"]: r for r in child_runs(client, experiment) if r.info.status == "FINISHED"}
    assert len(done_before) == 1, "the interruption must leave an unfinished trial"
    exp_dir = tmp_path / "resume-me"

    second = _driver(["--resume", "resume-me", *common], log)
    assert second.wait(timeout=400) == 0, log.read_text()[-4000:]

    parents, children = sweep_runs(client, experiment)
    assert len(children) == 2, "one MLflow run per trial, none duplicated"
    assert len({c.data.tags["trial_id"] for c in children}) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert sorted(steps) == [1, 2], (child.info.run_name, steps)
    for trial_id, run_before in done_before.items():  # not re-run: MLflow got no epoch, its run was not reopened
        rows = [json.loads(r) for r in (exp_dir / trial_id / "result.json").read_text().splitlines()]
        # Tune saves its state on its own period, not at every checkpoint (KeepLatestCheckpoint): a
        # trial that finished after its last save is restored from its own finished checkpoint and
        # reports its last result once more, training nothing
        assert [r["epoch"] for r in rows] in ([1, 2], [1, 2, 2]), rows
        if len(rows) == 3:
            assert rows[2]["resumed_from_epoch"] == 2 and rows[2]["val_acc"] == rows[1]["val_acc"]
            assert rows[2].get("checkpoint_dir_name") is None
        after = client.get_run(run_before.info.run_id)
        assert after.info.end_time == run_before.info.end_time
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    table = (exp_dir / "results.csv").read_text().splitlines()
    assert len(table) == 3  # header + 2 trials
    state = json.loads((exp_dir / "emosweep.json").read_text())
    assert state["parent_run_id"] == parents[0].info.run_id
    import optuna  # each arm's Optuna study is intact: its one configuration told once, nothing queued again

    TS = optuna.trial.TrialState
    for arm in ARMS.split(","):
        study = optuna.load_study(study_name=f"resume-me/{arm}", storage=state["optuna_storage"])
        states = [t.state for t in study.trials]
        assert states.count(TS.COMPLETE) == 1 and not {TS.RUNNING, TS.WAITING} & set(states), (arm, states)


def test_a_trial_that_tune_forgot_takes_over_its_places_run(mlflow_server):
    """A driver killed after a trial started but before Tune saved it: the resumed sweep runs that
    place (configuration, fold, seed) again under a new trial id, which takes over the unfinished
    run instead of adding a second one. A finished run, or another place's, is never taken."""
    from workloads.core.tracking import TrackingContext, TrialRun, ensure_experiment

    client = MlflowClient(mlflow_server.uri)
    exp = ensure_experiment(client, "test-orphan-run")
    parent = client.create_run(exp).info.run_id
    ctx = TrackingContext(mlflow_server.uri, exp, parent, resumed=True)
    place = {"config_id": "full/c0", "fold": 0, "seed": 7}
    history = [{"epoch": 1, "val_loss": 1.0}]

    killed = TrialRun(ctx, "aaaa0001", "full", place, {}, "/tmp")
    assert killed.sync(history)  # epoch 1 logged, then the driver died: the run stays RUNNING
    elsewhere = TrialRun(ctx, "aaaa0002", "full", {**place, "fold": 1}, {}, "/tmp")
    assert elsewhere.sync(history)

    resumed = TrialRun(ctx, "bbbb0001", "full", place, {}, "/tmp")
    assert resumed.sync(history + [{"epoch": 2, "val_loss": 0.9}])
    assert resumed.run_id == killed.run_id and resumed.run_id != elsewhere.run_id
    assert client.get_run(resumed.run_id).data.tags["trial_id"] == "bbbb0001"
    assert sorted(m.step for m in client.get_metric_history(resumed.run_id, "val_loss")) == [1, 2]  # none twice

    client.set_terminated(resumed.run_id, "FINISHED")
    again = TrialRun(ctx, "cccc0001", "full", place, {}, "/tmp")
    assert again.sync(history) and again.run_id not in (resumed.run_id, elsewhere.run_id)


def test_a_value_in_on_change_is_logged_only_where_it_changes(mlflow_server):
    """Counts and the best epoch's scores are logged at the epochs they change, within one
    request as across requests, and the curves at every epoch."""
    from workloads.core.tracking import TrackingContext, TrialRun, ensure_experiment

    client = MlflowClient(mlflow_server.uri)
    exp = ensure_experiment(client, "test-on-change")
    ctx = TrackingContext(mlflow_server.uri, exp, client.create_run(exp).info.run_id)
    run = TrialRun(ctx, "dddd0001", "probe", {"lr": 1e-3}, {}, "/tmp")
    run.on_change.update({"n_train", "best_val_acc"})
    best = [0.5, 0.5, 0.7, 0.7, 0.7, 0.9]
    history = [{"epoch": e + 1, "val_loss": 1.0 / (e + 1), "n_train": 96, "best_val_acc": b} for e, b in enumerate(best)]
    assert run.sync(history[:2])  # a background pass, then the closing one with the rest
    assert run.sync(history)

    def steps(key):
        return sorted(m.step for m in client.get_metric_history(run.run_id, key))
    assert steps("val_loss") == [1, 2, 3, 4, 5, 6]
    assert steps("n_train") == [1]
    assert steps("best_val_acc") == [1, 3, 6]
    assert client.get_run(run.run_id).data.metrics["best_val_acc"] == 0.9
