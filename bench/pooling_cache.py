"""What the frozen-encoder cache buys: S2's seven pooling arms (one trial each) reading
cached encoder states, against ONE arm run the naive way (the frozen encoder run live on
every batch of every epoch), both cold (a fresh $EMOSWEEP_HOME: no cache, no models built).

    python bench/pooling_cache.py                                    # generated RAVDESS look-alike
    python bench/pooling_cache.py --data-dir ../shared/data/ravdess --epochs 3
    python bench/pooling_cache.py --n 240 --epochs 3                 # quicker

Goal (S2 issue): the seven cached arms together take at most 1.3× the time of one naive arm
(naive for all seven would be about 7×). Both runs are whole `python sweeps/hubert_pooling.py`
processes, Ray and MLflow start-up included; the encoder is the shelf's whisper-base
(5-s window) unless --model says otherwise.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smallest import parse  # noqa: E402  (bench/, beside this file)

ROOT = Path(__file__).resolve().parents[1]
ARMS = "masked_mean,masked_max,mean_std,attention,first_frame,weighted_layers,layer_mean"


def run(label: str, args: list[str], home: Path) -> float:
    env = {**os.environ, "EMOSWEEP_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "sweeps" / "hubert_pooling.py"), *args], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"{label} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    print(f"\n{label}: {seconds:.1f} s\n" + "\n".join(table), flush=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="a RAVDESS folder (default: a generated look-alike)")
    p.add_argument("--n", type=int, default=480, help="clips of the generated look-alike")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default="whisper-base")
    args = parse(p, n=48, epochs=1, model="whisper-tiny.en")  # the cheapest real encoder
    common = ["--epochs", str(args.epochs), "--model", args.model, "--verbose", "0", "--max-concurrent", "2",
              "--set", "speaker_norm=false"]  # the live mode has no cached states to normalize
    with tempfile.TemporaryDirectory(prefix="emosweep-bench-pool-") as work:
        work = Path(work)
        data = args.data_dir
        if not data:  # generated once, before and outside both timed runs
            from workloads.data.synth import ensure_generated

            data = ensure_generated(work / "data", "ravdess", args.n, 42, difficulty=0.5)
        common += ["--data-dir", str(data)]
        cached = run("seven arms, cached encoder states (cold)", ["--arms", ARMS, *common], work / "home-cached")
        naive = run("one arm, encoder run live every batch (cold)",
                    ["--arms", "masked_mean", "--set", "encoder_mode=live", *common], work / "home-naive")
    print(f"\nseven cached arms / one naive arm = {cached / naive:.2f}×  (goal ≤ 1.3×; seven naive arms ≈ 7×)")


if __name__ == "__main__":
    main()
