"""Safe by default (issue 22): a private $EMOSWEEP_HOME, no credentials on the terminal."""
from __future__ import annotations

import os
import stat


def test_emosweep_home_is_created_private(tmp_path, monkeypatch):
    from workloads.core.paths import emosweep_home

    monkeypatch.setenv("EMOSWEEP_HOME", str(tmp_path / "new" / "home"))
    os.umask(0o022)
    home = emosweep_home()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    monkeypatch.setenv("EMOSWEEP_HOME", str(existing))
    assert stat.S_IMODE(emosweep_home().stat().st_mode) == 0o755  # a folder its owner made keeps its mode


def test_credentials_in_a_tracking_uri_are_masked():
    from workloads.core.paths import mask_uri

    assert mask_uri("https://ana:s3cret@mlflow.lab:5000/#/x") == "https://ana:***@mlflow.lab:5000/#/x"
    assert mask_uri("https://tok3n@mlflow.lab") == "https://***@mlflow.lab"
    assert mask_uri("postgresql://u:p:q@db/mlflow") == "postgresql://u:***@db/mlflow"
    for plain in ("http://127.0.0.1:5000", "sqlite:////tmp/m.db", "http://h/a@b", None):
        assert mask_uri(plain) == plain


# ----------------------------------------------------------------------------- nothing from the store is executed

def _frame_model(seed: int = 0):
    import torch

    from workloads.models.blstm import AttentionBLSTM

    torch.manual_seed(seed)
    classes = ["anger", "joy", "neutral"]
    model = AttentionBLSTM(46, len(classes), hidden=8)
    spec = {"classes": classes, "mean": [0.0] * 46, "std": [1.0] * 46, "hidden": 8, "n_features": 46,
            "stage_params": {}, "arm": "planted"}
    return spec, model.state_dict(), classes


def _trial_run(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    from workloads.core.tracking import TrackingContext, TrialRun, ensure_experiment

    client = MlflowClient(uri)
    exp = ensure_experiment(client, "test-served-models")
    parent = client.create_run(exp, run_name="sweep").info.run_id
    run = TrialRun(TrackingContext(uri, exp, parent), name, name, {}, {"arm": "planted"}, "/tmp")
    run._attach()
    return client, run


def _wav(tmp_path):
    import numpy as np
    import soundfile as sf

    path = tmp_path / "clip.wav"
    t = np.arange(16000 * 2) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path


def _artifact_file(server_root, run_id: str, name: str):
    """Where the server keeps a file of the model logged by `run_id` (the store, on disk)."""
    matches = [p for p in (server_root / "mlartifacts").rglob(name) if p.is_file()]
    assert len(matches) >= 1, name
    return matches


def test_models_are_logged_as_code_and_load_without_running_it(mlflow_server, tmp_path):
    """A logged model is code + spec + safetensors with a SHA-256 per file on its run; the
    demo's loader rebuilds it without MLflow's pyfunc loader, and `mlflow.pyfunc.load_model`
    (what `mlflow models serve` runs) still gives the same probabilities."""
    import json

    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    import yaml
    from mlflow.artifacts import download_artifacts

    from workloads import demo
    from workloads.serving import TAG_FILES, log_model

    spec, weights, classes = _frame_model()
    client, run = _trial_run(mlflow_server.uri, "served-ok")
    uri = log_model(run, spec, weights)
    assert uri and uri.startswith("models:/")
    tags = client.get_run(run.run_id).data.tags
    hashes = json.loads(tags[TAG_FILES])
    assert set(hashes) == {"code", "spec", "weights"} and all(len(h) == 64 for h in hashes.values())
    local = download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server.uri)
    flavor = yaml.safe_load(open(f"{local}/MLmodel"))["flavors"]["python_function"]
    assert "python_model" not in flavor and flavor["model_code_path"].endswith("served_model.py")
    assert not list((tmp_path / "dl").rglob("*.pkl")), "something was pickled"

    model, found = demo.load(mlflow_server.uri, run_id=run.run_id)
    audio = _wav(tmp_path).read_bytes()
    ours = model.predict(pd.DataFrame({"audio": [audio]}))
    assert list(ours.columns) == classes and abs(float(ours.sum(axis=1)[0]) - 1) < 1e-6
    mlflow.set_tracking_uri(mlflow_server.uri)
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"audio": [audio]}))
    np.testing.assert_allclose(served.to_numpy(), ours.to_numpy(), rtol=1e-6)


def test_a_pickled_model_and_a_replaced_code_file_are_refused_unexecuted(mlflow_server, tmp_path, capsys):
    """A run whose model_uri points at a pickle (whose unpickling would create a file), and a
    run whose logged code file was replaced (with code that would create a file): both are
    refused with one line, and neither file appears."""
    import argparse
    import json

    import mlflow
    import mlflow.pyfunc

    from workloads import predict
    from workloads.core.tracking import TAG_MODEL
    from workloads.serving import TAG_FILES, log_model

    sentinel = tmp_path / "executed"

    class Planted(mlflow.pyfunc.PythonModel):
        def __reduce__(self):  # unpickling this model opens (creates) the sentinel
            return (open, (str(sentinel), "w"))

        def predict(self, context, model_input, params=None):
            return model_input

    client, pickled = _trial_run(mlflow_server.uri, "planted-pickle")
    mlflow.set_tracking_uri(mlflow_server.uri)
    from mlflow.models import Model

    info = Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=pickled.run_id,
                     python_model=Planted(), pip_requirements=["mlflow"])
    sentinel.unlink(missing_ok=True)
    client.set_tag(pickled.run_id, TAG_MODEL, info.model_uri)
    client.set_tag(pickled.run_id, TAG_FILES, json.dumps({"code": "0" * 64}))

    spec, weights, classes = _frame_model()
    _, replaced = _trial_run(mlflow_server.uri, "planted-code")
    log_model(replaced, spec, weights)
    model_id = client.get_run(replaced.run_id).data.tags[TAG_MODEL].split("/")[-1]
    code = [p for p in _artifact_file(mlflow_server.root, replaced.run_id, "served_model.py") if model_id in str(p)]
    assert len(code) == 1
    code[0].write_text(f"open({str(sentinel)!r}, 'w')\n")

    wav = _wav(tmp_path)
    capsys.readouterr()
    for run, reason in ((pickled, "pickled python model"), (replaced, "served_model.py differs")):
        args = argparse.Namespace(file=str(wav), run_id=run.run_id, text=None, top=2, tracking_uri=mlflow_server.uri)
        assert predict.main(args) == 2
        err = capsys.readouterr().err
        assert reason in err and "refusing" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not sentinel.exists(), f"{reason}: code from the store was executed"
