"""The 4-fold S2 study on real RAVDESS, from a cold cache: what K folds cost.

Encodes the corpus once (the frozen-encoder cache is per corpus, not per fold), then runs
arms × folds trials on the cached states. Prints each phase's wall time, the encoder's share,
the cost of one trial, and the whole against the 30-minute budget on 2 CPU cores.

    python bench/s2_folds.py                                   # seven poolings × 4 folds, cold cache
    python bench/s2_folds.py --arms masked_mean,probe --folds 2
    python bench/s2_folds.py --warm                            # reuse $EMOSWEEP_HOME's cache
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from smallest import parse  # noqa: E402  (bench/, beside this file)

ROOT = Path(__file__).resolve().parents[1]
SEVEN = "masked_mean,masked_max,mean_std,attention,first_frame,weighted_layers,layer_mean"
BUDGET_S = 30 * 60
DEFAULT_DATA = str(ROOT.parent / "shared" / "data" / "ravdess")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--folds", default="4")
    p.add_argument("--arms", default=SEVEN)
    p.add_argument("--warm", action="store_true", help="keep $EMOSWEEP_HOME (its cache may hold the states)")
    p.add_argument("extra", nargs="*", help="more flags for the study, after --")
    opts = parse(p, folds="2", arms="masked_mean,probe")
    if opts.quick and opts.data_dir == DEFAULT_DATA:  # the smallest: a generated look-alike, one epoch, whisper-tiny.en
        sys.path.insert(0, str(ROOT))
        from workloads.data.synth import ensure_generated

        opts.data_dir = str(ensure_generated(Path(tempfile.mkdtemp(prefix="emosweep-bench-s2-data-")), "ravdess",
                                             96, 42, difficulty=0.5))
        opts.extra = [*opts.extra, "--epochs", "1", "--model", "whisper-tiny.en"]  # the cheapest real encoder
    if not Path(opts.data_dir).is_dir():
        raise SystemExit(f"{opts.data_dir}: no such folder (real RAVDESS, e.g. ../shared/data/ravdess)")
    home = None
    if not opts.warm:  # a fresh home: nothing cached, the shelf model converted again
        home = tempfile.mkdtemp(prefix="emosweep-bench-s2-")
        os.environ["EMOSWEEP_HOME"] = home
    sys.path.insert(0, str(ROOT))
    from sweeps.hubert_pooling import STUDY
    from sweeps.runner import main as run

    t = time.perf_counter()
    table = run(STUDY, ["--data-dir", opts.data_dir, "--folds", opts.folds, "--arms", opts.arms,
                        "--name", f"bench-s2-folds-{int(time.time())}", *opts.extra])
    total = time.perf_counter() - t
    timings = table.attrs["timings"]
    n = len(table)
    fit = timings["tune_fit_s"]
    print("\nbench/s2_folds.py")
    print(f"  cache: {'cold (' + home + ')' if home else 'warm'}; {n} trials "
          f"({len(opts.arms.split(','))} arms × {n // max(len(opts.arms.split(',')), 1)} folds)")
    print(f"  prepare (read, hash, encode once): {timings['prepare_s']:8.1f} s  ({timings['prepare_s'] / total:.0%})")
    print(f"  trials on cached states:           {fit:8.1f} s  ({fit / total:.0%}), {fit / max(n, 1):.1f} s per trial "
          f"of wall time")
    print(f"  total:                             {total:8.1f} s  = {total / BUDGET_S:.2f} × the 30-minute budget")


if __name__ == "__main__":
    main()
