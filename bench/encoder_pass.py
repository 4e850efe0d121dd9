"""The frozen-encoder cache's encode step against the device's ceiling for the same encoder.

    python bench/encoder_pass.py                        # HuBERT-base and Whisper-base shapes, this device
    python bench/encoder_pass.py --quick                # tiny shapes, seconds (the suite runs this)
    python bench/encoder_pass.py --model DIR --clips 512 --json out.json

Per encoder, side by side in one run:
- **path**: the cache worker's own encode-and-write (`EncoderStatesWorker.encode_and_write`)
  on decoded clips, as a cache run does it: longest first in batches sized from the device,
  the forward in the chosen precision, states cast to float16 on the device, one copy back
  per batch, and shard files written to a temporary cache by background threads. No Ray: it
  runs on a bare GPU box with PyTorch alone.
- **ceiling**: the same encoder's forward alone, inputs ready on the device, at the best of
  several batch sizes, in the same precision. Path and ceiling are timed in interleaved rounds
  (`--repeats`, medians), so a drift in the machine's speed moves both.
- **fp32 path**: the path in float32, for what the precision buys.
- **one layer**: the path storing one layer's state (S1's prefix cache) instead of every
  layer's (S2's): what the host's share of the work costs when the bytes shrink.
- **parity**: per layer, the chosen precision's states against float32's on the same clips
  (relative error ‖a − b‖ / ‖b‖ over real frames); the largest layer's is printed.

Clips are 2.9–4.6 s of noise-like audio (RAVDESS's lengths; 3.7 s on average), padded to the
5-s window as S2's default. Weights are random with the real shapes (HuBERT-base 12 × 768,
Whisper-base's encoder 6 × 512, 5-s window): speed does not depend on their values; `--model`
times a real folder. Prints clips/s, seconds of audio a second, TFLOP/s (FlopCounterMode on
one clip's forward) and the path's share of the ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads.data.encoder_cache import STAGE, EncoderStatesWorker  # noqa: E402
from workloads.models.speech import SpeechEncoder, autocast  # noqa: E402

CLIP_SECONDS = 5.0
SR = 16000


def make_encoder(kind: str, out: Path, quick: bool) -> str:
    """A random-init HuBERT-base or Whisper-base encoder folder (the real shapes; tiny with
    --quick), saved with save_pretrained and loaded back through the cache's own loader."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    folder = out / kind
    torch.manual_seed(0)
    if kind == "hubert-base":
        size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(32,) * 7) if quick else {}
        HubertModel(HubertConfig(**size)).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True,
                                 return_attention_mask=False).save_pretrained(folder)
    elif kind == "whisper-base":
        size = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64) if quick else dict(
            d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048)
        WhisperEncoder(WhisperConfig(num_mel_bins=80, max_source_positions=1500, **size)).save_pretrained(folder)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    else:
        raise SystemExit(f"unknown encoder {kind!r}: hubert-base or whisper-base (or --model DIR)")
    return str(folder)


def clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(SR * s))).astype(np.float32) for s in rng.uniform(2.9, 4.6, n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CachePath:
    """The worker's encode-and-write on decoded clips, into a temporary cache: `once()` times one
    pass over every clip (the same shard files each pass)."""

    def __init__(self, model: str, window: float | None, precision: str, waves: list, device: str,
                 prefix: int | None = None):
        self.worker = EncoderStatesWorker(model, window, device=device, precision=precision)
        self.tmp = tempfile.TemporaryDirectory()
        cache = self.tmp.name
        params = {**STAGE.defaults, "clip_seconds": CLIP_SECONDS, "precision": precision, "window_seconds": window,
                  "prefix_layer": prefix}
        os.makedirs(f"{cache}/warm-up")
        self.cache, self.n = cache, len(waves)
        self.stages = {STAGE.name: {"params": params, "dir": cache}}
        self.decoded = [(f"c{i}", f"c{i}.wav", w) for i, w in enumerate(waves)]
        warm = {STAGE.name: {"params": params, "dir": f"{cache}/warm-up"}}
        self.worker.encode_and_write(self.decoded[:16], warm, cache)  # sizes the batch, warms the kernels
        self.worker_batch = self.worker.batch_size
        self.busy = []

    def once(self) -> float:
        device = self.worker.encoder.device
        sync(device)
        start, busy0 = time.perf_counter(), self.worker.steps.busy_s
        summaries = self.worker.encode_and_write(self.decoded, self.stages, self.cache)
        sync(device)
        elapsed = time.perf_counter() - start
        written = sum(int(s["ok"].sum()) for s in summaries)
        if written != self.n:
            raise SystemExit(f"the path wrote {written} of {self.n} clips")
        self.busy.append((self.worker.steps.busy_s - busy0) / elapsed)
        return self.n / elapsed

    def mb_per_clip(self) -> float:
        return sum(f.stat().st_size for f in Path(self.cache).glob("shard-*.parquet")) / 2**20 / self.n

    def close(self) -> None:
        self.tmp.cleanup()
        del self.worker


def ceiling_at(encoder: SpeechEncoder, x: torch.Tensor, seconds: float) -> float:
    """Clips/s of the forward alone on the ready batch `x`, for `seconds` after two warm-ups."""
    with torch.inference_mode(), autocast(encoder.device, encoder.precision):
        for _ in range(2):
            encoder.model(x, output_hidden_states=True)
        sync(encoder.device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 2:
            encoder.model(x, output_hidden_states=True)
            n += 1
        sync(encoder.device)
    return n * x.shape[0] / (time.perf_counter() - start)


def ready(encoder: SpeechEncoder, waves: list, batch: int) -> torch.Tensor:
    return encoder.inputs((waves * (batch // len(waves) + 1))[:batch], "fixed", CLIP_SECONDS)


def best_batch(encoder: SpeechEncoder, waves: list, batches: list[int], seconds: float) -> dict:
    """The forward alone, inputs on the device, at each batch size: {batch: clips/s}."""
    rows = {}
    for b in batches:
        try:
            x = ready(encoder, waves, b)
            rows[b] = ceiling_at(encoder, x, seconds)
        except torch.OutOfMemoryError:
            break
        del x
    return rows


def flops_per_clip(model_path: str, window: float | None, wave: np.ndarray) -> float:
    from torch.nn.utils import parametrize
    from torch.utils.flop_counter import FlopCounterMode

    encoder = SpeechEncoder(model_path, window)  # a copy of its own, on the CPU: the counter cannot trace
    model = encoder.model  # HuBERT's weight-normed positional conv, so the norm is folded in (the same products)
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name)
    x = encoder.inputs([wave], "fixed", CLIP_SECONDS)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x, output_hidden_states=True)
    del model
    return float(counter.get_total_flops())


def parity(model: str, window: float | None, precision: str, waves: list, device: str) -> list[float]:
    """Per layer: ‖states(precision) − states(fp32)‖ / ‖states(fp32)‖ over each clip's real frames."""
    out = {}
    for p in ("fp32", precision):
        enc = SpeechEncoder(model, window, device, p)
        with torch.inference_mode():
            states, frames = enc.cache_states(waves, CLIP_SECONDS, torch.float32)
        out[p] = [states[i, :, :f].double().cpu() for i, f in enumerate(frames)]
    ref, got = torch.cat(out["fp32"], 1), torch.cat(out[precision], 1)
    return [float((got[j] - ref[j]).norm() / ref[j].norm()) for j in range(ref.shape[0])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", default="hubert-base,whisper-base")
    ap.add_argument("--model", help="time this encoder folder instead (its name in the table)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", help="the mixed precision to time beside fp32 (default: fp16 on a GPU, as the "
                                        "cache's auto; bf16 on a CPU, which has bf16 matrix units here)")
    ap.add_argument("--clips", type=int, help="clips per timed pass (default 512 on a GPU, 32 on a CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of path and ceiling (medians)")
    ap.add_argument("--batches", help="the ceiling's batch sizes (default 8..256 on a GPU, 8,16,32 on a CPU)")
    ap.add_argument("--seconds", type=float, help="seconds per ceiling batch size (default 3 on a GPU, 8 on a CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few clips: a smoke run in seconds")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    args.precision = args.precision or ("fp16" if gpu else "bf16")
    n = args.clips or (8 if args.quick else 512 if gpu else 32)
    batches = [int(b) for b in (args.batches or ("4,8" if args.quick else "16,32,64,128,256" if gpu else "8,16,32")).split(",")]
    seconds = args.seconds or (0.5 if args.quick else 3.0 if gpu else 8.0)
    waves = clips(n)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {n} clips, {sum(map(len, waves)) / SR / n:.2f} s on "
          f"average, padded to {CLIP_SECONDS:g} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(Path(args.model).name, args.model)] if args.model else [
            (k, make_encoder(k, Path(tmp), args.quick)) for k in args.encoders.split(",")]
        for label, model in models:
            probe = SpeechEncoder(model, None, device)
            window = CLIP_SECONDS if probe.whisper else None
            top = len(probe.layers)
            del probe
            enc = SpeechEncoder(model, window, device, args.precision)
            flops = flops_per_clip(model, window, waves[0])
            sweep = best_batch(enc, waves, batches, seconds)
            best = max(sweep, key=sweep.get)
            x = ready(enc, waves, best)
            path = CachePath(model, window, args.precision, waves, str(device))
            rounds = {"path": [], "ceiling": []}
            for _ in range(args.repeats):  # interleaved, so a drift in the machine's speed hits both
                rounds["ceiling"].append(ceiling_at(enc, x, seconds))
                rounds["path"].append(path.once())
            path_rate, ceiling_rate = float(np.median(rounds["path"])), float(np.median(rounds["ceiling"]))
            busy, mb = float(np.median(path.busy)), path.mb_per_clip()
            path.close()
            del enc, x
            others = {}
            for key, precision, prefix in (("fp32", "fp32", None), ("one", args.precision, top)):
                other = CachePath(model, window, precision, waves, str(device), prefix)
                others[key] = float(np.median([other.once() for _ in range(max(1, args.repeats // 2))]))
                other.close()
            errors = parity(model, window, args.precision, waves[:8], str(device))
            mean_s = sum(map(len, waves)) / SR / n
            row = {"encoder": label, "device": name, "precision": args.precision, "gflop_per_clip": flops / 1e9,
                   "path_clips_per_s": path_rate, "path_batch": path.worker_batch, "path_busy": busy,
                   "path_mb_per_clip": mb, "rounds": rounds,
                   "one_layer_clips_per_s": others["one"], "one_layer_share": others["one"] / ceiling_rate,
                   "fp32_path_clips_per_s": others["fp32"], "ceiling_clips_per_s": ceiling_rate,
                   "ceiling_batch": best, "ceiling_by_batch": sweep,
                   "share": path_rate / ceiling_rate,
                   "path_tflops": path_rate * flops / 1e12,
                   "ceiling_tflops": ceiling_rate * flops / 1e12,
                   "audio_s_per_s": path_rate * mean_s,
                   "parity_max_rel": max(errors), "parity_by_layer": errors}
            rows.append(row)
            print(f"{label}: ceiling by batch " + ", ".join(f"{b}: {v:.1f}" for b, v in sweep.items())
                  + "; rounds (path / ceiling) " + ", ".join(f"{p:.1f} / {c:.1f}" for p, c in
                                                             zip(rounds["path"], rounds["ceiling"]))
                  + f"; parity by layer " + ", ".join(f"{e:.1e}" for e in errors), flush=True)
    print(f"\n| encoder | GFLOP a clip | path, {args.precision} (clips/s) | batch | busy | path, fp32 | ceiling "
          f"(clips/s) | ceiling batch | path TFLOP/s | ceiling TFLOP/s | audio s/s | share of ceiling | "
          f"parity (max rel.) | MB a clip | one layer (clips/s) | its share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['encoder']} | {r['gflop_per_clip']:.1f} | {r['path_clips_per_s']:.1f} | {r['path_batch']} | "
              f"{r['path_busy']:.0%} | {r['fp32_path_clips_per_s']:.1f} | {r['ceiling_clips_per_s']:.1f} | "
              f"{r['ceiling_batch']} | {r['path_tflops']:.2f} | {r['ceiling_tflops']:.2f} | "
              f"{r['audio_s_per_s']:.0f} | **{r['share']:.2f}** | {r['parity_max_rel']:.1e} | "
              f"{r['path_mb_per_clip']:.2f} | {r['one_layer_clips_per_s']:.1f} | {r['one_layer_share']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
