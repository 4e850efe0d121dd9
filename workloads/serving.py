"""The studies' served models: what `emosweep demo`, `emosweep predict` and `mlflow models
serve` run from a trial's logged model.

A logged model is code plus data, never a pickle. Its code is `workloads/served_model.py`
(MLflow 3's models-from-code: the file is copied into the model); its data are `spec.json`,
`weights.safetensors` and, for S1, the encoder folders it runs on. The run records the
SHA-256 of every one of those files (tag `model_files_sha256`).

`demo` and `predict` never use MLflow's pyfunc loader, which runs the code that lives in the
model (models-from-code included). `load_logged_model` reads MLmodel as YAML data, checks every
file against the run's hashes, and builds this package's own classes from the JSON spec and
the safetensors weights; anything else (a pickled model, a file that changed, a file no hash
covers) is refused with the reason. `mlflow models serve` keeps working for those who use it.

ServedModel takes a DataFrame with `text` (the transcript) and/or `audio` (the bytes of any
audio file FFmpeg reads: wav, mp3, mp4, webm…), as the model's arm uses them, and returns one
column per class with its probability.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from .core.errors import BadInput
from .core.paths import mask_uri
from .core.storage import folder_files, sha256
from .models.fusion import uses

SAMPLE_RATE = 16000  # what the encoders read
CODE_FILE = Path(__file__).with_name("served_model.py")  # the model's code: models-from-code
TAG_FILES = "model_files_sha256"  # JSON {file (artifact name / path in it): sha256} on the run
CODE_KEY = "code"  # the code file's entry in that JSON


class RefusedModel(BadInput):
    """A logged model that emosweep will not load: not code + safetensors, or not as logged."""


def signature(classes: list[str], text: bool, audio: bool):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = ([ColSpec("string", "text")] if text else []) + ([ColSpec("binary", "audio")] if audio else [])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", c) for c in classes]))


def pip_requirements() -> list[str]:
    import transformers

    return [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}", "av",
            "safetensors", "pandas", "numpy"]


def decode_upload(data: bytes | str | None, name: str = "audio"):
    """Audio bytes (or a file path) → mono 16-kHz float32; MediaError names what is wrong."""
    from .data.audio import decode_audio

    if data is None or (isinstance(data, (bytes, bytearray)) and not data):
        return None
    if isinstance(data, str):
        with open(data, "rb") as f:
            data, name = f.read(), data
    return decode_audio(bytes(data), sr=16000, name=name)


def model_files(code: str | os.PathLike, artifacts: dict) -> dict[str, Path]:
    """The files of a model, by the key its run's hashes use: `code`; an artifact that is a
    file by its name; each file of an artifact folder as name/relative path."""
    out = {CODE_KEY: Path(code)}
    for name, path in artifacts.items():
        if os.path.isdir(path):
            out.update({f"{name}/{rel}": f for rel, f in folder_files(path).items()})
        else:
            out[name] = Path(path)
    return out


def file_hashes(artifacts: dict) -> dict:
    """{key: sha256} of every file of a model being logged (see model_files): what the run
    records and the loader checks."""
    return {key: sha256(path) for key, path in model_files(CODE_FILE, artifacts).items()}


class ServedModel:
    """A logged model rebuilt from its spec and weights: `predict(DataFrame)` → probabilities."""

    def __init__(self, spec: dict, weights: dict, text_encoder: str | None = None, audio_encoder: str | None = None):
        if "fusion" in spec:  # S1
            self.runtime = FusionRuntime(spec, weights, text_encoder, audio_encoder)
            text, audio = uses(spec["fusion"])
            self.inputs = [n for n, used in (("text", text), ("audio", audio)) if used]
        else:  # S4's frame model
            self.runtime, self.inputs = FrameRuntime(spec, weights), ["audio"]
        self.classes = list(self.runtime.classes)

    @classmethod
    def from_files(cls, files: dict) -> "ServedModel":
        """files: artifact name → local path (spec, weights, text_encoder, audio_encoder)."""
        from safetensors.torch import load_file

        with open(files["spec"]) as f:
            spec = json.load(f)
        return cls(spec, load_file(files["weights"]), files.get("text_encoder"), files.get("audio_encoder"))

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        n = len(model_input)
        waves = [decode_upload(v) for v in model_input["audio"]] if "audio" in model_input else [None] * n
        if isinstance(self.runtime, FusionRuntime):
            texts = model_input["text"].fillna("").astype(str).tolist() if "text" in model_input else [""] * n
            probs = self.runtime.probabilities(texts, waves)
        else:
            probs = self.runtime.probabilities(waves)
        return pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=self.classes)


def log_model(run, spec: dict, weights: dict, encoders: dict | None = None) -> str | None:
    """Log a trial's model to its run (trial-side): spec.json and the weights as safetensors,
    the encoder folders it needs ({artifact name: folder}), the code file, and the SHA-256 of
    each. Returns the model URI (None after saying why not)."""
    import tempfile

    from safetensors.torch import save_file

    text, audio = uses(spec["fusion"]) if "fusion" in spec else (False, True)
    with tempfile.TemporaryDirectory(prefix="emosweep-model-") as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(tmp, "weights.safetensors"))
        with open(os.path.join(tmp, "spec.json"), "w") as f:
            json.dump(spec, f, indent=2)
        artifacts = {"weights": os.path.join(tmp, "weights.safetensors"), "spec": os.path.join(tmp, "spec.json"),
                     **(encoders or {})}
        return run.log_code_model(str(CODE_FILE), artifacts, signature(spec["classes"], text, audio), pip_requirements(),
                                  {TAG_FILES: json.dumps(file_hashes(artifacts), separators=(",", ":"))})


def load_logged_model(model_uri: str, run, tracking_uri: str, dst: str) -> ServedModel:
    """The run's model, downloaded to `dst`, checked and rebuilt without executing anything
    from the store. RefusedModel says why a model is not loaded."""
    import yaml
    from mlflow.artifacts import download_artifacts

    who = f"run {run.info.run_id} ({run.info.run_name})"
    try:
        recorded = json.loads(run.data.tags.get(TAG_FILES) or "")
    except ValueError:
        raise RefusedModel(f"{who}: its model has no file hashes (tag {TAG_FILES}), so it was not logged by this "
                           f"emosweep as code + safetensors; refusing it. Re-run the trial's sweep to log it again") from None
    from mlflow.tracking import MlflowClient

    try:  # models:/<id> → where its files are, asked of this store (not the process's default one)
        location = MlflowClient(tracking_uri).get_logged_model(model_uri.rsplit("/", 1)[-1]).artifact_location
    except Exception as e:
        raise RefusedModel(f"{who}: its model {model_uri} is not in the store at {mask_uri(tracking_uri)} "
                           f"({type(e).__name__})") from None
    local = Path(download_artifacts(artifact_uri=location, dst_path=dst, tracking_uri=tracking_uri))
    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        flavor = mlmodel["flavors"]["python_function"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise RefusedModel(f"{who}: {model_uri} has no readable MLmodel ({type(e).__name__}); refusing it") from None
    code_model = "mlflow.pyfunc.loaders.code_model"
    if "python_model" in flavor or flavor.get("loader_module") != code_model or not flavor.get("model_code_path"):
        raise RefusedModel(f"{who}: {model_uri} is a pickled python model ({flavor.get('python_model', '?')}); "
                           f"refusing it: emosweep never unpickles, and loads only models logged as code with safetensors weights")
    files = {name: local / entry["path"] for name, entry in (flavor.get("artifacts") or {}).items()}
    # the code file where MLflow's own loader would look for it
    on_disk = model_files(local / Path(str(flavor["model_code_path"])).name, files)
    unlisted = sorted(set(on_disk) - set(recorded))
    if unlisted:
        raise RefusedModel(f"{who}: {model_uri} holds files its run has no hash for ({', '.join(unlisted[:3])}); "
                           f"refusing it")
    for key, expected in recorded.items():
        path = on_disk.get(key)
        if path is None or not path.is_file():
            raise RefusedModel(f"{who}: {model_uri} lacks {key}, which it was logged with; refusing it")
        if sha256(path) != expected:
            raise RefusedModel(f"{who}: {path.relative_to(local)} differs from the file logged with the model "
                               f"(SHA-256 mismatch): it was changed in the store; refusing it")
    if {"spec", "weights"} - set(files):
        raise RefusedModel(f"{who}: {model_uri} has no spec or weights artifact; refusing it")
    return ServedModel.from_files({name: str(path) for name, path in files.items()})


class CodeModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of models-from-code (`served_model.py` sets it): what `mlflow models serve`
    and `mlflow.pyfunc.load_model` run. emosweep's own commands use load_logged_model."""

    def load_context(self, context) -> None:
        self.model = ServedModel.from_files(dict(context.artifacts))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict(model_input)


