"""A study runs with PyTorch alone: `--local` trains S3's smoke with Ray, MLflow, Optuna,
matplotlib, PyAV, librosa and tabulate hidden, as on a bare GPU box (which has PyTorch,
transformers, pandas and scikit-learn). A subprocess, so the hiding is real and nothing leaks
in. On a GPU this trains S3 through its CUDA-graphed step."""
import json
import os
import subprocess
import sys
from pathlib import Path

from hidden_imports import hiding

ROOT = Path(__file__).resolve().parents[1]

HIDDEN = {"ray", "mlflow", "optuna", "matplotlib", "av", "librosa", "tabulate"}
SCRIPT = hiding(HIDDEN, r'''
import json
# every training module imports; then one study runs through its study file, --local
from workloads import audiomnist_mlp, bench_gpu, bert_nli, blstm_attention, fer, gtzan_cnn, meld_fusion, speech_pooling
from workloads.data import corpora, encoder_cache, farstail, pipeline, study_items
from workloads.models import encoders, fer_nets, fusion, pooling, shelf, speech, strategies, text, vocab_trim
from sweeps.bert_freezing import STUDY
from sweeps.runner import main

table = main(STUDY, ["--smoke", "--local", "--arms", "full,freeze_first_9", "--epochs", "2"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
print(json.dumps({"arms": list(table["arm"]), "test_acc": list(table["test_acc"]), "epochs": list(table["epochs_done"]),
                  "status": list(table["status"]), "loaded": loaded}))
''')


def test_a_study_runs_local_with_ray_mlflow_and_optuna_hidden(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "EMOSWEEP_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["arms"] == ["full", "freeze_first_9"] and result["status"] == ["OK", "OK"]
    assert result["epochs"] == [2, 2] and all(0 <= v <= 1 for v in result["test_acc"])
    assert "MLflow is not installed" in out.stdout and "test acc (95% CI)" in out.stdout
    # each trial kept its latest checkpoint in the local folder, which a new run would continue from
    progress = sorted((tmp_path / "home" / "local").glob("*/local_full_0_0/checkpoint/progress.json"))
    assert progress and json.loads(progress[0].read_text())["epoch"] == 2
