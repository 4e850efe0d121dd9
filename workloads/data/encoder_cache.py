"""The frozen-encoder cache: run an encoder once per corpus, not once per trial and epoch.

When the encoder does not train, every pooling arm and every hyper-parameter trial would
recompute the same hidden states. `encode_corpus` runs the encoder on Ray Data actors (each
builds it once; GPU actors on a cluster, the CPU on a laptop) and stores, per clip, in the
content-addressed cache of pipeline.py:

    prefix_layer None: every layer's hidden states at the clip's real frames, (L + 1, T_i, D)
    prefix_layer j:    the state entering layer j at every frame of the window, (T, D), for
                       trials that fine-tune layers j… (prefix caching: the frozen bottom
                       never runs again; the top runs on the cached state, exactly)

`encode_texts` does the same for a text encoder over the manifest's transcripts: per item the
state entering layer j at its real tokens, (T_i, D) (the fusion study trains the top layers).

The key is (encoder weights' SHA-256, corpus fingerprint, sample rate, clip seconds, Whisper
window, prefix layer, dtype), so a changed encoder, corpus or clip policy never reads a stale
entry. States are float16 by default (float32 for the exactness tests).
"""
from __future__ import annotations

import pandas as pd

from .audio import TARGET_SR, MediaError
from .features import Stage
from .manifest import Manifest
from .pipeline import PrepareResult, ShardWriter, read_and_decode, run_cached

STAGE = Stage("encoder_states", version=1, fn=None, defaults={
    "model_hash": "", "window_seconds": None, "clip_seconds": 5.0, "prefix_layer": None, "dtype": "float16"},
    doc="a speech encoder's hidden states (all layers at real frames, or one prefix layer at all frames)")


def actor_plan(requested: int | None = None) -> tuple[int, int]:
    """(encoder actors, GPUs per actor): one actor per GPU on a cluster; on a CPU machine one
    single-threaded actor per core. `requested` overrides the count."""
    from ..core.on_ray import _ray

    ray = _ray()
    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray else 0
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray else 1
    return int(requested or (gpus or cpus)), 1 if gpus else 0


class EncoderStatesWorker:
    """A Ray Data actor: builds the encoder once, then encodes shard after shard."""

    def __init__(self, model_path: str, window_seconds: float | None, device: str = "auto", threads: int = 0):
        import torch

        from ..models.speech import SpeechEncoder

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = SpeechEncoder(model_path, window_seconds, device)

    def __call__(self, batch: pd.DataFrame, stages: dict, fs_uri: str, sr: int, batch_size: int) -> pd.DataFrame:
        import numpy as np
        import torch

        spec = stages[STAGE.name]
        params, clip = spec["params"], int(spec["params"]["clip_seconds"] * sr)
        dtype, prefix = np.dtype(params["dtype"]), params["prefix_layer"]
        writer = ShardWriter(stages, fs_uri)
        decoded = []
        starts = batch["start"] if "start" in batch else [None] * len(batch)  # segments of longer files
        ends = batch["end"] if "end" in batch else [None] * len(batch)
        for uid, path, start, end in zip(batch["uid"], batch["path"], starts, ends):
            segment = (float(start), float(end)) if start is not None and not pd.isna(start) else None
            try:
                decoded.append((uid, path, read_and_decode(path, sr, segment=segment)[:clip]))
            except MediaError as e:
                writer.failed(uid, path, [STAGE.name], "decode", e.reason, e.detail)
        for start in range(0, len(decoded), batch_size):
            chunk = decoded[start:start + batch_size]
            try:
                with torch.inference_mode():
                    states, mask = self.encoder.hidden_states([w for _, _, w in chunk], "fixed",
                                                              params["clip_seconds"])
            except Exception as e:  # an encoder that cannot take this batch: report each clip
                for uid, path, _ in chunk:
                    writer.failed(uid, path, [STAGE.name], "encoder", "encoder failed", f"{type(e).__name__}: {e}")
                continue
            frames = mask.sum(1).tolist()
            for i, (uid, path, _) in enumerate(chunk):
                if prefix is None:
                    arr = states[i, :, :frames[i]]
                else:
                    arr = states[i, prefix]
                writer.ok(uid, path, {STAGE.name: {"states": arr.float().cpu().numpy().astype(dtype)}},
                          meta={"frames": int(frames[i])})
        return writer.close()


