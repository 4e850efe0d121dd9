"""How emosweep's cost grows with the work: clips, segments, the encoder cache, trials.

Each stage runs as the user runs it, in a fresh process, at every size given, side by side:
  data      `emosweep data prepare cremad` of a generated CREMA-D look-alike (2–4 s clips; the
            layout grows to any size; smaller sizes are hard links into the largest) with
            MFCC statistics and the content hash, into an empty cache; then the same command
            again on the full cache (the check every sweep's driver makes of its corpus);
  segments  one generated 20-minute recording (WAV and MP3) cut into 256 manifest segments of
            3 s: the first 32 and the last 32 decoded as the pipeline decodes them (seeking),
            and, beside them, decoded from the file's start (how segments were read before);
  encoder   S2's prepare (`speech_pooling.prepare`: the encoder cache, one decode per clip for
            the states and the split gate's hash, the index the trials map the shards by) with the shelf's
            whisper-tiny.en, the cheapest real encoder, on the same look-alikes;
  trials    a sweep of N cheap trials (`sweeps/audiomnist_mlp.py --smoke`, one epoch each) with
            MLflow and the report, on a fresh home (its own Ray, MLflow server and experiment):
            wall and the driver's CPU per trial, Tune's experiment state, a run look-up by tag
            against a fetch by id, and `emosweep ui` plus the view's first page of runs.

Per stage it fits cost = fixed + per_item × n over the sizes (least squares) and prints each
size's per-item cost with the fixed part taken out, against the smallest size's. Memory is per
process, sampled from /proc every 0.5 s across every process the stage starts (the command,
Ray's GCS, raylet and workers, the MLflow server): the driver's peak and the largest other
process's, anonymous memory (what the process itself holds); file-backed and shared pages
(the page cache it maps, Ray's object store) apart. Disk: the cache's bytes against its arrays'
own bytes. It draws the curves (log–log) to --png.

    python bench/scale.py                                      # 1000,4000,16000 clips; 64,1024 trials
    python bench/scale.py --sizes 1000,4000 --trials 64,256
    python bench/scale.py --stages segments,trials
    python bench/scale.py --quick                              # small sizes: a smoke run in minutes
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from procs import Processes  # noqa: E402  (bench/, beside this file)
from smallest import parse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"per_item": 1.15, "memory": 1.25, "disk": 1.25, "segments": 1.5, "trial": 1.25}
STAGES = ("data", "segments", "encoder", "trials")
STUDY_ARMS = "probe,layers_mean,masked_mean,attention"


def run_measured(cmd: list, env: dict | None = None, log: Path | None = None, cwd=ROOT) -> dict:
    """Run `cmd` to its end; its wall time, its own CPU seconds and every new process's peak
    memory."""
    mem = Processes()
    t = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        mem.wait(proc)
    out = {"wall_s": time.perf_counter() - t, **mem.stop()}
    if proc.returncode != 0:
        tail = Path(log).read_text()[-3000:] if log else ""
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} … exited {proc.returncode}\n{tail}")
    return out


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def array_bytes(stage_dir: Path, feature: str) -> int:
    """The arrays' own bytes in a cached stage: Σ items' shape × the dtype's size, read from the
    shards' shape columns (not the arrays)."""
    import pyarrow.parquet as pq

    from workloads.data.shards import array_dtype

    total = 0
    for shard in sorted(stage_dir.glob("shard-*.parquet")):
        table = pq.read_table(shard, columns=[f"{feature}_shape"])
        itemsize = array_dtype(pq.read_schema(shard).field(feature)).itemsize
        total += sum(int(np.prod(s)) for s in table.column(0).to_pylist()) * itemsize
    return total


def fit(sizes: list, costs: list) -> tuple[float, float]:
    """cost = fixed + per_item × n, least squares (fixed ≥ 0)."""
    if len(sizes) < 2:
        return 0.0, costs[0] / sizes[0]
    per, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(costs, float), 1)
    if fixed < 0:
        return 0.0, float(np.dot(sizes, costs) / np.dot(sizes, sizes))
    return float(fixed), float(per)


