import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_emosweep_studies_lists_the_runnable_studies():
    out = subprocess.run(["emosweep", "studies"], capture_output=True, text=True, check=True).stdout
    assert "bert_freezing" in out and "bert_head_pruning" in out
    assert "python sweeps/bert_freezing.py" in out


def test_unknown_study_is_a_clear_error(capsys):
    from sweeps.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "nope"])
    assert exit_.value.code == 2 and "unknown study 'nope'" in capsys.readouterr().err


def test_study_script_shows_the_common_flags():
    out = subprocess.run([sys.executable, str(ROOT / "sweeps" / "bert_freezing.py"), "--help"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    for flag in ("--smoke", "--data-dir", "--model", "--num-samples", "--max-concurrent", "--gpus-per-trial",
                 "--address", "--storage-path", "--tracking-uri", "--experiment", "--resume", "--results-out",
                 "--seed"):
        assert flag in out


def test_unknown_arm_is_rejected_before_anything_starts(tmp_path, capsys):
    """Before Ray or MLflow start: nothing listens on port 9, and the run ends in an instant."""
    from sweeps.bert_freezing import STUDY
    from sweeps.runner import main

    with pytest.raises(SystemExit) as refused:
        main(STUDY, ["--arms", "full,bogus", "--storage-path", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"])
    assert refused.value.code == 2 and "unknown arm(s) ['bogus']" in capsys.readouterr().err


def test_emosweep_ui_finds_a_sweep_among_more_runs_than_one_page(tmp_path, capsys):
    """A sweep of 1,024 trials: `emosweep ui` looked for its parent among the latest 500 runs
    with a study tag, all of them trials, and said there was no such sweep. The parent is now
    found by its own tag or name, and an older, untagged sweep by following the latest run's
    parents up."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    from sweeps.cli import sweep_view
    from workloads.core.tracking import TAG_PARENT, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a store of its own: the shared server holds other sweeps
    client = MlflowClient(uri)
    ctx = start_parent_run(uri, "many-trials", "big-sweep", {"seed": 0}, {"study": "s"})
    for i in range(510):
        run = client.create_run(ctx.experiment_id, run_name=f"trial {i}")
        client.log_batch(run.info.run_id, tags=[RunTag("study", "s"), RunTag(TAG_PARENT, ctx.parent_run_id)])
    assert sweep_view(client, "big-sweep")[0] == "big-sweep"
    assert sweep_view(client, None)[0] == "big-sweep"
    assert sweep_view(client, ctx.parent_run_id)[0] == "big-sweep"
    old = client.create_run(ctx.experiment_id, run_name="old-sweep", tags={"study": "s"})  # no row tag
    child = client.create_run(ctx.experiment_id, run_name="its trial")
    client.log_batch(child.info.run_id, tags=[RunTag("study", "s"), RunTag(TAG_PARENT, old.info.run_id)])
    client.delete_run(ctx.parent_run_id)  # the tagged one gone: the latest is the old sweep
    assert sweep_view(client, None)[0] == "old-sweep"
    with pytest.raises(Exception, match="no sweep named 'nothing'"):
        sweep_view(client, "nothing")
    # a store is not a server: `emosweep ui` says how to open its UI, not an address built on a file
    from sweeps.cli import main as cli

    assert cli(["ui", "old-sweep", "--tracking-uri", uri, "--print-only"]) == 0
    said = capsys.readouterr().out
    assert f"mlflow ui --backend-store-uri {uri}" in said and "#/experiments/" in said and "sqlite:///" not in \
        said.split("then, in the address it prints: ")[1]


def test_emosweep_report_finds_the_latest_page_and_serves_it_on_loopback(tmp_path):
    """`emosweep report` opens the latest sweep's results.html (or one named), served on
    127.0.0.1 until Ctrl-C; --file prints its path; an unknown sweep is one line and exit 2."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    env = {**os.environ, "EMOSWEEP_HOME": str(tmp_path)}
    for i, name in enumerate(("older", "newer")):
        folder = tmp_path / ("ray" if i else "local") / name
        folder.mkdir(parents=True)
        (folder / "results.html").write_text(f"<html><body>{name}</body></html>")
        os.utime(folder / "results.html", (time.time() - 100 + 50 * i,) * 2)
    run = [sys.executable, "-m", "sweeps.cli", "report"]
    said = subprocess.run(run + ["--file"], env=env, capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and said.stdout.strip() == str(tmp_path / "ray" / "newer" / "results.html")
    said = subprocess.run(run + ["older", "--file"], env=env, capture_output=True, text=True, timeout=60)
    assert said.stdout.strip() == str(tmp_path / "local" / "older" / "results.html")
    said = subprocess.run(run + ["nothing"], env=env, capture_output=True, text=True, timeout=60)
    assert said.returncode == 2 and said.stderr.count("\n") == 1 and "nothing: no results.html" in said.stderr
    server = subprocess.Popen(run + ["--print-only"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split(": ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/results.html")
        assert b"newer" in urllib.request.urlopen(url, timeout=10).read()
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(10) == 0
