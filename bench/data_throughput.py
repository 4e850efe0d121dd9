"""How fast does the media pipeline turn mp4 clips into features?

On one generated MELD look-alike corpus (real mp4 files: H.264 video + AAC stereo 48 kHz),
the same features (S4's 46 per-frame features, S5's mean MFCCs and spectral statistics) are
computed four ways, side by side in one run:
  (a) serial, the reports' way: the ffmpeg command line converts each clip to a 16 kHz mono
      wav, librosa loads it and computes the features, one file at a time;
  (b) the same per-file work in a thread pool (the S5 report's speed-up);
  (c) the Ray Data pipeline (`workloads.data.pipeline.prepare`) into an empty cache;
  (d) (c) again, warm: the same call against the cache it just filled.
It prints files per second and the ratios.

    pip install -e ".[dev,bench]"            # the ffmpeg program for (a) and (b)
    python bench/data_throughput.py          # 1000 clips (generated once, kept in --work)
    python bench/data_throughput.py --clips 200 --skip-serial
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STAGES = ["frame46", "mfcc_mean", "spectral_stats"]


def corpus(work: Path, clips: int, seed: int):
    """A MELD look-alike with at least `clips` mp4 files; the manifest keeps `clips` of them."""
    from workloads.data.corpora import read_meld
    from workloads.data.synth import generate

    root = work / f"meld-{clips}-s{seed}"
    if not (root / "_synth.json").exists():
        t = time.perf_counter()
        print(f"generating {clips} mp4 clips in {root} ...", flush=True)
        generate("meld", root, int(clips * 1.06) + 5, seed=seed)  # 1 in 20 is a .mp4.wav quirk
        print(f"  generated in {time.perf_counter() - t:.0f} s", flush=True)
    m = read_meld(root)
    mp4 = m.items[m.items["path"].str.lower().str.endswith(".mp4")]
    if len(mp4) < clips:
        raise SystemExit(f"{root} holds only {len(mp4)} mp4 clips; delete it to regenerate")
    m.items = mp4.head(clips).reset_index(drop=True)
    return m


def features_via_cli(path: str, ffmpeg: str, tmp: str) -> dict:
    """(a)/(b) per file: ffmpeg CLI → wav → librosa.load → the stage functions."""
    import librosa

    from workloads.data.features import STAGES as REGISTRY

    wav = os.path.join(tmp, f"{os.getpid()}-{abs(hash(path))}.wav")
    subprocess.run([ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-i", path, "-vn", "-ac", "1", "-ar", "16000",
                    wav], check=True)
    y, sr = librosa.load(wav, sr=16000)
    os.remove(wav)
    out = {}
    for name in STAGES:
        out.update(REGISTRY[name](y, sr))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "emosweep-bench-data"),
                        help="where the generated corpus is kept between runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--skip-serial", action="store_true", help="skip (a) and (b)")
    args = parser.parse_args()

    import ray

    from workloads.data.pipeline import load_features, prepare

    work = Path(args.work)
    manifest = corpus(work, args.clips, args.seed)
    paths = manifest.items["path"].tolist()
    n = len(paths)
    rows = {}
    if not args.skip_serial:
        try:
            import imageio_ffmpeg
        except ImportError:
            raise SystemExit('(a) and (b) need the ffmpeg program: pip install -e ".[bench]" (or --skip-serial)')
        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        features_via_cli(paths[0], ffmpeg, tempfile.gettempdir())  # warm imports and numba caches
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            for p in paths:
                features_via_cli(p, ffmpeg, tmp)
            rows["(a) serial: ffmpeg CLI + librosa"] = time.perf_counter() - t
            print(f"(a) {rows['(a) serial: ffmpeg CLI + librosa']:.1f} s", flush=True)
            t = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(lambda p: features_via_cli(p, ffmpeg, tmp), paths))
            rows[f"(b) thread pool ({args.threads} threads)"] = time.perf_counter() - t
            print(f"(b) {rows[f'(b) thread pool ({args.threads} threads)']:.1f} s", flush=True)

    t = time.perf_counter()
    ray.init(log_to_driver=False)
    ray_start = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as cache:
        cold = prepare(manifest, STAGES, cache_dir=cache, shard_size=args.shard_size, progress=False)
        assert cold.decoded == n and len(cold.errors) == 0, cold.summary()
        rows["(c) Ray Data pipeline, empty cache"] = cold.seconds
        t = time.perf_counter()
        warm = prepare(manifest, STAGES, cache_dir=cache, progress=False)
        rows["(d) (c) again, warm cache"] = time.perf_counter() - t
        assert warm.decoded == 0
        t = time.perf_counter()
        for stage in STAGES:
            items, arrays = load_features(warm, stage)
            assert len(items) == n
        load = time.perf_counter() - t
    ray.shutdown()

    print(f"\n{n} mp4 clips (H.264 + AAC stereo 48 kHz, 1.0-2.5 s) → {', '.join(STAGES)}; "
          f"{os.cpu_count()} CPU cores\n")
    print(f"| method | seconds | files/s |\n|---|---|---|")
    for name, sec in rows.items():
        print(f"| {name} | {sec:.2f} | {n / sec:.1f} |")
    a = next((v for k, v in rows.items() if k.startswith("(a)")), None)
    b = next((v for k, v in rows.items() if k.startswith("(b)")), None)
    c, d = rows["(c) Ray Data pipeline, empty cache"], rows["(d) (c) again, warm cache"]
    print()
    if a:
        print(f"(c) vs (a): {a / c:.2f}x   (target >= 1.7x)")
        print(f"(c) vs (b): {b / c:.2f}x")
        print(f"(b) vs (a): {a / b:.2f}x")
    print(f"(d) vs (c): {c / d:.1f}x   (target >= 20x)")
    print(f"\nnot in the rows: Ray start {ray_start:.1f} s (once per session; a cluster is already up); "
          f"loading all three stages' arrays from the warm cache {load:.2f} s")


if __name__ == "__main__":
    main()