def per_item(sizes, costs) -> list:
    fixed, _ = fit(sizes, costs)
    return [(c - fixed) / n for n, c in zip(sizes, costs)]


# ----------------------------------------------------------------------------- corpora

def corpus(work: Path, n: int, largest: int, seed: int) -> Path:
    """A CREMA-D look-alike of n clips: the largest generated once, smaller ones hard links
    to its first n files (same clips, same bytes)."""
    from workloads.data.synth import generate

    big = work / f"cremad-{largest}-s{seed}"
    if not (big / "_synth.json").exists():
        shutil.rmtree(big, ignore_errors=True)
        t = time.perf_counter()
        print(f"  generating {largest} CREMA-D-like clips of 2–4 s in {big} …", flush=True)
        generate("cremad", big, largest, seed=seed, seconds=(2.0, 4.0))
        print(f"  generated in {time.perf_counter() - t:.0f} s", flush=True)
    if n == largest:
        return big
    small = work / f"cremad-{n}-of-{largest}-s{seed}"
    if not small.exists():
        tmp = small.with_name(small.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "AudioWAV").mkdir(parents=True)
        for f in sorted((big / "AudioWAV").iterdir())[:n]:
            os.link(f, tmp / "AudioWAV" / f.name)
        tmp.rename(small)
    return small


# ----------------------------------------------------------------------------- stages

def stage_data(work: Path, sizes: list, opts) -> list:
    rows = []
    for n in sizes:
        root = corpus(work, n, max(sizes), opts.seed)
        cache = work / f"cache-data-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        cmd = [sys.executable, "-m", "sweeps.cli", "data", "prepare", "cremad", "--root", str(root),
               "--features", "mfcc_stats", "content_hash", "--cache-dir", str(cache), "--no-progress"]
        env = {"EMOSWEEP_HOME": str(work / "home-data")}
        m = run_measured(cmd, env=env, log=work / f"data-{n}.log")
        # the same command on the full cache: the check a study's driver makes of its corpus
        # before every sweep (the listing, the manifest, every stage's coverage, the splits)
        again = run_measured(cmd, env=env, log=work / f"data-{n}-again.log")
        computed = [int(k) for k in re.findall(r"(\d+) computed", (work / f"data-{n}-again.log").read_text())]
        if not computed or any(computed):
            raise SystemExit(f"data prepare on a full cache computed items again: {work / f'data-{n}-again.log'}")
        rows.append({"stage": "recheck", "n": n, **again})
        import pyarrow.parquet as pq

        from workloads.data.shards import INDEX

        arrays = 0
        for stage_dir in sorted(p.parent for p in cache.rglob(INDEX)):
            shard = next(stage_dir.glob("shard-*.parquet"), None)
            if shard is not None:
                for name in pq.read_schema(shard).names:
                    if name.endswith("_shape"):
                        arrays += array_bytes(stage_dir, name[:-len("_shape")])
        rows.append({"stage": "data", "n": n, **m, "disk": du(cache), "arrays": arrays})
        print(f"  data {n}: {m['wall_s']:.1f} s; again on the full cache {again['wall_s']:.1f} s", flush=True)
    return rows


