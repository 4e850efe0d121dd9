"""What a new user meets first: mistakes are one line and exit 2 before anything starts, --set
refuses typos, the quiet terminal holds only emosweep's lines, --local runs every study without
Ray, a sqlite tracking URI writes nothing into the current folder, and a laptop sweep listens
on loopback only."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hidden_imports import hiding

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["bert_freezing", "bert_head_pruning", "fer_architectures", "hubert_pooling", "meld_fusion",
           "blstm_attention", "audiomnist_mlp", "gtzan_cnn", "speaker_id"]


def _refused(study_name: str, argv: list[str], capsys, tmp_path) -> str:
    """Run a study in this process; it must stop with exit 2 and one line on stderr, before Ray
    or MLflow start (the tracking URI points at a port nothing listens on)."""
    from sweeps.runner import main

    study = importlib.import_module(f"sweeps.{study_name}").STUDY
    with pytest.raises(SystemExit) as stopped:
        where = [] if "--local" in argv else ["--storage-path", str(tmp_path)]  # --local refuses it
        main(study, [*argv, *where, "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_studies_list_is_complete():
    from sweeps.cli import discover_studies

    assert sorted(discover_studies()) == sorted(STUDIES)


@pytest.mark.parametrize("study_name", STUDIES)
def test_a_missing_data_dir_is_one_line_in_every_study(study_name, capsys, tmp_path):
    err = _refused(study_name, ["--data-dir", str(tmp_path / "nonexistent")], capsys, tmp_path)
    assert "--data-dir" in err and "nonexistent" in err and "no such file or folder" in err


def test_a_set_typo_names_the_valid_keys_and_the_nearest(capsys, tmp_path):
    err = _refused("hubert_pooling", ["--set", "learning_rate=1e-4"], capsys, tmp_path)
    assert "learning_rate" in err and "did you mean lr?" in err and "head_width" in err and "cuda_graphs" in err


@pytest.mark.parametrize("setting, expected", [
    ("lr=fast", "expected a number (the default is 0.0004)"),
    ("layer_frac=\"top\"", "expected a number"),
    ("epochs=2.5", "expected an integer"),
    ("speaker_norm=maybe", "expected a boolean (true/false, 1/0, yes/no or on/off, in any case)"),
    ("arms", "expected KEY=VALUE"),
    ("encode_precision=fp61", "precision 'fp61': choose from fp32, bf16, fp16"),
])
def test_a_set_value_of_the_wrong_type_is_refused(setting, expected, capsys, tmp_path):
    assert expected in _refused("hubert_pooling", ["--set", setting], capsys, tmp_path)


def test_set_takes_declared_engine_knobs_and_arm_knobs():
    from sweeps.hubert_pooling import STUDY
    from sweeps.study import ENGINE_KNOBS, parse_sets

    assert parse_sets(STUDY, ["cuda_graphs=false", "pooling=\"attention\"", "lr=1e-3"]) == {
        "cuda_graphs": False, "pooling": "attention", "lr": 1e-3}
    assert all(text for _, text in ENGINE_KNOBS.values())  # each declared with its one-line help


@pytest.mark.parametrize("study_name, argv, expected", [
    ("fer_architectures", ["--model", "e5-small"], "--model: fer_architectures does not use it"),
    ("speaker_id", ["--full-data"], "always uses all its data"),
    ("blstm_attention", ["--ravdess", "/nonexistent/ravdess"], "--ravdess /nonexistent/ravdess: no such file"),
    ("bert_freezing", ["--arms", "ful"], "did you mean 'full'?"),
    ("bert_freezing", ["--local", "--num-samples", "2"], "searching needs the Ray engine"),
    ("bert_freezing", ["--local", "--gpus-per-trial", "0.5"], "--gpus-per-trial: --local trains on this process"),
    ("bert_freezing", ["--local", "--max-failures", "0"], "--max-failures: --local runs each trial once"),
    ("bert_freezing", ["--max-seconds", "30"], "--max-seconds: bert_freezing does not use it"),  # decodes no media
    ("fer_architectures", ["--max-file-mb", "1"], "--max-file-mb: fer_architectures does not use it"),
    ("hubert_pooling", ["--search", "speaker_norm=true,false"], "(--num-samples 1) never varies it"),
    ("hubert_pooling", ["--search", "speaker_norm=true,false", "--set", "speaker_norm=false", "--num-samples", "2"],
     "--set speaker_norm pins it"),
    ("hubert_pooling", ["--search", "speaker_norm=true,maybe", "--num-samples", "2"], "expected a boolean"),
    ("hubert_pooling", ["--search", "speaker_norm=true", "--num-samples", "2"], "give two values or more"),
    ("hubert_pooling", ["--search", "speaker_nrom=true,false", "--num-samples", "2"], "did you mean speaker_norm?"),
    ("bert_freezing", ["--local", "--search", "lr=1e-5,3e-5"], "--search: --local searches nothing"),
    ("bert_freezing", ["--local", "--optuna-storage", "sqlite:///x.db"], "--optuna-storage: --local searches nothing"),
])
def test_flags_a_study_cannot_use_are_refused(study_name, argv, expected, capsys, tmp_path):
    assert expected in _refused(study_name, argv, capsys, tmp_path)


def test_a_user_error_from_the_script_has_no_traceback_and_verbose_shows_one(tmp_path):
    script = [sys.executable, str(ROOT / "sweeps" / "fer_architectures.py"), "--data-dir", str(tmp_path / "x.csv")]
    quiet = subprocess.run(script, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert quiet.returncode == 2 and quiet.stdout == ""
    assert quiet.stderr.strip() == f"fer_architectures: --data-dir {tmp_path / 'x.csv'}: no such file or folder"
    loud = subprocess.run(script + ["--verbose", "1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "InputNotFound" in loud.stderr


# ----------------------------------------------------------------------------- --local, with Ray hidden

HIDE = hiding({"ray", "optuna"}, r'''
import json, sys
import importlib
from sweeps.runner import main

out = {}
import pandas as pd
for name, arms in json.loads(sys.argv[1]).items():
    study = importlib.import_module("sweeps." + name).STUDY
    table = main(study, ["--smoke", "--local", "--arms", arms, "--tracking-uri", sys.argv[2],
                         "--results-out", f"{sys.argv[3]}/{name}.csv"])
    per_item = pd.read_parquet(f"{sys.argv[3]}/{name}.predictions.parquet").query("split == 'test'")
    recomputed = per_item.assign(right=per_item["label"] == per_item["pred"]).groupby("trial")["right"].mean()
    out[name] = {"arms": sorted(table["arm"]), "test_acc": [float(v) for v in table["test_acc"]],
                 "status": sorted(set(table["status"])),
                 "per_item_acc": [float(recomputed[t]) for t in table["trial"]],
                 "page": open(f"{sys.argv[3]}/{name}.html").read().count('<tr data-arm="')}
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
print(json.dumps(out))
''')

# each study's first arm and its floor or reference, where it has one
LOCAL_ARMS = {"bert_freezing": "full,freeze_first_9", "bert_head_pruning": "prune_0",
              "fer_architectures": "basic_cnn", "hubert_pooling": "masked_mean,probe",
              "meld_fusion": "late_concat,text_only", "blstm_attention": "ravdess,ravdess_floor",
              "audiomnist_mlp": "h1_relu_deltas,floor", "gtzan_cnn": "cnn,floor", "speaker_id": "sgd_mfcc,floor"}


@pytest.mark.slow
def test_local_runs_every_study_without_ray_and_sqlite_writes_nothing_here(tmp_path):
    """Each study's smoke through --local, in one process where Ray and Optuna cannot be
    imported; MLflow is a sqlite file, whose artifacts land beside it, never in the folder the
    command ran from. Every study writes results.predictions.parquet, whose test items give
    each trial's test accuracy exactly."""
    import json

    from mlflow.tracking import MlflowClient

    for study in STUDIES:
        module = importlib.import_module(f"sweeps.{study}")
        assert all(a in module.STUDY.arms for a in LOCAL_ARMS[study].split(","))
    here = tmp_path / "here"
    here.mkdir()
    db = tmp_path / "db" / "mlflow.db"
    db.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMOSWEEP_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", HIDE, json.dumps(LOCAL_ARMS), f"sqlite:///{db}", str(tmp_path)],
                         cwd=here, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result.pop("loaded") == []
    for study, arms in LOCAL_ARMS.items():
        got = result[study]
        assert got["arms"] == sorted(arms.split(",")) and got["status"] != ["ERROR"], (study, got)
        assert all(0 <= v <= 1 for v in got["test_acc"]), (study, got)
        # results.predictions.parquet: each trial's test items recompute its test accuracy exactly
        assert got["per_item_acc"] == got["test_acc"], (study, got)
        assert got["page"] == len(arms.split(",")), (study, got)  # its report page, a row per arm
    assert list(here.iterdir()) == []  # no ./mlruns, nothing at all
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("fer_architectures")
    assert experiment.artifact_location.startswith((db.parent / "mlflow-artifacts").as_uri())
    parents = client.search_runs([experiment.experiment_id], "tags.engine = 'local'")
    assert parents and any(r.data.tags.get("emosweep_row") == "arm" for r in parents)
    assert (db.parent / "mlflow-artifacts").is_dir()


