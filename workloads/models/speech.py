"""A speech encoder as the pooling and fusion studies use it: waveforms in, every layer's
hidden states and a frame mask out, and the top k layers runnable on their own.

Two families: Whisper encoders (the shelf's offline stand-ins; 30-s windows, or a shorter
window when `window_seconds` is set) and self-supervised encoders loaded through AutoModel
(HuBERT, wav2vec2, WavLM: raw samples in, convolutional feature encoder frozen). Both give
50 frames per second.

`hidden_states(waves)` returns states (B, L + 1, T, D): the input of every transformer layer
and the final output (Whisper's after its last LayerNorm), exactly as the model's own
`output_hidden_states` lists them. `run_layers(layers[j:], h)` runs layers j… from the state
that enters layer j, so a cache of that state plus the top layers reproduces the live model
(prefix caching); `tests/test_speech_pooling.py` checks both against the live encoder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError

FRAMES_PER_SECOND = 50


def encoder_content_hash(path: str) -> str:
    """The weights' SHA-256 (first 16 hex): a cache keyed by it never serves another model's states."""
    h = hashlib.sha256()
    files = sorted(Path(path).glob("*.safetensors")) if os.path.isdir(path) else []
    if not files:
        h.update(str(path).encode())  # a hub id: its revision decides; the id is the best we know here
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


# Compute precisions for a frozen encoder's forward: matrix products in the named type under
# torch.autocast (norms and softmax stay float32), fp32 the model's own. A cache records which.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(UserError, ValueError):
    """A precision no encoder runs in: a user's setting, so one line and exit 2."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)} (or auto where a "
                             f"study's encode_precision takes it)")
    return precision


def autocast(device: torch.device, precision: str):
    """The forward's precision context: autocast to bf16 / fp16, or nothing for fp32."""
    import contextlib

    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def padded_batch(waves: list[np.ndarray], width: int, device: torch.device) -> torch.Tensor:
    """(B, width) float32 on `device`: each wave cut to `width` samples and zero-padded after
    its end. One host buffer and one copy for the batch (pinned, asynchronous, on a GPU)."""
    host = torch.zeros((len(waves), width), dtype=torch.float32, pin_memory=device.type == "cuda")
    view = host.numpy()
    for i, w in enumerate(waves):
        n = min(len(w), width)
        view[i, :n] = w[:n]
    return host.to(device, non_blocking=True)