def stage_segments(work: Path, opts) -> list:
    """Per-segment decode cost at the recording's start and end, seeking against decoding
    from the file's start."""
    from workloads.data import audio
    from workloads.data.pipeline import read_and_decode
    from workloads.data.synth import encode_media, write_wav

    minutes, count, seconds = opts.recording_minutes, opts.segments, 3.0
    folder = work / f"recording-{minutes:g}min"
    folder.mkdir(exist_ok=True)
    sr = 44100
    if not (folder / "long.mp3").exists():
        rng = np.random.default_rng(opts.seed)
        t = np.arange(int(minutes * 60 * sr)) / sr
        wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 3)) * t)
                + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        write_wav(folder / "long.wav", wave, sr)
        encode_media(folder / "long.mp3", wave, sr, container="mp3", audio_codec="libmp3lame", video=False,
                     channels=1)
        del wave
    step = (minutes * 60 - seconds) / (count - 1)
    segs = [(i * step, i * step + seconds) for i in range(count)]
    k = min(32, count // 2)
    rows = []
    for kind in ("wav", "mp3"):
        path = str(folder / f"long.{kind}")

        def timed(parts, how):
            t = time.perf_counter()
            with audio.Recording() as recording:
                for seg in parts:
                    if how == "pipeline":  # a worker's shard: one open file, seeking from segment to segment
                        read_and_decode(path, 16000, segment=seg, recording=recording)
                    elif how == "fresh":  # each segment opens the file and seeks
                        read_and_decode(path, 16000, segment=seg)
                    else:  # before: decoded from the start, up to the segment's end
                        with audio._open(path, path) as container:
                            audio._decode_open(container, 16000, path, True, audio.MAX_SECONDS, seg, None,
                                               seek=False)
            return (time.perf_counter() - t) / len(parts) * 1e3

        timed(segs[:2], "pipeline")  # warm the page cache and the imports
        row = {"stage": "segments", "kind": kind, "k": k}
        for how in ("pipeline", "fresh", "old"):
            row[f"{how}_first_ms"], row[f"{how}_last_ms"] = timed(segs[:k], how), timed(segs[-k:], how)
        rows.append(row)
    return rows


ENCODE = """
import json, sys, time
sys.path.insert(0, {root!r})
from sweeps.hubert_pooling import STUDY
from workloads import speech_pooling
config = {{**STUDY.defaults, "seed": 0, "data_dir": {data!r}, "arm": "probe", "pooling": "probe"}}
t = time.perf_counter()
out = speech_pooling.prepare(config, model={model!r})
print(json.dumps({{"states_dir": out.get("states_dir"), "cache_fs": out.get("cache_fs"),
                  "prepare_s": time.perf_counter() - t}}))
"""


def stage_encoder(work: Path, sizes: list, opts) -> list:
    from workloads.models.shelf import shelf_model_path

    model = shelf_model_path("whisper-tiny.en")
    rows = []
    for n in sizes:
        root = corpus(work, n, max(sizes), opts.seed)
        home = work / f"home-encoder-{n}"
        shutil.rmtree(home, ignore_errors=True)
        log = work / f"encoder-{n}.log"
        m = run_measured([sys.executable, "-c", ENCODE.format(root=str(ROOT), data=str(root), model=model)],
                         env={"EMOSWEEP_HOME": str(home)}, log=log)
        info = json.loads([line for line in log.read_text().splitlines() if line.startswith("{")][-1])
        states = Path(info["states_dir"])
        flat = du(states / "flat") if (states / "flat").exists() else 0
        shards = sum(f.stat().st_size for f in states.glob("shard-*.parquet"))
        rows.append({"stage": "encoder", "n": n, **m, "disk": du(home / "cache"), "shards": shards, "flat": flat,
                     "arrays": array_bytes(states, "states")})
        print(f"  encoder {n}: {m['wall_s']:.1f} s", flush=True)
    return rows


def stage_trials(work: Path, counts: list, opts) -> list:
    rows = []
    for n in counts:
        home = work / f"home-trials-{n}"
        shutil.rmtree(home, ignore_errors=True)
        env = {"EMOSWEEP_HOME": str(home), "EMOSWEEP_PROGRESS": "0"}
        log = work / f"trials-{n}.log"
        m = run_measured([sys.executable, str(ROOT / "sweeps" / "audiomnist_mlp.py"), "--smoke", "--arms",
                          "h1_relu_deltas", "--num-samples", str(n), "--epochs", "1", "--name", f"scale-{n}",
                          "--seed", str(opts.seed)], env=env, log=log)
        text = log.read_text()
        timings = dict((k, float(v)) for k, v in re.findall(r"(\w+)=([\d.]+)", text.split("driver timings:")[-1]))
        uri = re.search(r"MLflow: (\S+)", text).group(1)
        state = max((home / "ray" / f"scale-{n}").glob("experiment_state-*.json"), key=os.path.getmtime)
        lookups = run_lookups(uri, n, env)
        ui = run_measured([sys.executable, "-m", "sweeps.cli", "ui", "--print-only", f"scale-{n}"], env=env)
        rows.append({"stage": "trials", "n": n, **m, **lookups, "ui_s": ui["wall_s"],
                     "tune_fit_s": timings.get("tune_fit_s", float("nan")),
                     "outside_fit_s": timings.get("total_s", 0) - timings.get("tune_fit_s", 0),
                     "state_bytes": state.stat().st_size, "ray_bytes": du(home / "ray" / f"scale-{n}"),
                     # Tune's saves of its whole state, against the trial checkpoints (each forced one before)
                     "state_saves": timings.get("state_saves", float("nan")),
                     "trial_checkpoints": timings.get("trial_checkpoints", float("nan"))})
        subprocess.run([sys.executable, "-m", "sweeps.cli", "tracking", "--stop"], env={**os.environ, **env},
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "sweeps.cli", "ray", "--stop"], env={**os.environ, **env},
                       capture_output=True)
        print(f"  trials {n}: {m['wall_s']:.1f} s", flush=True)
    return rows


