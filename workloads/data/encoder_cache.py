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

import time
from collections import deque

import numpy as np
import pandas as pd

from .audio import TARGET_SR, MediaError, Recording
from .features import Stage
from .manifest import Manifest
from .pipeline import PrepareResult, ShardWriter, read_and_decode, run_cached, segments

STAGE = Stage("encoder_states", version=1, fn=None, defaults={
    "model_hash": "", "window_seconds": None, "clip_seconds": 5.0, "prefix_layer": None, "dtype": "float16",
    "precision": "fp32"},
    doc="a speech encoder's hidden states (all layers at real frames, or one prefix layer at all frames)")

# The forward's precision when a study says "auto", by where the encoder runs. On a GPU, fp16:
# on an H200 as fast as bf16 (HuBERT-base 1,851 against 1,881 clips/s at the forward's ceiling)
# and eight times closer to fp32 (largest layer's relative error 1.4e-3 against 1.1e-2; both
# encoders were trained in fp16). On a CPU with bf16 matrix support (oneDNN's), bf16: the cache
# of real RAVDESS through whisper-base in 66 s against 127 s, and the probe's test accuracy over
# 4 speaker folds 0.824 against fp32's 0.822 (docs/measurements.md); fp32 on other CPUs, where
# bf16 is emulated slowly. `encode_precision` names one instead.
AUTO_PRECISION = {"gpu": "fp16", "cpu": "bf16"}


def cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


CPU_BATCH = 8  # clips per forward on a CPU (bench/encoder_pass.py: HuBERT-base 6.1 clips/s at 8, 5.2 at 16; Whisper-base flat)
MAX_BATCH = 256  # on a GPU the batch is sized from its free memory, up to this
GPU_MEMORY_SHARE = 0.5  # of the free device memory, for one batch's activations and states
PENDING_WRITES = 4  # batches whose shard files are being written while the device works on
WRITE_THREADS = 0  # threads writing them (0: half the machine's cores; Parquet releases the GIL)
GPU_SHARD = 512  # clips per Ray Data shard when the encoder actors hold GPUs (a few batches each)


def resolve_precision(precision: str, gpus: float) -> str:
    """"auto" → the precision for where the actors run; anything else is checked and kept."""
    from ..models.speech import check_precision

    if precision != "auto":
        return check_precision(precision)
    if gpus:
        return AUTO_PRECISION["gpu"]
    return AUTO_PRECISION["cpu"] if cpu_has_bf16() else "fp32"


def actor_plan(requested: int | None = None) -> tuple[int, int]:
    """(encoder actors, GPUs per actor): one actor per GPU on a cluster; on a CPU machine one
    single-threaded actor per core. `requested` overrides the count.

    Counted on the Ray the cache will be computed on, started here if this process has none
    yet, as Ray Data would start it. A caller that had not started Ray (a script calling a
    workload's prepare) used to get one actor that asked for no GPU, at the CPU's precision:
    half of a 2-core machine. In-process (`--local`), one worker, which finds the GPU itself."""
    from .pipeline import without_ray

    if without_ray():
        return int(requested or 1), 0
    import ray

    from ..core.ray_start import start_ray

    start_ray()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    return int(requested or (gpus or cpus)), 1 if gpus else 0


def _log(message: str) -> None:
    import sys

    print(f"[emosweep] {message}", file=sys.stderr, flush=True)


