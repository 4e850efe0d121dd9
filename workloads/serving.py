"""The studies' models as MLflow pyfuncs: what `emosweep demo`, `emosweep predict` and
`mlflow models serve` load from a trial's run.

FusionPredictor (S1) takes a DataFrame with `text` (the transcript) and/or `audio` (the bytes
of any audio file FFmpeg reads: wav, mp3, mp4, webm…), as the model's arm uses them;
FramePredictor (S4) takes `audio`. Both return one column per class with its probability.
The models' code is this package (`emosweep` must be installed where they are served); their
weights, spec and encoder folders are the MLflow model's artifacts.
"""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from .models.fusion import uses

SAMPLE_RATE = 16000  # what the encoders read


def signature(classes: list[str], text: bool, audio: bool):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = ([ColSpec("string", "text")] if text else []) + ([ColSpec("binary", "audio")] if audio else [])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", c) for c in classes]))


def frame_signature(classes: list[str]):
    return signature(classes, text=False, audio=True)


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


class FusionPredictor(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        arts = context.artifacts
        self.runtime = FusionRuntime(
            _read_json(arts["spec"]), _load_weights(arts["weights"]), arts.get("text_encoder"), arts.get("audio_encoder"))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        n = len(model_input)
        texts = model_input["text"].fillna("").astype(str).tolist() if "text" in model_input else [""] * n
        waves = [decode_upload(v) for v in model_input["audio"]] if "audio" in model_input else [None] * n
        probs = self.runtime.probabilities(texts, waves)
        return pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=self.runtime.classes)


def _read_json(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def _load_weights(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


class FramePredictor(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.runtime = FrameRuntime(_read_json(context.artifacts["spec"]), _load_weights(context.artifacts["weights"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        waves = [decode_upload(v) for v in model_input["audio"]]
        probs = self.runtime.probabilities(waves)
        return pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=self.runtime.classes)


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
