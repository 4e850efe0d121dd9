"""The training code runs with PyTorch alone: models, steps, loaders, the epoch loop, the
readers and the cache format import and train with Ray, MLflow, Optuna, matplotlib, PyAV
and librosa hidden, as on a bare GPU box (which has PyTorch, transformers and scikit-learn).
A subprocess, so the hiding is real and nothing leaks in. On a GPU this trains S3 through
its CUDA-graphed step."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import importlib.abc, json, sys
HIDDEN = {"ray", "mlflow", "optuna", "matplotlib", "av", "librosa"}

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        frame = sys._getframe(1)
        while frame is not None:  # a probe (importlib.util.find_spec, as accelerate's) is answered
            if frame.f_code.co_name == "find_spec" and "importlib.util" in frame.f_code.co_filename:
                return None  # as installed; only importing is refused
            frame = frame.f_back
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)

sys.meta_path.insert(0, Hide())
from workloads import audiomnist_mlp, bench_gpu, bert_nli, blstm_attention, fer, gtzan_cnn, meld_fusion, speech_pooling
from workloads.core.loop import LocalSession
from workloads.data import corpora, encoder_cache, farstail, pipeline, study_items
from workloads.models import encoders, fer_nets, fusion, pooling, shelf, speech, strategies, text, vocab_trim

farstail_items = farstail.read_farstail().items
path = encoders.make_tiny_bert(sys.argv[1] + "/tiny", list(farstail_items["text"].head(300)), layers=2,
                               hidden=32, heads=2, intermediate=64, seed=0)
config = {"model_path": path, "model_id": "tiny", "data_dir": None, "arm": "full", "strategy": "full", "seed": 0,
          "train_size": 24, "val_size": 12, "test_size": 12, "batch_size": 8, "max_length": 96, "epochs": 2,
          "lr": 1e-3, "warmup_ratio": 0.0, "weight_decay": 0.0}
session = LocalSession(checkpoint_dir=sys.argv[1] + "/ckpt", quiet=True)
bert_nli._train(config, None, session)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
print(json.dumps({"reports": session.reports, "loaded": loaded}))
'''


def test_training_code_runs_with_ray_and_mlflow_hidden(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    reports = result["reports"]
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all(0 <= r["test_acc"] <= 1 and r["train_loss"] > 0 for r in reports)
    # the local session kept the latest checkpoint, which a new session would continue from
    progress = json.loads((tmp_path / "ckpt" / "progress.json").read_text())
    assert progress["epoch"] == 2 and len(progress["history"]) == 2
