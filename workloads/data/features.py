"""Feature stages: named, versioned, pure functions of (decoded mono waveform, params) →
named arrays. The cache key is (corpus fingerprint, stage name, params, stage version), so
bump `version` whenever a stage's output changes for the same params.

Every stage is tested against a direct librosa / numpy computation (tests/test_features.py).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .audio import TARGET_SR, fit_length


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    fn: Callable[..., dict]
    defaults: dict = field(default_factory=dict)
    doc: str = ""

    def params(self, overrides: dict | None = None) -> dict:
        unknown = set(overrides or {}) - set(self.defaults)
        if unknown:
            raise ValueError(f"stage {self.name!r} has no parameter(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.defaults)}")
        return {**self.defaults, **(overrides or {})}

    def key(self, params: dict, **context) -> str:
        """Stage part of the cache key: name, version, every parameter, and what else the output
        depends on (the sample rate for audio stages)."""
        blob = json.dumps({"stage": self.name, "version": self.version, **context, "params": params},
                          sort_keys=True)
        return f"{self.name}-v{self.version}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def __call__(self, item, *context, **params) -> dict:
        """Floating-point outputs as float32; integer outputs (8-bit images) keep their type."""
        out = self.fn(item, *context, **self.params(params))
        return {k: (np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
                for k, v in out.items()}


class AudioStage(Stage):
    """A stage of a decoded mono waveform; its output depends on the sample rate too."""

    def __call__(self, wave: np.ndarray, sr: int = TARGET_SR, **params) -> dict:
        return super().__call__(wave, sr, **params)


def _samples(seconds, sr):
    return None if seconds is None else int(round(seconds * sr))


def waveform(wave, sr, seconds):
    return {"waveform": fit_length(wave, _samples(seconds, sr))}


def logmel(wave, sr, n_mels, n_fft, hop_length, size, seconds):
    """S5 GTZAN: power mel spectrogram in dB, resized (bilinear) to size × size."""
    import librosa
    from scipy.ndimage import zoom

    wave = fit_length(wave, _samples(seconds, sr))
    mel = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels)
    db = librosa.power_to_db(mel, ref=np.max)
    return {"logmel": zoom(db, (size / db.shape[0], size / db.shape[1]), order=1)}


def _mfcc(wave, sr, n_mfcc, frame_ms, hop_ms, n_mels):
    """MFCC (n_mfcc, frames) with frame and hop given in milliseconds."""
    import librosa

    return librosa.feature.mfcc(y=wave, sr=sr, n_mfcc=n_mfcc, n_fft=int(sr * frame_ms / 1000),
                                hop_length=int(sr * hop_ms / 1000), n_mels=n_mels)


def mfcc(wave, sr, n_mfcc, frame_ms, hop_ms, n_mels):
    """S5 AudioMNIST (a): MFCC with first and second deltas, (3·n_mfcc, frames)."""
    import librosa

    m = _mfcc(wave, sr, n_mfcc, frame_ms, hop_ms, n_mels)
    width = min(9, m.shape[1] - (1 - m.shape[1] % 2))  # librosa.delta needs width ≤ frames, odd, ≥ 3
    if width < 3:
        d1 = d2 = np.zeros_like(m)
    else:
        d1 = librosa.feature.delta(m, width=width, order=1)
        d2 = librosa.feature.delta(m, width=width, order=2)
    return {"mfcc": np.concatenate([m, d1, d2], axis=0)}


def mfcc_mean(wave, sr, n_mfcc, frame_ms, hop_ms, n_mels):
    """S5 AudioMNIST (b) and speaker ID (b): the mean MFCC vector over time."""
    return {"mfcc_mean": _mfcc(wave, sr, n_mfcc, frame_ms, hop_ms, n_mels).mean(axis=1)}


def mfcc_stats(wave, sr, n_mfcc, frame_ms, hop_ms, n_mels):
    """S5 speaker ID: the mean MFCC vector over time, then the standard deviation (2·n_mfcc);
    the means are (b)'s features, the whole is its floor's."""
    m = _mfcc(wave, sr, n_mfcc, frame_ms, hop_ms, n_mels)
    return {"mfcc_stats": np.concatenate([m.mean(axis=1), m.std(axis=1)])}


def frame46(wave, sr, seconds, hop_length, n_fft):
    """S4: 46 features per frame (5 s at 16 kHz, hop 512 → 157 frames): spectral centroid,
    contrast (first band), bandwidth, rolloff, zero-crossing rate, RMS, 20 MFCC, 20 MFCC deltas."""
    import librosa

    y = fit_length(wave, _samples(seconds, sr))
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length))
    m = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=n_fft, hop_length=hop_length)
    rows = [
        librosa.feature.spectral_centroid(S=S, sr=sr),
        librosa.feature.spectral_contrast(S=S, sr=sr)[:1],
        librosa.feature.spectral_bandwidth(S=S, sr=sr),
        librosa.feature.spectral_rolloff(S=S, sr=sr),
        librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop_length),
        librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop_length),
        m,
        librosa.feature.delta(m),
    ]
    return {"frame46": np.concatenate(rows, axis=0).T}


def spectral_stats(wave, sr, n_fft, hop_length):
    """S5 speaker ID (a): mean spectral centroid, zero-crossing rate and RMS."""
    import librosa

    return {"spectral_stats": np.array([
        librosa.feature.spectral_centroid(y=wave, sr=sr, n_fft=n_fft, hop_length=hop_length).mean(),
        librosa.feature.zero_crossing_rate(wave, frame_length=n_fft, hop_length=hop_length).mean(),
        librosa.feature.rms(y=wave, frame_length=n_fft, hop_length=hop_length).mean(),
    ])}


def ssl_input(wave, sr, seconds):
    """S1/S2: what a Wav2Vec2/HuBERT feature extractor feeds the encoder: clipped to `seconds`
    (not padded: padding is the collate's job, with the attention mask), zero-mean
    unit-variance normalized by transformers' own Wav2Vec2FeatureExtractor."""
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sr, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    clipped = wave[: _samples(seconds, sr)] if seconds is not None else wave
    out = extractor(clipped, sampling_rate=sr, return_tensors="np")
    return {"input_values": out["input_values"][0]}


def content_hash(wave, sr):
    """The split-integrity gate's key: a digest of the decoded samples (128 bits as 16 bytes),
    so the same recording under two names, or in two containers of lossless audio, is caught."""
    return {"content_hash": np.frombuffer(hashlib.sha256(np.ascontiguousarray(wave, np.float32).tobytes())
                                          .digest()[:16], dtype=np.uint8)}


STAGES: dict[str, Stage] = {s.name: s for s in [
    AudioStage("waveform", 1, waveform, {"seconds": None}, "mono float32 at the target rate; clip/pad to seconds"),
    AudioStage("logmel", 1, logmel, {"n_mels": 128, "n_fft": 2048, "hop_length": 512, "size": 128, "seconds": None},
          "log-mel spectrogram resized to size×size (S5 GTZAN)"),
    AudioStage("mfcc", 1, mfcc, {"n_mfcc": 12, "frame_ms": 25, "hop_ms": 10, "n_mels": 24},
          "MFCC + deltas + delta-deltas (S5 AudioMNIST)"),
    AudioStage("mfcc_mean", 1, mfcc_mean, {"n_mfcc": 13, "frame_ms": 25, "hop_ms": 10, "n_mels": 40},
          "mean MFCC vector (S5)"),
    AudioStage("mfcc_stats", 1, mfcc_stats, {"n_mfcc": 13, "frame_ms": 25, "hop_ms": 10, "n_mels": 40},
          "mean then standard deviation of each MFCC over time (S5 speaker ID)"),
    AudioStage("frame46", 1, frame46, {"seconds": 5.0, "hop_length": 512, "n_fft": 2048},
          "46 features per frame, 157 frames for 5 s (S4)"),
    AudioStage("spectral_stats", 1, spectral_stats, {"n_fft": 2048, "hop_length": 512},
          "mean spectral centroid, zero-crossing rate, RMS (S5 speaker ID)"),
    AudioStage("ssl_input", 1, ssl_input, {"seconds": 5.0}, "normalized input_values for SSL encoders (S1, S2)"),
    AudioStage("content_hash", 1, content_hash, {}, "digest of the decoded samples (the split gate)"),
]}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown feature stage {name!r}; choose from {', '.join(STAGES)}")
    return STAGES[name]