class DeviceBatches:
    """The encode step both cache workers share: batches through a frozen encoder on its
    device, each batch's states cast to the cache's dtype there and copied back once, into
    pinned host memory, on a copy stream of its own, so the copy of batch k overlaps the
    forward of batch k + 1 and nothing waits for the device until a batch's states are needed.
    A batch the device has no memory for is split in two and tried again. Counts the device's
    busy seconds (CUDA events around each forward; the wall clock on a CPU)."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.busy_s = 0.0

    def run(self, chunks, step):
        """chunks: lists of items; step(chunk) → (device tensor, extra), enqueued without waiting.
        Yields (chunk, host array or None, extra, error) in the order the chunks finish."""
        import torch

        todo, pending = deque(chunks), None
        while todo:
            chunk = todo.popleft()
            t0 = time.perf_counter()
            start = torch.cuda.Event(enable_timing=True) if self.cuda else None
            if start is not None:
                start.record()
            try:
                states, extra = step(chunk)
            except torch.OutOfMemoryError as e:
                if self.cuda:
                    torch.cuda.empty_cache()
                if len(chunk) > 1:  # half the batch, twice
                    half = len(chunk) // 2
                    todo.extendleft([chunk[half:], chunk[:half]])
                    continue
                yield chunk, None, None, e
                continue
            except Exception as e:  # an encoder that cannot take this batch: the caller reports each item
                yield chunk, None, None, e
                continue
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                host = torch.empty(states.shape, dtype=states.dtype, pin_memory=True)
                self.copy_stream.wait_event(end)
                with torch.cuda.stream(self.copy_stream):
                    host.copy_(states, non_blocking=True)
                    states.record_stream(self.copy_stream)
                    copied = torch.cuda.Event()
                    copied.record(self.copy_stream)
                item = (chunk, host, extra, (start, end, copied))
            else:
                self.busy_s += time.perf_counter() - t0
                item = (chunk, states, extra, None)
            if pending is not None:
                yield self._finish(pending)
            pending = item
        if pending is not None:
            yield self._finish(pending)

    def _finish(self, item):
        chunk, host, extra, events = item
        if events is not None:
            start, end, copied = events
            copied.synchronize()
            self.busy_s += start.elapsed_time(end) / 1e3
        return chunk, host.numpy(), extra, None


def device_batch_size(step_one, clips: int, device) -> int:
    """Clips per forward: on a GPU, as many as GPU_MEMORY_SHARE of its free memory holds, from
    the memory one probe batch of two clips takes (`step_one(n)` runs a batch of n); on a CPU,
    CPU_BATCH. Never more than `clips` needs."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return max(1, min(CPU_BATCH, clips))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step_one(2)
    torch.cuda.synchronize(device)
    per_clip = max(1, (torch.cuda.max_memory_allocated(device) - before) / 2)
    free, _ = torch.cuda.mem_get_info(device)
    size = int(min(MAX_BATCH, max(1, GPU_MEMORY_SHARE * free // per_clip)))
    size = 1 << (size.bit_length() - 1)  # a power of two
    _log(f"encoder batch: {size} clips ({per_clip / 2**20:.0f} MiB a clip, {free / 2**30:.0f} GiB free)")
    return max(1, min(size, clips))


class _Writes:
    """Where a worker's batches go. With a GPU: a shard file per batch, written by a few
    background threads while the device works on the next batch (pyarrow and the file system
    release the GIL); at most PENDING_WRITES wait. With the encoder on the CPU: one shard file
    for the call, written at its end; a thread beside torch's would slow every one of its
    threads' matrix products, and a file (and its fsync) per batch cost Whisper-base 10% here."""

    def __init__(self, background: bool, stages: dict, fs_uri: str):
        import os
        from concurrent.futures import ThreadPoolExecutor

        self.stages, self.fs_uri = stages, fs_uri
        threads = WRITE_THREADS or max(1, (os.cpu_count() or 2) // 2)
        self.pool = ThreadPoolExecutor(threads) if background else None
        self.shared = None if background else ShardWriter(stages, fs_uri)
        self.futures, self.done = deque(), []

    def writer(self) -> ShardWriter:
        return self.shared if self.shared is not None else ShardWriter(self.stages, self.fs_uri)

    def submit(self, writer: ShardWriter) -> None:
        if self.pool is None:
            return  # the call's one file is written at close
        self.futures.append(self.pool.submit(writer.close))
        while len(self.futures) > PENDING_WRITES:
            self.done.append(self.futures.popleft().result())

    def close(self) -> list:
        if self.pool is None:
            return [self.shared.close()]
        while self.futures:
            self.done.append(self.futures.popleft().result())
        self.pool.shutdown()
        return self.done


def _device(device: str, threads: int) -> str:
    """An encoder actor's device ("auto": its GPU if it has one), after setting torch's threads."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def write_batches(steps: "DeviceBatches", chunks: list, step, stages: dict, fs_uri: str, stage: str, reason: str,
                  array, count: str) -> list:
    """Both workers' encode-and-write: each chunk of (uid, path, input) through `steps`, each
    item's `array(host, i, extra)` (extra: the step's per-item counts, recorded as `count`)
    to a shard, or the chunk's items reported with the encoder's error. Returns the shards'
    summaries."""
    writes = _Writes(steps.cuda, stages, fs_uri)
    for chunk, host, extra, error in steps.run(chunks, step):
        writer = writes.writer()
        for i, (uid, path, _) in enumerate(chunk):
            if error is not None:
                writer.failed(uid, path, [stage], "encoder", reason, f"{type(error).__name__}: {error}")
                continue
            writer.ok(uid, path, {stage: {"states": array(host, i, extra)}}, meta={count: int(extra[i])})
        writes.submit(writer)
    return writes.close()


def _timed_summary(frames: list, busy_s: float, wall_s: float) -> pd.DataFrame:
    """The shard's summary rows, each with an equal share of the device's busy seconds and the
    worker's wall seconds (the driver sums them into the encoder's busy fraction)."""
    out = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    n = max(1, len(out))
    return out.assign(busy_s=busy_s / n, wall_s=wall_s / n)


HASH = "content_hash"  # the audio stage the cache computes from the same decode, when asked (the split gate's)


def decode_rows(batch: pd.DataFrame, sr: int, clip_seconds: float, threads: int = 1, digest: bool = False,
                caps: dict | None = None) -> list:
    """(uid, path, wave cut to the clip or None, reason, detail, extra) for each row of a shard,
    decoded on `threads` threads (FFmpeg releases the GIL). With `digest`, extra holds the
    content_hash stage's output for the whole decoded clip and its length and source rate (what
    `data prepare` records), so one decode serves the split gate and the encoder."""
    from concurrent.futures import ThreadPoolExecutor

    from .features import content_hash

    clip = int(clip_seconds * sr)

    def one(row, recording):
        uid, path, segment = row
        info: dict = {}
        try:
            wave = read_and_decode(path, sr, **(caps or {}), segment=segment, info=info, recording=recording)
        except MediaError as e:
            return uid, path, None, e.reason, e.detail, {"limit": e.limit} if e.limit else {}
        extra = {"hash": content_hash(wave, sr)["content_hash"], "seconds": float(info.get("seconds", 0.0)),
                 "source_sr": int(info.get("source_sr", 0))} if digest else {}
        return uid, path, wave[:clip], "", "", extra

    def file(rows):  # one file's rows on one thread: a long recording's segments through one open file
        with Recording() as recording:
            return [one(r, recording) for r in rows]

    rows = list(zip(batch["uid"], batch["path"], segments(batch)))
    files: dict = {}
    for r in rows:
        files.setdefault(r[1], []).append(r)
    groups = list(files.values())
    with ThreadPoolExecutor(max(1, threads)) as pool:
        done = {r[0]: out for group, outs in zip(groups, pool.map(file, groups)) for r, out in zip(group, outs)}
    return [done[r[0]] for r in rows]


def decode_clips(batch: pd.DataFrame, sr: int, clip_seconds: float, digest: bool = False,
                 caps: dict | None = None) -> pd.DataFrame:
    """The decode stage that runs on CPUs ahead of GPU encoder actors (Ray Data streams it, so
    the actors encode one shard while CPUs decode the next): uid, path, the stages each row
    needs, the clip's float32 samples as bytes (null where it did not decode), the reason, and
    with `digest` the content hash, length and source rate (decode_rows)."""
    rows = decode_rows(batch, sr, clip_seconds, digest=digest, caps=caps)
    out = pd.DataFrame({"uid": [r[0] for r in rows], "path": [r[1] for r in rows],
                        "wave": [None if r[2] is None else np.ascontiguousarray(r[2], np.float32).tobytes()
                                 for r in rows],
                        "reason": [r[3] for r in rows], "detail": [r[4] for r in rows],
                        # the media limit that refused a clip (MediaError.limit), for the failed file
                        "limit_kind": [r[5]["limit"][0] if "limit" in r[5] else "" for r in rows],
                        "limit": [r[5]["limit"][1] if "limit" in r[5] else 0.0 for r in rows]})
    if "need" in batch:
        out["need"] = list(batch["need"])
    if digest:
        out["digest"] = [r[5]["hash"].tobytes() if "hash" in r[5] else None for r in rows]
        out["seconds"] = [r[5].get("seconds", 0.0) for r in rows]
        out["source_sr"] = [r[5].get("source_sr", 0) for r in rows]
    return out


def _predecoded(batch: pd.DataFrame) -> list:
    """decode_rows' tuples from the columns decode_clips wrote."""
    rows = []
    for i, (uid, path, wave) in enumerate(zip(batch["uid"], batch["path"], batch["wave"])):
        ok = isinstance(wave, (bytes, bytearray, memoryview))
        extra = {"hash": np.frombuffer(batch["digest"].iloc[i], np.uint8), "seconds": float(batch["seconds"].iloc[i]),
                 "source_sr": int(batch["source_sr"].iloc[i])} if ok and "digest" in batch else {}
        if not ok and "limit_kind" in batch and batch["limit_kind"].iloc[i]:
            extra = {"limit": (batch["limit_kind"].iloc[i], float(batch["limit"].iloc[i]))}
        rows.append((uid, path, np.frombuffer(wave, np.float32) if ok else None, batch["reason"].iloc[i],
                     batch["detail"].iloc[i], extra))
    return rows


class EncoderStatesWorker:
    """A Ray Data actor: builds the encoder once, then decodes and encodes shard after shard.
    `batch_size` 0: sized from the device (device_batch_size); `precision`: the forward's."""

    def __init__(self, model_path: str, window_seconds: float | None, device: str = "auto", threads: int = 0,
                 precision: str = "fp32", batch_size: int = 0):
        from ..models.speech import SpeechEncoder

        self.encoder = SpeechEncoder(model_path, window_seconds, _device(device, threads), precision)
        self.steps = DeviceBatches(self.encoder.device)
        self.threads, self.batch_size = max(1, threads), int(batch_size or 0)

    def __call__(self, batch: pd.DataFrame, stages: dict, fs_uri: str, sr: int, batch_size: int = 0,
                 caps: dict | None = None) -> pd.DataFrame:
        t0 = time.perf_counter()
        busy0 = self.steps.busy_s
        params = stages[STAGE.name]["params"]
        failed = ShardWriter(stages, fs_uri)
        hashing = HASH in stages
        if "wave" in batch:  # decoded ahead by the CPU stage (decode_clips); a clip that did not decode: null
            rows = _predecoded(batch)
        else:
            rows = decode_rows(batch, sr, float(params["clip_seconds"]), self.threads, digest=hashing, caps=caps)
        needs = [n.split(",") for n in batch["need"]] if "need" in batch else [[STAGE.name]] * len(batch)
        hashes = ShardWriter({HASH: stages[HASH]}, fs_uri) if hashing else None
        decoded, hash_only = [], set()
        for (uid, path, wave, reason, detail, extra), need in zip(rows, needs):
            if wave is None:
                failed.failed(uid, path, need, "decode", reason, detail, limit=extra.get("limit"))
                continue
            if HASH in need:
                hashes.ok(uid, path, {HASH: {"content_hash": extra["hash"]}},
                          {"seconds": extra["seconds"], "source_sr": extra["source_sr"]})
            if STAGE.name in need:
                decoded.append((uid, path, wave))
            else:
                hash_only.add(uid)
        if hashes is not None:  # one summary row per item: the hash's only for items not encoded
            hashed = hashes.close()
            failed.summary.extend(hashed[hashed["uid"].isin(hash_only)].to_dict("records"))
        frames = [failed.close(), *self.encode_and_write(decoded, stages, fs_uri, batch_size)]
        return _timed_summary(frames, self.steps.busy_s - busy0, time.perf_counter() - t0)

    def encode_and_write(self, decoded: list, stages: dict, fs_uri: str, batch_size: int = 0) -> list:
        """The cache's encode step on decoded clips [(uid, path, wave)]: longest first in
        batches, each batch's states written to a shard file of its own by a background thread.
        Returns the shard files' summaries."""
        import numpy as np
        import torch

        spec = stages[STAGE.name]
        params = spec["params"]
        seconds, prefix = float(params["clip_seconds"]), params["prefix_layer"]
        dtype = getattr(torch, np.dtype(params["dtype"]).name)
        if params.get("precision", "fp32") != self.encoder.precision:
            raise ValueError(f"the stage asks for {params.get('precision')} states; this worker computes "
                             f"{self.encoder.precision}")
        decoded = sorted(decoded, key=lambda d: -len(d[2]))
        if not decoded:
            return []
        size = batch_size or self.batch_size
        if not size:
            waves = [w for _, _, w in decoded[:2]]
            size = self.batch_size = device_batch_size(
                lambda n: self.encoder.cache_states((waves * n)[:n], seconds, dtype, prefix), MAX_BATCH,
                self.encoder.device)
        chunks = [decoded[i:i + size] for i in range(0, len(decoded), size)]

        def step(chunk):
            return self.encoder.cache_states([w for _, _, w in chunk], seconds, dtype, prefix)

        return write_batches(self.steps, chunks, step, stages, fs_uri, STAGE.name, "encoder failed",
                             lambda host, i, frames: host[i, :, :frames[i]] if prefix is None else host[i], "frames")


def _where(num_gpus: float) -> float:
    """GPUs the encoder runs on: the actors' share on Ray, else this process's own GPU (--local)."""
    from .pipeline import without_ray

    if num_gpus or not without_ray():
        return num_gpus
    import torch

    return 1 if torch.cuda.is_available() else 0


def encode_corpus(manifest: Manifest, model_path: str, *, window_seconds: float | None = None,
                  clip_seconds: float = 5.0, prefix_layer: int | None = None, dtype: str = "float16",
                  precision: str = "auto", fingerprint: str | None = None,
                  cache_dir: str | None = None, batch_size: int = 0, actors: int = 1, num_gpus: float = 0,
                  cpus_per_actor: int = 1, shard_size: int | None = None, progress: bool = True,
                  strict: bool = False, decode_stage: bool | None = None, with_hash: bool = False,
                  caps: dict | None = None) -> PrepareResult:
    """Encode every clip of the manifest once (what the cache holds already is reused).
    `fingerprint`: the manifest's, when the caller has computed it already. `precision`: the
    forward's (fp32, bf16, fp16; auto: AUTO_PRECISION for where it runs), part of the key.
    `batch_size` 0: sized from the device. `cpus_per_actor`: the actor's decode threads (and
    torch's). `decode_stage` (default: when the actors hold GPUs): decode on one-CPU Ray Data
    tasks streamed into the actors, so the device encodes one shard while the CPUs decode the
    next, instead of in the actor between its shards. `with_hash`: the content_hash stage (the
    split gate's digest of the decoded samples) is computed from the same decode and cached as
    `data prepare` caches it, so a cold cache decodes each clip once. `caps`: the decode's limits
    (audio.media_caps: a study's --max-seconds and --max-file-mb)."""
    from ..models.speech import encoder_content_hash

    gpus = _where(num_gpus)
    precision = resolve_precision(precision, gpus)
    params = {"model_hash": encoder_content_hash(model_path), "window_seconds": window_seconds,
              "clip_seconds": clip_seconds, "prefix_layer": prefix_layer, "dtype": dtype, "precision": precision}
    from .features import get_stage

    stages = {STAGE.name: (STAGE, params), **({HASH: (get_stage(HASH), {})} if with_hash else {})}
    return run_cached(
        manifest.name, fingerprint or manifest.fingerprint(), manifest.items, manifest.problems, stages,
        EncoderStatesWorker, {"sr": TARGET_SR, "batch_size": int(batch_size or 0), "caps": caps}, cache_dir=cache_dir,
        strict=strict, shard_size=shard_size or (GPU_SHARD if gpus else 32), progress=progress,
        key_context={"sr": TARGET_SR},
        actors={"init": {"model_path": model_path, "window_seconds": window_seconds, "threads": cpus_per_actor,
                         "precision": precision},
                "concurrency": actors, "num_gpus": num_gpus, "num_cpus": cpus_per_actor,
                "pre": (decode_clips, {"sr": TARGET_SR, "clip_seconds": clip_seconds, "digest": with_hash, "caps": caps})
                if (num_gpus if decode_stage is None else decode_stage) else None})


TEXT_STAGE = Stage("text_states", version=1, fn=None, defaults={
    "model_hash": "", "prefix_layer": 0, "max_length": 128, "dtype": "float16", "precision": "fp32"},
    doc="a text encoder's state entering one layer, at the transcript's real tokens")


class TextStatesWorker:
    """A Ray Data actor: builds the text encoder once, then encodes the transcripts of shard
    after shard (the `text` column; nothing is decoded), shortest first so a batch pads little,
    through the same device step as the speech cache."""

    def __init__(self, model_path: str, max_length: int, device: str = "auto", threads: int = 0,
                 precision: str = "fp32", batch_size: int = 0):
        from ..models.text import TextEncoder

        self.encoder = TextEncoder(model_path, max_length, _device(device, threads), precision)
        self.steps = DeviceBatches(self.encoder.device)
        self.batch_size = int(batch_size or 0)

    def __call__(self, batch: pd.DataFrame, stages: dict, fs_uri: str, batch_size: int = 0) -> pd.DataFrame:
        import numpy as np
        import torch

        t0, busy0 = time.perf_counter(), self.steps.busy_s
        params = stages[TEXT_STAGE.name]["params"]
        dtype, prefix = getattr(torch, np.dtype(params["dtype"]).name), int(params["prefix_layer"])
        rows = sorted(zip(batch["uid"], batch["path"], batch["text"].fillna("")), key=lambda r: len(r[2]))
        size = batch_size or self.batch_size
        if not size:
            longest = [rows[-1][2]] if rows else [""]
            size = self.batch_size = device_batch_size(
                lambda n: self.encoder.cache_states(longest * n, prefix, dtype), MAX_BATCH, self.encoder.device)
        chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
        frames = write_batches(self.steps, chunks,
                               lambda chunk: self.encoder.cache_states([t for _, _, t in chunk], prefix, dtype),
                               stages, fs_uri, TEXT_STAGE.name, "text encoder failed",
                               lambda host, i, lengths: host[i, :lengths[i]], "tokens")
        frames = frames or [ShardWriter(stages, fs_uri).close()]
        return _timed_summary(frames, self.steps.busy_s - busy0, time.perf_counter() - t0)


def encode_texts(manifest: Manifest, model_path: str, *, prefix_layer: int, max_length: int = 128,
                 dtype: str = "float16", precision: str = "auto", fingerprint: str | None = None,
                 cache_dir: str | None = None, batch_size: int = 0, actors: int = 1, num_gpus: float = 0,
                 cpus_per_actor: int = 1, shard_size: int = 256, progress: bool = True) -> PrepareResult:
    """Encode every transcript of the manifest once, up to the state entering layer
    `prefix_layer` (what the cache holds already is reused). `precision` and `batch_size` as
    in encode_corpus."""
    from ..models.speech import encoder_content_hash

    precision = resolve_precision(precision, _where(num_gpus))
    params = {"model_hash": encoder_content_hash(model_path), "prefix_layer": prefix_layer,
              "max_length": max_length, "dtype": dtype, "precision": precision}
    return run_cached(
        manifest.name, fingerprint or manifest.fingerprint(), manifest.items, manifest.problems,
        {TEXT_STAGE.name: (TEXT_STAGE, params)}, TextStatesWorker, {"batch_size": int(batch_size or 0)},
        cache_dir=cache_dir, shard_size=shard_size, progress=progress, unit="transcripts",
        actors={"init": {"model_path": model_path, "max_length": max_length, "threads": cpus_per_actor,
                         "precision": precision},
                "concurrency": actors, "num_gpus": num_gpus, "num_cpus": cpus_per_actor})
