"""A real sweep: Ray Tune + Optuna + the MLflow server, on a tiny BERT and FarsTail.

One sweep, three arms × two trials, with a fault planted so that one trial crashes once
mid-epoch and must be retried from its last checkpoint."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from mlflow_runs import sweep_runs
from sweeps.bert_freezing import STUDY
from sweeps.runner import main

pytestmark = pytest.mark.slow  # whole sweeps: the full suite, not the fast tier

ARMS = ["full", "freeze_first_9", "prune_heads_50"]


@pytest.fixture(scope="module")
def sweep(ray_cluster, mlflow_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    fault = {"epoch": 2, "batch": 1, "marker": str(tmp / "fault-fired")}
    table = main(STUDY, [
        "--smoke", "--arms", ",".join(ARMS), "--num-samples", "2", "--scheduler", "fifo",
        "--tracking-uri", mlflow_server.uri, "--experiment", "test-sweep", "--name", "smoke-sweep",
        "--storage-path", str(tmp / "ray"), "--results-out", str(tmp / "table.csv"),
        "--set", f"inject_fault={json.dumps(fault)}", "--set", "checkpoint_every_s=0",  # resumes from epoch 1
        "--verbose", "0",
    ])
    client = MlflowClient(mlflow_server.uri)
    parent, children = sweep_runs(client, "test-sweep")
    return {"table": table, "client": client, "parent": parent, "children": children, "tmp": tmp, "fault": fault}


def test_results_table_has_every_trial(sweep):
    table = sweep["table"]
    assert len(table) == 6
    assert table.groupby("arm").size().to_dict() == {a: 2 for a in ARMS}
    assert (table["status"] == "OK").all()
    assert table["test_acc"].between(0, 1).all() and table["test_macro_f1"].between(0, 1).all()
    assert (table["epochs_done"] == table["epochs"]).all()
    full = table[table["arm"] == "full"]
    frozen = table[table["arm"] == "freeze_first_9"]
    assert (full["trainable_params"] == full["total_params"]).all()
    assert (frozen["trainable_params"] < frozen["total_params"]).all()
    assert (frozen["layers_frozen"] == 3).all()  # 9 of 12 scaled to the tiny model's 4 layers
    assert (table.loc[table["arm"] == "prune_heads_50", "heads_per_layer_after"] == 2).all()
    assert (sweep["tmp"] / "table.csv").exists() and (sweep["tmp"] / "table.md").exists()
    assert "| arm" in (sweep["tmp"] / "table.md").read_text()


def test_each_arm_is_reported_for_the_configuration_chosen_on_validation(sweep):
    import pandas as pd

    arms = pd.read_csv(sweep["tmp"] / "table.arms.csv").set_index("arm")
    table = sweep["table"]
    for arm in ARMS:
        mine = table[table["arm"] == arm]
        best = mine.loc[mine["best_val_acc"].idxmax()]
        assert arms.loc[arm, "test_acc_mean"] == pytest.approx(best["test_acc"])
        assert arms.loc[arm, "n_configs"] == 2 and arms.loc[arm, "n_runs"] == 1
    assert arms.loc["full", "verdict"] == "reference"  # no floor: the report's arm, S3's first


def test_first_trial_of_each_arm_reproduces_defaults_and_optuna_searches_the_rest(sweep):
    table = sweep["table"]
    for arm in ARMS:
        lrs = set(table.loc[table["arm"] == arm, "lr"])
        assert STUDY.smoke["lr"] in lrs  # the reproduction config
        others = lrs - {STUDY.smoke["lr"]}
        assert len(others) == 1 and 1e-5 <= others.pop() <= 1e-4  # sampled from the searched space


def test_parent_run_holds_the_sweep(sweep):
    client = sweep["client"]
    (parent,) = sweep["parent"]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "smoke-sweep"
    assert parent.data.tags["study"] == "bert_freezing" and parent.data.tags["random_init"] == "true"
    assert parent.data.params["seed"] == "42" and "optuna_seed.full" in parent.data.params
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"table.csv", "table.md", "table.arms.csv", "table.arms.md", "table.arms.png",
            "dataset_report.md"} <= artifacts
    report = client.download_artifacts(parent.info.run_id, "dataset_report.md", str(sweep["tmp"]))
    text = open(report).read()
    assert "| train | 96 | 32 | 32 | 32 |" in text and "| val | 48 |" in text  # class distribution
    assert "tokens (median / p95)" in text


def test_one_child_run_per_trial_with_params_metrics_and_artifacts(sweep):
    client, children = sweep["client"], sweep["children"]
    (parent,) = sweep["parent"]
    assert len(children) == 6
    assert len({c.data.tags["trial_id"] for c in children}) == 6
    # each trial reported its run's id (the driver closed it by that id, not by a search); the
    # one that crashed may have done so before its run was attached: the driver searched for it
    reported = set(sweep["table"]["mlflow_run_id"].dropna())
    assert reported <= {c.info.run_id for c in children} and len(reported) >= 5
    names = {c.info.run_name for c in children}
    assert any(n.startswith(f"freeze_first_9 lr={STUDY.smoke['lr']:.0e}") for n in names)
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert child.info.status == "FINISHED"
        holder = client.get_run(tags["mlflow.parentRunId"])  # the run of its (arm, configuration)
        assert holder.data.tags["emosweep_row"] == "arm" and holder.data.tags["arm"] == tags["arm"]
        assert holder.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["arm"] in ARMS and tags["model_id"] == "tiny-random-bert" and tags["random_init"] == "true"
        assert tags["dataset_fingerprint"].startswith("c2c94a6e31de:96-48-48")
        assert {"lr", "batch_size", "strategy", "seed", "trainable_params", "total_params"} <= set(params)
        epochs = int(params["epochs"])
        for key in ("train_loss", "val_loss", "val_acc", "val_macro_f1"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)  # every epoch, once
        if tags["num_failures"] == "0":  # a constant, once, where it was first seen (a retry logs it again)
            assert [m.step for m in client.get_metric_history(child.info.run_id, "trainable_params")] == [1]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"confusion_matrix.png", "classification_report.txt", "test_metrics.json"} <= artifacts


def test_crashed_trial_is_retried_from_its_checkpoint(sweep):
    assert (sweep["tmp"] / "fault-fired").exists()
    client = sweep["client"]
    failed_once = [c for c in sweep["children"] if c.data.tags.get("num_failures") == "1"]
    assert len(failed_once) == 1, "exactly one trial crashed once"
    (run,) = failed_once
    resumed = client.get_metric_history(run.info.run_id, "resumed_from_epoch")
    assert {m.step: m.value for m in resumed}[2] == 1  # epoch 2 ran after restoring epoch 1's checkpoint
    assert all(c.data.tags.get("num_failures") == "0" for c in sweep["children"] if c is not run)


def test_a_finished_trials_checkpoint_keeps_its_progress_not_its_weights(sweep):
    """1,024 trials of the smallest MLP kept 50 MB each (model + Adam's moments) and filled the
    disk: a finished trial never resumes, so its kept checkpoint is progress alone (the crashed
    trial's retry still restored epoch 1's full checkpoint, tested above)."""
    checkpoints = sorted((sweep["tmp"] / "ray" / "smoke-sweep").glob("*/checkpoint_*"))
    assert len(checkpoints) == 6  # one kept per trial
    for checkpoint in checkpoints:
        assert not (checkpoint / "weights.pt").exists(), checkpoint
        progress = json.loads((checkpoint / "progress.json").read_text())
        assert progress["finished"] and progress["epoch"] == progress["history"][-1]["epoch"]


def test_tunes_saved_state_keeps_running_statistics_for_the_sweeps_metric_alone(sweep):
    """Tune's saved experiment state holds per trial running statistics of every number
    reported: the sweep keeps them for its metric only, so a save costs a few KB a trial, not
    tens. And Tune saves it on its own period, not at every trial checkpoint."""
    timings = sweep["table"].attrs["timings"]
    assert 1 <= timings["state_saves"] < timings["trial_checkpoints"]  # it was one save per checkpoint
    (state_file,) = sorted((sweep["tmp"] / "ray" / "smoke-sweep").glob("experiment_state-*.json"))[-1:]
    trials = json.loads(state_file.read_text())["trial_data"]
    assert len(trials) == 6
    for _, runtime in trials:
        runtime = json.loads(runtime)
        assert set(runtime["metric_analysis"]) == set(runtime["metric_n_steps"]) == {STUDY.metric}
        assert "test_acc" in runtime["last_result"]  # what the results table reads is all there


def test_each_arm_run_holds_its_configurations_params_and_summed_confusion_matrix(sweep, mlflow_server):
    """The MLflow arms view shows which knobs an arm was chosen with: every (arm, configuration)
    run logs them, the selected ones' confusion matrix summed over its runs, and the view lists
    the knobs that differ as columns."""
    from mlflow_runs import arm_runs

    client = sweep["client"]
    runs = arm_runs(client, "test-sweep")
    assert len(runs) == 6  # 3 arms × 2 configurations
    table = sweep["table"]
    for run in runs:
        mine = table[table["config_id"] == run.data.tags["config_id"]]
        assert float(run.data.params["lr"]) == pytest.approx(float(mine["lr"].iloc[0]), rel=1e-2)  # as the terminal rounds
        assert run.data.params["strategy"] == mine["strategy"].iloc[0]
        matrix = json.loads(open(client.download_artifacts(run.info.run_id, "confusion_matrix.json",
                                                           str(sweep["tmp"]))).read())
        assert matrix["classes"] == ["entailment", "contradiction", "neutral"]  # the model's class order
        assert sum(map(sum, matrix["matrix"])) == 48 * len(mine)  # every test item of every run, once
    experiment = client.get_experiment_by_name("test-sweep")
    (view,) = [json.loads(v) for k, v in experiment.tags.items() if k.startswith("mlflow.sharedViewState.")
               and "selected" in v]
    assert "params.`lr`" in view["selectedColumns"]  # the knob the arms were chosen by differs between them


def test_each_arms_optuna_study_is_kept_and_optuna_dashboard_lists_them(sweep):
    """Each arm's Optuna study lives in the sweep's folder (sqlite), told each configuration's
    mean validation metric; `emosweep ui --optuna` serves optuna-dashboard on it and a real
    browser finds the studies."""
    import subprocess
    import sys

    import optuna
    from browser import chromium, screenshot, wait_for

    folder = sweep["tmp"] / "ray" / "smoke-sweep"
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(f"sqlite:///{folder / 'optuna.db'}")}
    assert set(summaries) == {f"smoke-sweep/{arm}" for arm in ARMS}
    table = sweep["table"]
    for arm in ARMS:
        study = optuna.load_study(study_name=f"smoke-sweep/{arm}", storage=f"sqlite:///{folder / 'optuna.db'}")
        values = sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
        assert values == pytest.approx(sorted(table.loc[table["arm"] == arm, "best_val_acc"]))
        assert study.trials[0].params["lr"] == pytest.approx(STUDY.smoke["lr"])  # the reproduction point first
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "ui", "--optuna", str(folder), "--print-only"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "Optuna's dashboard at http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split()[0]
        driver = chromium()
        try:
            driver.get(url)
            wait_for(lambda: all(f"smoke-sweep/{arm}" in driver.page_source for arm in ARMS), timeout=60,
                     what="the dashboard's study list")
            screenshot(driver, "optuna-dashboard")
        finally:
            driver.quit()
    finally:
        proc.terminate()
        proc.wait(10)


def test_report_page_in_a_real_browser(sweep, mlflow_server):
    """results.html beside the tables: one row per arm, pictures embedded (it works offline and
    when mailed), links into MLflow; and the terminal's 'too few configurations' instead of
    importances from two points."""
    from browser import chromium, screenshot, wait_for

    page = sweep["tmp"] / "table.html"
    html = page.read_text()
    assert "too few configurations to rank its knobs (2 of the 16" in html
    assert 'src="http' not in html and "<script" not in html  # nothing to fetch: every picture is in the page
    driver = chromium(1300, 2400)
    try:
        driver.get(page.as_uri())
        rows = wait_for(lambda: driver.find_elements("css selector", "#arm-table tbody tr"), what="the arm table")
        assert [r.get_attribute("data-arm") for r in rows] == ARMS
        assert rows[0].text.startswith("full")
        plot = driver.find_element("id", "arms-plot")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 100
        curves = driver.find_elements("css selector", "#arm-details img")  # each arm's learning curves
        assert len(curves) == len(ARMS) and all(
            driver.execute_script("return arguments[0].naturalWidth", m) > 50 for m in curves)
        for arm in ARMS:  # its test confusion matrix, summed over its runs: every test item once
            cells = driver.find_elements("css selector", f"table.confusion[data-arm='{arm}'] td")
            assert len(cells) == 9 and sum(int(c.text) for c in cells) == 48
        links = [a.get_attribute("href") for a in driver.find_elements("css selector", "a.mlflow")]
        assert any(h.startswith(f"{mlflow_server.uri}/#/experiments/") and "/runs/" in h for h in links)
        screenshot(driver, "results-page")
    finally:
        driver.quit()
    parent = sweep["parent"][0]
    assert "table.html" in {a.path for a in sweep["client"].list_artifacts(parent.info.run_id)}


def test_tune_keeps_as_many_trials_ready_as_the_cluster_runs_at_once(ray_cluster, monkeypatch):
    """With a searcher of its own Tune keeps one trial pending, so trials shorter than a start
    ran one at a time (a 2-core sweep of 0.4-s trials used one actor). While a sweep runs, Tune
    keeps as many ready as the cluster runs at once; a limit the user set is left to Tune."""
    import os
    from types import SimpleNamespace

    import ray
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import SearchGenerator, Searcher

    from sweeps.runner import trials_kept_ready

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    search = SearchGenerator(Searcher())
    cpus = int(ray.cluster_resources()["CPU"])
    assert cpus >= 2 and _get_max_pending_trials(search) == 1  # Tune's own, with a searcher

    def ready(gpus=0.0, **opts):
        opts = SimpleNamespace(**{"max_concurrent": None, "cpus_per_trial": 1, "workers_per_trial": 1, **opts})
        with trials_kept_ready(opts, {}, gpus):
            return _get_max_pending_trials(search)

    assert ready() == cpus
    assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ  # only while the sweep runs
    assert ready(workers_per_trial=2) == cpus // 2  # a data-parallel trial's workers each take a CPU
    assert ready(gpus=1.0) == 1  # no GPU here: nothing runs at once, one kept ready as Tune would
    assert ready(max_concurrent=3) == 1  # Tune reads --max-concurrent from its own limiter (not wrapped here)
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "5")
    assert ready() == 5  # the user's value stands