# ----------------------------------------------------------------------------- the runtimes

class FusionRuntime:
    """The end-to-end model: transcripts and waveforms in, class probabilities out. The frozen
    encoder bottoms run live, then the trained top layers and the head."""

    def __init__(self, spec: dict, weights: dict, text_path: str | None, audio_path: str | None,
                 device: str = "cpu"):
        self.spec, self.device = spec, torch.device(device)
        self.text, self.audio = uses(spec["fusion"])
        config = {**spec, "text_model_path": text_path, "audio_model_path": audio_path}
        from .models.fusion import build_model, load_encoders

        self.text_encoder, self.speech_encoder = load_encoders(config, self.text, self.audio, device)
        self.model = build_model(config, self.text_encoder, self.speech_encoder)
        self.model.load_state_dict(weights)
        self.model.to(self.device).eval()
        self.classes = list(spec["classes"])

    @torch.inference_mode()
    def probabilities(self, texts: list[str], waves: list[np.ndarray | None]) -> np.ndarray:
        k = int(self.spec.get("finetune_top", 1))
        tokens = token_mask = frames = frame_mask = None
        if self.text:
            states, token_mask = self.text_encoder.hidden_states([t or "" for t in texts])
            tokens = states[:, states.shape[1] - 1 - k]
        if self.audio:
            clip = int(float(self.spec["clip_seconds"]) * SAMPLE_RATE)
            cut = [(w if w is not None and len(w) else np.zeros(SAMPLE_RATE, np.float32))[:clip] for w in waves]
            states, frame_mask = self.speech_encoder.hidden_states(cut, "fixed", float(self.spec["clip_seconds"]))
            frames = states[:, states.shape[1] - 1 - k]
        logits = self.model(tokens, token_mask, frames, frame_mask)
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()


class FrameRuntime:
    """The served BLSTM: decode, frame46, standardize, classify."""

    def __init__(self, spec: dict, weights: dict):
        self.spec, self.classes = spec, list(spec["classes"])
        self.mean, self.std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
        from .models.blstm import AttentionBLSTM

        self.model = AttentionBLSTM(int(spec["n_features"]), len(self.classes), hidden=int(spec["hidden"]))
        self.model.load_state_dict(weights)
        self.model.eval()

    @torch.inference_mode()
    def probabilities(self, waves: list[np.ndarray]) -> np.ndarray:
        from .data.features import STAGES

        stage = STAGES["frame46"]
        x = np.stack([(stage(w, **self.spec["stage_params"])["frame46"] - self.mean) / self.std for w in waves])
        return torch.softmax(self.model(torch.from_numpy(x.astype(np.float32))), dim=-1).numpy()
