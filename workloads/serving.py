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


def signature(classes: list[str], text: bool, audio: bool):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = ([ColSpec("string", "text")] if text else []) + ([ColSpec("binary", "audio")] if audio else [])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", c) for c in classes]))


def frame_signature(classes: list[str]):
    return signature(classes, text=False, audio=True)


def pip_requirements() -> list[str]:
    import torch
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
        from .meld_fusion import FusionRuntime

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
        from .blstm_attention import FrameRuntime

        self.runtime = FrameRuntime(_read_json(context.artifacts["spec"]), _load_weights(context.artifacts["weights"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        waves = [decode_upload(v) for v in model_input["audio"]]
        probs = self.runtime.probabilities(waves)
        return pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=self.runtime.classes)