def stage_study(work: Path, n: int, opts) -> list:
    """S2 end to end on the n-clip look-alike: --folds 2, four arms, whisper-tiny.en, on the
    encoder stage's home when it ran (its cache is reused: the study's own prepare then only
    checks it) or a fresh one. Then, in a fresh process, what a trial process holds a clip of
    what every later trial of its actor reuses (held_per_clip)."""
    from workloads.models.shelf import shelf_model_path

    root = corpus(work, n, n, opts.seed) if not (work / f"cremad-{n}-s{opts.seed}").exists() else \
        work / f"cremad-{n}-s{opts.seed}"
    home = work / f"home-encoder-{n}"
    env = {"EMOSWEEP_HOME": str(home), "EMOSWEEP_PROGRESS": "0"}
    log = work / f"study-{n}.log"
    cmd = [sys.executable, str(ROOT / "sweeps" / "hubert_pooling.py"), "--corpus", f"cremad={root}",
           "--model", shelf_model_path("whisper-tiny.en"), "--folds", "2", "--arms", STUDY_ARMS,
           "--name", f"scale-study-{n}", "--seed", str(opts.seed),
           *(["--epochs", str(opts.study_epochs)] if opts.study_epochs else [])]
    print("  " + " ".join(cmd[1:]), flush=True)
    m = run_measured(cmd, env=env, log=log)
    text = log.read_text()
    table = text[text.find("hubert_pooling — "):text.find("results:")] if "hubert_pooling — " in text else ""
    print(table, flush=True)
    subprocess.run([sys.executable, "-m", "sweeps.cli", "tracking", "--stop"], env={**os.environ, **env},
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "sweeps.cli", "ray", "--stop"], env={**os.environ, **env},
                   capture_output=True)
    held = {}
    prepooled = [f for f in sorted((home / "ray" / f"scale-study-{n}").glob("*/params.json"))
                 if json.loads(f.read_text()).get("pooling") == "layers_mean"]
    if prepooled:  # what a trial process holds a clip, read as an actor reads it, in a fresh process
        out = subprocess.run([sys.executable, __file__, "--_held", str(prepooled[0])], capture_output=True, text=True,
                             env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
        if out.returncode == 0:
            held = json.loads(out.stdout.strip().splitlines()[-1])
        else:
            print(f"  (a trial's memory a clip not measured: {out.stderr.strip()[-500:]})", flush=True)
    return [{"stage": "study", "n": n, **m, "disk": du(home), "cache": du(home / "cache"),
             "ray": du(home / "ray") if (home / "ray").exists() else 0, "held": held}]


def held_per_clip(params: str) -> None:
    """In a fresh process, as a trial actor reads them for a trial of `params` (a prepooled
    arm's): the anonymous memory a clip of the study's items table, of the states' index (its
    mapped views) and of one memoized pooling's vectors, read from their disk copy; printed as
    JSON. The items file is read once first, so pyarrow's own start is not counted as the
    table's."""
    import pyarrow as pa

    from workloads import speech_pooling
    from workloads.core.heap import anonymous_bytes, release_freed_memory
    from workloads.data import study_items
    from workloads.models.pooling import build_pooling

    config = json.loads(Path(params).read_text())

    def anon() -> int:
        release_freed_memory(full=True)  # what is held, not what malloc kept of the temporaries
        pa.default_memory_pool().release_unused()
        return anonymous_bytes() or 0

    study_items._read_items.__wrapped__(config["items_fs"], config["items_file"])  # pyarrow's start, dropped
    a0 = anon()
    items = study_items.study_items(config)
    a1 = anon()
    uids, _, _ = speech_pooling.cached_states(config)
    a2 = anon()
    vectors = speech_pooling.pooled_vectors(config, build_pooling("layers_mean", int(config["dim"]),
                                                                  int(config["n_states"])))
    a3 = anon()
    print(json.dumps({"clips": len(uids), "items_kb": (a1 - a0) / len(items) / 1024,
                      "states_kb": (a2 - a1) / len(uids) / 1024, "pooled_kb": (a3 - a2) / len(vectors) / 1024}))


def run_lookups(uri: str, n: int, env: dict) -> dict:
    """What one trial's run costs the driver to find: a search by the trial-id tag (before) and
    a fetch by run id (now), medians of 20; and the view's first page of runs (what the UI
    loads)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("audiomnist_mlp")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.trial_id != ''", max_results=20)

    def median(fn):
        times = []
        for r in runs:
            t = time.perf_counter()
            fn(r)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    search = median(lambda r: client.search_runs([exp.experiment_id], max_results=2,
                                                 filter_string=f"tags.trial_id = '{r.data.tags['trial_id']}'"))
    by_id = median(lambda r: client.get_run(r.info.run_id))
    t = time.perf_counter()
    client.search_runs([exp.experiment_id], max_results=100, order_by=["metrics.test_acc DESC"])
    return {"search_ms": search, "get_ms": by_id, "view_s": time.perf_counter() - t}


# ----------------------------------------------------------------------------- report

def ratio(a, b):
    return a / b if b else float("nan")


def verdict(value, goal):
    return "ok" if value <= goal else "MISSED"


def report(rows: list, png: str | None) -> None:
    by = {}
    for r in rows:
        by.setdefault(r["stage"], []).append(r)
    curves = {}
    titles = {"recheck": "data prepare again on the full cache (what every sweep's driver checks)"}
    for stage in ("data", "recheck", "encoder"):
        if stage not in by:
            continue
        rs = sorted(by[stage], key=lambda r: r["n"])
        sizes, walls = [r["n"] for r in rs], [r["wall_s"] for r in rs]
        fixed, per = fit(sizes, walls)
        items = per_item(sizes, walls)
        curves[stage] = (sizes, walls, fixed, per)
        disk = "disk" in rs[0]  # a stage that writes a cache
        print(f"\n{titles.get(stage, stage)}: cost = {fixed:.1f} s + {per * 1e3:.2f} ms × clips  "
              f"(least squares over {len(sizes)} sizes)")
        print("| clips | wall s | per clip ms (fixed out) | vs smallest | driver MB | largest other MB | "
              "mapped/shared MB |" + (" disk MB | arrays MB | disk / arrays |" if disk else ""))
        print("|---:|---:|---:|---:|---:|---|---:|" + ("---:|---:|---:|" if disk else ""))
        for r, item in zip(rs, items):
            print(f"| {r['n']} | {r['wall_s']:.1f} | {item * 1e3:.2f} | {ratio(item, items[0]):.2f} | "
                  f"{r['driver_mb']:.0f} | {r['other_mb']:.0f} ({r['other']}) | {r['file_mb']:.0f} |"
                  + (f" {r['disk'] / 1e6:.0f} | {r['arrays'] / 1e6:.0f} | {ratio(r['disk'], r['arrays']):.2f} |"
                     if disk else ""))
        last, first = rs[-1], rs[0]
        checks = [("per clip, largest vs smallest", ratio(items[-1], items[0]), GOALS["per_item"]),
                  ("driver memory, largest vs smallest", ratio(last["driver_mb"], first["driver_mb"]), GOALS["memory"]),
                  ("largest other process's memory", ratio(last["other_mb"], first["other_mb"]), GOALS["memory"])]
        if not last["other_mb"] and not first["other_mb"]:  # the command ran alone (no Ray, no server)
            checks.pop()
        if disk:
            checks.append(("disk / arrays at the largest", ratio(last["disk"], last["arrays"]), GOALS["disk"]))
        if stage == "encoder":
            print(f"  of the encoder's disk at {last['n']}: parquet shards {last['shards'] / 1e6:.0f} MB, the "
                  f"trials' index of them {last['flat'] / 1e6:.1f} MB")
            checks.append(("shards / arrays at the largest", ratio(last["shards"], last["arrays"]), GOALS["disk"]))
        if len(sizes) > 1 and fixed > 0.8 * walls[0]:
            # the smallest size's per-clip part is within the noise of its wall: say what the
            # sizes between them cost a clip instead of a ratio that measures the noise
            checks.pop(0)
            steps = ", ".join(f"{a}→{b}: {(wb - wa) / (b - a) * 1e3:.2f}" for a, b, wa, wb in
                              zip(sizes, sizes[1:], walls, walls[1:]))
            print(f"  per clip: the fixed part is {fixed / walls[0]:.0%} of the smallest size's wall, too much to "
                  f"resolve its per-clip cost; ms a clip between sizes: {steps}")
        for what, value, goal in checks:
            print(f"  {what}: {value:.2f} (goal ≤ {goal}) {verdict(value, goal)}")
    if "segments" in by:
        print("\nsegments: a 3-s segment's decode (ms), the first k against the last k of the recording")
        print("| file | k | one open file: first | last | last / first | a fresh open each: first | last | "
              "last / first | from the start (before): first | last | last / first |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in by["segments"]:
            cells = " | ".join(f"{r[f'{how}_first_ms']:.1f} | {r[f'{how}_last_ms']:.1f} | "
                               f"{ratio(r[f'{how}_last_ms'], r[f'{how}_first_ms']):.2f}"
                               for how in ("pipeline", "fresh", "old"))
            print(f"| {r['kind']} | {r['k']} | {cells} |")
        for r in by["segments"]:
            value = ratio(r["pipeline_last_ms"], r["pipeline_first_ms"])
            print(f"  {r['kind']}: last / first {value:.2f} (goal ≤ {GOALS['segments']}) "
                  f"{verdict(value, GOALS['segments'])}")
    if "trials" in by:
        rs = sorted(by["trials"], key=lambda r: r["n"])
        print("\ntrials: cheap one-epoch trials, a fresh Ray, MLflow server and experiment each")
        print("| trials | wall s | wall per trial s | driver CPU per trial ms | Tune's fit s | the rest s | "
              "Tune state KB | state saves / trial checkpoints | Ray's folder MB | look-up by tag ms | by id ms | "
              "view s | `emosweep ui` s | driver MB | largest other MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rs:
            print(f"| {r['n']} | {r['wall_s']:.1f} | {r['wall_s'] / r['n']:.3f} | {r['driver_cpu_s'] / r['n'] * 1e3:.0f} | "
                  f"{r['tune_fit_s']:.1f} | {r['outside_fit_s']:.1f} | {r['state_bytes'] / 1e3:.0f} | "
                  f"{r.get('state_saves', float('nan')):.0f} / {r.get('trial_checkpoints', float('nan')):.0f} | "
                  f"{r['ray_bytes'] / 1e6:.0f} | {r['search_ms']:.1f} | {r['get_ms']:.1f} | {r['view_s']:.2f} | "
                  f"{r['ui_s']:.1f} | {r['driver_mb']:.0f} | {r['other_mb']:.0f} ({r['other']}) |")
        walls = [r["wall_s"] for r in rs]
        curves["trials"] = ([r["n"] for r in rs], walls, *fit([r["n"] for r in rs], walls))
        if len(rs) > 1:  # Tune's fit alone: the command's start, the data and the report are apart
            value = ratio(rs[-1]["tune_fit_s"] / rs[-1]["n"], rs[0]["tune_fit_s"] / rs[0]["n"])
            print(f"  time per trial in the sweep (Tune's fit / trials), {rs[-1]['n']} vs {rs[0]['n']}: "
                  f"{value:.2f} (goal ≤ {GOALS['trial']}) {verdict(value, GOALS['trial'])}")
            cpu = ratio(rs[-1]["driver_cpu_s"] / rs[-1]["n"], rs[0]["driver_cpu_s"] / rs[0]["n"])
            print(f"  the driver's CPU per trial, {rs[-1]['n']} vs {rs[0]['n']}: {cpu:.2f}")
    for r in by.get("study", []):
        print(f"\nS2 end to end, {r['n']} clips, --folds 2, arms {STUDY_ARMS}: {r['wall_s'] / 60:.1f} min; "
              f"peak memory: driver {r['driver_mb']:.0f} MB, largest other {r['other_mb']:.0f} MB ({r['other']}), "
              f"mapped/shared {r['file_mb']:.0f} MB; disk {r['disk'] / 1e9:.1f} GB (cache "
              f"{r['cache'] / 1e9:.1f} GB, Ray's trial folders {r['ray'] / 1e6:.1f} MB)")
        if r.get("held"):
            h = r["held"]
            held = h.get("items_kb", 0.0) + h["states_kb"] + h["pooled_kb"]
            print(f"  a trial process holds a clip: the items table {h.get('items_kb', float('nan')):.2f} KB, the "
                  f"states' index {h['states_kb']:.2f} KB, one memoized pooling's vectors {h['pooled_kb']:.2f} KB "
                  f"(read from their disk copy, as a fresh actor reads them); × 100,000 clips: "
                  f"{held * 100_000 / 2**20:.2f} GB")
    if png and curves:
        draw(curves, png)
        print(f"\ncurves: {png}")


def draw(curves: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, (stage, (sizes, walls, fixed, per)) in zip(axes[0], curves.items()):
        xs = np.geomspace(min(sizes), max(sizes) * 1.5, 50)
        ax.loglog(sizes, walls, "o", label="measured")
        ax.loglog(xs, fixed + per * xs, "-", label=f"{fixed:.3g} s + {per * 1e3:.3g} ms × n")
        ax.loglog(xs, per * xs, ":", color="grey", label="per-item part alone")
        ax.set_title({"recheck": "data prepare again, full cache"}.get(stage, stage))
        ax.set_xlabel("trials" if stage == "trials" else "clips")
        ax.set_ylabel("wall s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,4000,16000", help="clips per corpus (data, encoder)")
    ap.add_argument("--trials", default="64,1024", help="trials per sweep")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"a subset of {','.join(STAGES)}; or study: S2 end to end on the largest size "
                         f"(--folds 2, arms {STUDY_ARMS}), on the encoder stage's cache")
    ap.add_argument("--study-epochs", type=int, help="the study's epochs (default: S2's)")
    ap.add_argument("--recording-minutes", type=float, default=20.0)
    ap.add_argument("--segments", type=int, default=256)
    ap.add_argument("--work", help="generated corpora and caches (kept; corpora are reused; default "
                                   "$EMOSWEEP_HOME/bench-scale)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", help="the curves (default: scale.png in --work)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--_held", help=argparse.SUPPRESS)
    opts = parse(ap, argv, sizes="40,80", trials="3", recording_minutes=1.0, segments=16)
    if opts._held:
        sys.path.insert(0, str(ROOT))
        return held_per_clip(opts._held) or 0
    stages = [s for s in opts.stages.split(",") if s]
    unknown = set(stages) - set(STAGES) - {"study"}
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    sizes = sorted(int(x) for x in opts.sizes.split(","))
    counts = sorted(int(x) for x in opts.trials.split(","))
    sys.path.insert(0, str(ROOT))
    from workloads.core.paths import emosweep_home

    work = Path(opts.work) if opts.work else emosweep_home() / "bench-scale"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in stages:
        print(f"[{stage}]", flush=True)
        if stage == "data":
            rows += stage_data(work, sizes, opts)
        elif stage == "segments":
            rows += stage_segments(work, opts)
        elif stage == "encoder":
            rows += stage_encoder(work, sizes, opts)
        elif stage == "trials":
            rows += stage_trials(work, counts, opts)
        else:
            rows += stage_study(work, max(sizes), opts)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    report(rows, opts.png or str(work / "scale.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
