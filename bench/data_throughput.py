"""How fast does the media pipeline turn audio files into features?

On one corpus, the same features are computed four ways, side by side in one run:
  (a) serial, the reports' way: the ffmpeg command line converts each clip to a 16 kHz mono
      wav, librosa loads it and computes the features, one file at a time;
  (b) the same per-file work in a thread pool (the S5 report's speed-up: 69.5 s serial
      against 37.7 s with a thread pool);
  (c) the Ray Data pipeline (`workloads.data.pipeline.prepare`) into an empty cache;
  (d) (c) again, warm: the same call against the cache it just filled.
It prints files per second and the ratios.

Corpora: `--corpus meld` (default), a generated MELD look-alike of mp4 files (H.264 video +
AAC stereo 48 kHz) with S4's 46 per-frame features and S5's statistics; `--corpus speakers` or
`audiomnist`, S5's own look-alikes (wav) with S5's features (MFCC + deltas, MFCC statistics,
spectral statistics); or any corpus a reader knows, given with --data-dir (the real RAVDESS
speech in ../shared/data/ravdess with --corpus ravdess).

    pip install -e ".[dev,bench]"            # the ffmpeg program for (a) and (b)
    python bench/data_throughput.py          # 1000 clips (generated once, kept in --work)
    python bench/data_throughput.py --corpus speakers --clips 1000
    python bench/data_throughput.py --corpus ravdess --data-dir ../shared/data/ravdess --clips 1440
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

from smallest import parse  # noqa: E402  (bench/, beside this file)

MELD_STAGES = ["frame46", "mfcc_mean", "spectral_stats"]
S5_STAGES = ["mfcc", "mfcc_stats", "spectral_stats"]


def corpus(work: Path, clips: int, seed: int, kind: str = "meld", data_dir: str | None = None):
    """The corpus to time, with `clips` of its items: a folder given in a reader's layout, or a
    look-alike generated once under `work` (MELD: mp4 files only)."""
    from workloads.data.corpora import read_corpus
    from workloads.data.synth import generate

    if data_dir:
        m = read_corpus(kind, data_dir)
    else:
        root = work / f"{kind}-{clips}-s{seed}"
        if not (root / "_synth.json").exists():
            t = time.perf_counter()
            print(f"generating {clips} {kind} clips in {root} ...", flush=True)
            generate(kind, root, int(clips * 1.06) + 5 if kind == "meld" else clips, seed=seed)  # MELD: 1 in 20 is a .mp4.wav
            print(f"  generated in {time.perf_counter() - t:.0f} s", flush=True)
        m = read_corpus(kind, root)
        if kind == "meld":
            m.items = m.items[m.items["path"].str.lower().str.endswith(".mp4")]
    if len(m.items) < clips:
        raise SystemExit(f"{data_dir or root} holds only {len(m.items)} usable clips; ask for fewer (--clips)")
    m.items = m.items.head(clips).reset_index(drop=True)
    return m


def features_via_cli(path: str, ffmpeg: str, tmp: str, stages: list) -> dict:
    """(a)/(b) per file: ffmpeg CLI → wav → librosa.load → the stage functions."""
    import librosa

    from workloads.data.features import STAGES as REGISTRY

    wav = os.path.join(tmp, f"{os.getpid()}-{abs(hash(path))}.wav")
    subprocess.run([ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-i", path, "-vn", "-ac", "1", "-ar", "16000",
                    wav], check=True)
    y, sr = librosa.load(wav, sr=16000)
    os.remove(wav)
    out = {}
    for name in stages:
        out.update(REGISTRY[name](y, sr))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--corpus", default="meld", help="meld, speakers, audiomnist (generated), or any reader's "
                        "name with --data-dir")
    parser.add_argument("--data-dir", help="a real corpus in the --corpus reader's layout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "emosweep-bench-data"),
                        help="where the generated corpus is kept between runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--skip-serial", action="store_true", help="skip (a) and (b)")
    args = parse(parser, clips=32)

    import ray

    from workloads.core.ray_start import start_ray
    from workloads.data.pipeline import load_features, prepare

    stages = MELD_STAGES if args.corpus == "meld" else S5_STAGES
    work = Path(args.work)
    manifest = corpus(work, args.clips, args.seed, args.corpus, args.data_dir)
    paths = manifest.items["path"].tolist()
    n = len(paths)
    rows = {}
    if not args.skip_serial:
        try:
            import imageio_ffmpeg
        except ImportError:
            raise SystemExit('(a) and (b) need the ffmpeg program: pip install -e ".[bench]" (or --skip-serial)')
        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        features_via_cli(paths[0], ffmpeg, tempfile.gettempdir(), stages)  # warm imports and numba caches
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            for p in paths:
                features_via_cli(p, ffmpeg, tmp, stages)
            rows["(a) serial: ffmpeg CLI + librosa"] = time.perf_counter() - t
            print(f"(a) {rows['(a) serial: ffmpeg CLI + librosa']:.1f} s", flush=True)
            t = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(lambda p: features_via_cli(p, ffmpeg, tmp, stages), paths))
            rows[f"(b) thread pool ({args.threads} threads)"] = time.perf_counter() - t
            print(f"(b) {rows[f'(b) thread pool ({args.threads} threads)']:.1f} s", flush=True)

    t = time.perf_counter()
    start_ray()
    ray_start = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as cache:
        cold = prepare(manifest, stages, cache_dir=cache, shard_size=args.shard_size, progress=False)
        assert cold.decoded == n and len(cold.errors) == 0, cold.summary()
        rows["(c) Ray Data pipeline, empty cache"] = cold.seconds
        t = time.perf_counter()
        warm = prepare(manifest, stages, cache_dir=cache, progress=False)
        rows["(d) (c) again, warm cache"] = time.perf_counter() - t
        assert warm.decoded == 0
        t = time.perf_counter()
        for stage in stages:
            items, arrays = load_features(warm, stage)
            assert len(items) == n
        load = time.perf_counter() - t
    ray.shutdown()

    what = ("mp4 clips (H.264 + AAC stereo 48 kHz, 1.0-2.5 s)" if args.corpus == "meld" and not args.data_dir
            else f"{args.corpus} clips" + (f" from {args.data_dir}" if args.data_dir else " (generated look-alike)"))
    print(f"\n{n} {what} → {', '.join(stages)}; {os.cpu_count()} CPU cores\n")
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