# ----------------------------------------------------------------------------- the quiet terminal

OURS = re.compile(r"^(\[emosweep\] |\||# |> |fer2013 \(|  fer_image|0 malformed|Over the |model: |results: |MLflow: |"
                  r"  the arms|  the server|driver timings: |fer_architectures — |report page: |$)")


@pytest.mark.slow
def test_a_quiet_smoke_sweep_prints_only_emosweeps_lines_and_listens_on_loopback_only(mlflow_server, tmp_path):
    """The terminal of `python sweeps/fer_architectures.py --smoke`: no Ray, Ray Data, Tune,
    Optuna or MLflow log line, no Python warning, no object repr; the table fits 120 columns.
    While it runs, every socket its processes listen on (Ray's GCS, raylet, workers, agents and
    the driver; read from /proc) is on loopback."""
    from sockets import descendants, listeners

    env = {**os.environ, "COLUMNS": "120", "EMOSWEEP_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "sweeps" / "fer_architectures.py"), "--smoke",
                             "--arms", "basic_cnn,enhanced", "--tracking-uri", mlflow_server.uri,
                             "--storage-path", str(tmp_path / "ray"), "--experiment", "test-quiet"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = {}, time.time() + 600
    with ThreadPoolExecutor(1) as pool:
        output = pool.submit(proc.communicate)
        while proc.poll() is None and time.time() < deadline:
            ours = descendants(proc.pid)
            for sock in listeners():
                if sock["pid"] in ours:
                    seen[(sock["ip"], sock["port"])] = sock
            time.sleep(2.0)  # Ray's listeners live for the whole sweep; a scan of /proc costs CPU the sweep needs
        stdout, stderr = output.result(timeout=max(1, deadline - time.time()))
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert len(seen) >= 4, seen  # GCS, raylet (two), the driver, workers: the check saw them
    exposed = [f"{s['ip']}:{s['port']} {s['command'][:80]}" for s in seen.values() if not s["loopback"]]
    assert exposed == [], "listening beyond loopback:\n" + "\n".join(exposed)
    strangers = [line for line in text.splitlines() if not OURS.match(line)]
    assert strangers == [], "\n".join(strangers)
    assert " object at 0x" not in text and "choice of [64, 128, 256]" in text
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| arm "))
    table = [line for line in lines[start:] if line.startswith("|")]
    assert "test acc (95% CI)" in table[0] and len(table) == 4  # header, rule, two arms
    assert max(len(line) for line in table) <= 120 and any(line.startswith("| basic_cnn") for line in table)


def test_the_checker_would_catch_library_lines():
    for line in ("2026-11-29 16:20:40,001\tWARNING __init__.py:28 -- Progress bars disabled.",
                 "[I 2026-11-29 16:28:36,977] A new study created in memory with name: optuna",
                 "(TrainableWrapper pid=123) hello", "🏃 View run x at: http://..."):
        assert not OURS.match(line)


@pytest.mark.parametrize("spelling, value", [("False", False), ("false", False), ("0", False), ("no", False),
                                             ("OFF", False), ("True", True), ("1", True), ("Yes", True), ("on", True)])
def test_set_takes_a_boolean_as_people_type_it(spelling, value):
    from sweeps.bert_freezing import STUDY
    from sweeps.study import parse_sets

    assert parse_sets(STUDY, [f"trim_vocab={spelling}"]) == {"trim_vocab": value}


def test_a_boolean_that_is_none_is_refused_in_one_line_naming_the_spellings(capsys, tmp_path):
    err = _refused("bert_freezing", ["--set", "trim_vocab=maybe"], capsys, tmp_path)
    assert "--set trim_vocab=maybe: expected a boolean (true/false, 1/0, yes/no or on/off, in any case)" in err


def test_environment_switches_read_booleans_with_the_same_parser(monkeypatch):
    from workloads.core.config import env_flag

    for spelling, value in (("1", True), ("TRUE", True), ("yes", True), ("0", False), ("off", False), ("", False)):
        monkeypatch.setenv("EMOSWEEP_LOCAL", spelling)  # --local's switch (data/pipeline.without_ray reads it)
        assert env_flag("EMOSWEEP_LOCAL") is value
    monkeypatch.setenv("EMOSWEEP_LOCAL", "sometimes")
    with pytest.raises(ValueError, match="environment variable EMOSWEEP_LOCAL: 'sometimes' is not a boolean"):
        env_flag("EMOSWEEP_LOCAL")