class SpeechEncoder:
    def __init__(self, path: str, window_seconds: float | None = None, device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        from .encoders import load_speech_encoder

        self.path, self.device, self.precision = path, torch.device(device), check_precision(precision)
        self.extractor, self.model = load_speech_encoder(path, window_seconds)
        self.model.to(self.device).eval()
        self.whisper = self.model.config.model_type == "whisper"
        if self.whisper:
            self.window_seconds = self.model.config.max_source_positions / FRAMES_PER_SECOND
            self.layers = self.model.layers
            ex = self.extractor
            self._mel = torch.from_numpy(np.asarray(ex.mel_filters, dtype=np.float32)).T.contiguous().to(self.device)
            self._window = torch.hann_window(ex.n_fft, device=self.device)
        else:
            self.window_seconds = None
            self.layers = self.model.encoder.layers
            self.model.feature_extractor._freeze_parameters()  # the convolutional feature encoder never trains
        self.n_states = len(self.layers) + 1
        self.dim = self.model.config.d_model if self.whisper else self.model.config.hidden_size

    def valid_frames(self, n_samples: int) -> int:
        if self.whisper:
            frames = int(np.ceil(n_samples / (self.extractor.hop_length * 2)))
            return max(1, min(frames, self.model.config.max_source_positions))
        return max(1, int(self.model._get_feat_extract_output_lengths(torch.tensor(n_samples))))

    def input_width(self, waves: list[np.ndarray], padding: str = "fixed", seconds: float = 5.0) -> int:
        """Samples per clip in a batch: Whisper's window; else `seconds` (fixed) or the longest clip (dynamic)."""
        if self.whisper:
            return int(self.extractor.n_samples)
        return int(seconds * 16000) if padding == "fixed" else max(len(w) for w in waves)

    def inputs(self, waves: list[np.ndarray], padding: str = "fixed", seconds: float = 5.0) -> torch.Tensor:
        """Model inputs for a batch, computed on the encoder's device from one padded copy of the
        samples (the feature extractor's own recipe in torch; tests hold it to the extractor).
        Whisper: log-mel over its window. SSL encoders: samples zero-padded to `seconds` (fixed)
        or to the longest clip (dynamic), then normalized as the extractor does."""
        width = self.input_width(waves, padding, seconds)
        x = padded_batch(waves, width, self.device)
        return self._log_mel(x) if self.whisper else self._normalize(x, [min(len(w), width) for w in waves])

    def _log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """WhisperFeatureExtractor's log-mel of (B, n_samples), batched: |STFT|² through the mel
        filters, log10, each clip floored at its own maximum − 8, then (· + 4) / 4."""
        ex = self.extractor
        if getattr(ex, "dither", 0.0):
            x = x + ex.dither * torch.randn_like(x)
        stft = torch.stft(x, ex.n_fft, ex.hop_length, window=self._window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log_spec = torch.clamp(self._mel @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0

    def _normalize(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Wav2Vec2FeatureExtractor's zero-mean unit-variance normalization, per clip: over the
        whole padded row, or over the clip's own samples where the extractor returns an attention
        mask (then the padding is set to its padding value)."""
        ex = self.extractor
        if not getattr(ex, "do_normalize", False):
            return x
        if not getattr(ex, "return_attention_mask", False):
            mean = x.mean(1, keepdim=True)
            var = x.var(1, unbiased=False, keepdim=True)
            return (x - mean) / torch.sqrt(var + 1e-7)
        n = torch.tensor(lengths, device=x.device, dtype=x.dtype)[:, None].clamp(min=1)
        real = torch.arange(x.shape[1], device=x.device)[None] < n
        mean = (x * real).sum(1, keepdim=True) / n
        var = (((x - mean) * real) ** 2).sum(1, keepdim=True) / n
        out = (x - mean) / torch.sqrt(var + 1e-7)
        return torch.where(real, out, torch.full_like(out, float(getattr(ex, "padding_value", 0.0))))

    def forward_states(self, waves: list[np.ndarray], padding: str = "fixed", seconds: float = 5.0,
                       grad: bool = False) -> tuple[tuple[torch.Tensor, ...], list[int]]:
        """(every layer's states as the model lists them, each (B, T, D), in the forward's
        precision; each clip's real frames). Nothing waits for the device."""
        x = self.inputs(waves, padding, seconds)
        with torch.set_grad_enabled(grad), autocast(self.device, self.precision):
            out = self.model(x, output_hidden_states=True)
        return out.hidden_states, [self.valid_frames(len(w)) for w in waves]

    def hidden_states(self, waves: list[np.ndarray], padding: str = "fixed", seconds: float = 5.0,
                      grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, L + 1, T, D), mask (B, T)) for mono 16-kHz waveforms."""
        hidden, frames = self.forward_states(waves, padding, seconds, grad)
        states = torch.stack(hidden, dim=1)
        frames = torch.tensor(frames, device=states.device)
        mask = torch.arange(states.shape[2], device=states.device)[None] < frames[:, None]
        return states, mask

    def cache_states(self, waves: list[np.ndarray], seconds: float, dtype: torch.dtype,
                     prefix_layer: int | None = None) -> tuple[torch.Tensor, list[int]]:
        """What the frozen-encoder cache stores for a batch, cast to `dtype` on the device:
        every layer at the batch's real frames, (B, L + 1, T_max, D) with T_max the longest
        clip's, or the state entering `prefix_layer` at every frame, (B, T, D). Returns it
        with each clip's real frames; nothing waits for the device."""
        with torch.inference_mode():
            hidden, frames = self.forward_states(waves, "fixed", seconds)
            if prefix_layer is not None:
                return hidden[prefix_layer].to(dtype), frames
            longest = max(frames)
            return torch.stack([h[:, :longest].to(dtype) for h in hidden], dim=1), frames

    @property
    def final_norm(self) -> torch.nn.Module | None:
        """Whisper's LayerNorm after its last layer (part of its last hidden state); SSL encoders have none."""
        return self.model.layer_norm if self.whisper else None


# (layers, width) in an encoder's config: Whisper's encoder, else the SSL encoders' names
_FACT_KEYS = {True: ("encoder_layers", "d_model"), False: ("num_hidden_layers", "hidden_size")}


def _encoder_config(path: str):
    """The encoder's config: read straight from a local folder's config.json when it holds the
    few keys speech_encoder_facts reads (a sweep's driver then never imports transformers, 2 s),
    else through transformers' AutoConfig."""
    from types import SimpleNamespace

    file = os.path.join(path, "config.json")
    if os.path.isfile(file):
        with open(file) as f:
            raw = json.load(f)
        keys = _FACT_KEYS[raw.get("model_type") == "whisper"]
        if raw.get("model_type") and all(k in raw for k in keys):
            return SimpleNamespace(**raw)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=os.path.isdir(path))


def speech_encoder_facts(path: str, whisper_window: float | None, clip_seconds: float) -> dict:
    """What a study needs to know of a speech encoder before loading it: its layers, width,
    family and window (Whisper's cut to `whisper_window` seconds when given). A clip longer
    than the window is a clear error."""
    config = _encoder_config(path)
    whisper = config.model_type == "whisper"
    window = (whisper_window or 30.0) if whisper else None
    if whisper and window < clip_seconds:
        raise ValueError(f"clip_seconds {clip_seconds} exceeds the Whisper window of {window:g} s")
    layers_key, dim_key = _FACT_KEYS[whisper]
    return {"n_layers": getattr(config, layers_key), "dim": getattr(config, dim_key), "whisper": whisper,
            "window_seconds": whisper_window if whisper else None,
            "label_suffix": f" [{window:g}-s window]" if whisper else ""}


def run_layers(layers, h: torch.Tensor, final_norm: torch.nn.Module | None = None) -> list[torch.Tensor]:
    """Run encoder `layers` from `h`, the state that enters the first of them; returns
    [h, …, the final output], the final one through `final_norm` when given. With the top
    layers of an encoder and its cached input state this reproduces the encoder's own states."""
    states = [h]
    for i, layer in enumerate(layers):
        out = layer(h, attention_mask=None)
        h = out[0] if isinstance(out, tuple) else out
        if final_norm is not None and i == len(layers) - 1:
            h = final_norm(h)
        states.append(h)
    return states


def make_tiny_hubert(out_dir: str | os.PathLike, *, layers: int = 2, hidden: int = 32, heads: int = 2,
                     seed: int = 0) -> str:
    """A small random HuBERT (50 frames/s like the real one) with its feature extractor, saved
    with save_pretrained and marked random-init: `--smoke` runs the SSL path through the same
    loading code as facebook/hubert-base-ls960."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    from .encoders import RANDOM_INIT_MARKER

    from ..core.paths import publish_folder

    def build(tmp: Path) -> None:
        config = HubertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                              intermediate_size=2 * hidden, conv_dim=(32, 32, 32), conv_stride=(5, 8, 8),
                              conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                              feat_extract_norm="group", do_stable_layer_norm=False)
        torch.manual_seed(seed)
        HubertModel(config).save_pretrained(tmp)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                                 return_attention_mask=False).save_pretrained(tmp)
        (tmp / RANDOM_INIT_MARKER).write_text(f"random weights, seed {seed}\n")

    return str(publish_folder(out_dir, build, RANDOM_INIT_MARKER))