def encode_corpus(manifest: Manifest, model_path: str, *, window_seconds: float | None = None,
                  clip_seconds: float = 5.0, prefix_layer: int | None = None, dtype: str = "float16",
                  fingerprint: str | None = None,
                  cache_dir: str | None = None, batch_size: int = 8, actors: int = 1, num_gpus: float = 0,
                  cpus_per_actor: int = 1, shard_size: int = 32, progress: bool = True,
                  strict: bool = False) -> PrepareResult:
    """Encode every clip of the manifest once (what the cache holds already is reused).
    `fingerprint`: the manifest's, when the caller has computed it already."""
    from ..models.speech import encoder_content_hash

    params = {"model_hash": encoder_content_hash(model_path), "window_seconds": window_seconds,
              "clip_seconds": clip_seconds, "prefix_layer": prefix_layer, "dtype": dtype}
    return run_cached(
        manifest.name, fingerprint or manifest.fingerprint(), manifest.items, manifest.problems, {STAGE.name: (STAGE, params)},
        EncoderStatesWorker, {"sr": TARGET_SR, "batch_size": batch_size}, cache_dir=cache_dir, strict=strict,
        shard_size=shard_size, progress=progress, key_context={"sr": TARGET_SR},
        actors={"init": {"model_path": model_path, "window_seconds": window_seconds, "threads": cpus_per_actor},
                "concurrency": actors, "num_gpus": num_gpus, "num_cpus": cpus_per_actor})


TEXT_STAGE = Stage("text_states", version=1, fn=None, defaults={
    "model_hash": "", "prefix_layer": 0, "max_length": 128, "dtype": "float16"},
    doc="a text encoder's state entering one layer, at the transcript's real tokens")


class TextStatesWorker:
    """A Ray Data actor: builds the text encoder once, then encodes the transcripts of shard
    after shard (the `text` column; nothing is decoded)."""

    def __init__(self, model_path: str, max_length: int, device: str = "auto", threads: int = 0):
        import torch

        from ..models.text import TextEncoder

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = TextEncoder(model_path, max_length, device)

    def __call__(self, batch: pd.DataFrame, stages: dict, fs_uri: str, batch_size: int) -> pd.DataFrame:
        import numpy as np
        import torch

        params = stages[TEXT_STAGE.name]["params"]
        dtype, prefix = np.dtype(params["dtype"]), int(params["prefix_layer"])
        writer = ShardWriter(stages, fs_uri)
        rows = list(zip(batch["uid"], batch["path"], batch["text"].fillna("")))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            try:
                with torch.inference_mode():
                    states, mask = self.encoder.hidden_states([t for _, _, t in chunk])
            except Exception as e:  # a batch the encoder cannot take: report each item
                for uid, path, _ in chunk:
                    writer.failed(uid, path, [TEXT_STAGE.name], "encoder", "text encoder failed",
                                  f"{type(e).__name__}: {e}")
                continue
            lengths = mask.sum(1).tolist()
            for i, (uid, path, _) in enumerate(chunk):
                arr = states[i, prefix, :lengths[i]].float().cpu().numpy().astype(dtype)
                writer.ok(uid, path, {TEXT_STAGE.name: {"states": arr}}, meta={"tokens": int(lengths[i])})
        return writer.close()


def encode_texts(manifest: Manifest, model_path: str, *, prefix_layer: int, max_length: int = 128,
                 dtype: str = "float16", fingerprint: str | None = None, cache_dir: str | None = None,
                 batch_size: int = 32, actors: int = 1, num_gpus: float = 0, cpus_per_actor: int = 1,
                 shard_size: int = 256, progress: bool = True) -> PrepareResult:
    """Encode every transcript of the manifest once, up to the state entering layer
    `prefix_layer` (what the cache holds already is reused)."""
    from ..models.speech import encoder_content_hash

    params = {"model_hash": encoder_content_hash(model_path), "prefix_layer": prefix_layer,
              "max_length": max_length, "dtype": dtype}
    return run_cached(
        manifest.name, fingerprint or manifest.fingerprint(), manifest.items, manifest.problems,
        {TEXT_STAGE.name: (TEXT_STAGE, params)}, TextStatesWorker, {"batch_size": batch_size},
        cache_dir=cache_dir, shard_size=shard_size, progress=progress, unit="transcripts",
        actors={"init": {"model_path": model_path, "max_length": max_length, "threads": cpus_per_actor},
                "concurrency": actors, "num_gpus": num_gpus, "num_cpus": cpus_per_actor})
