"""The Ray Data pipeline and its cache, on a real local Ray and generated corpora with planted
faults: every fault reported by path and reason, every good item present with the same
features as a direct computation, a warm re-run that decodes nothing, --strict, and a run
SIGKILLed midway that resumes without redoing finished shards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from workloads.data.audio import decode_audio
from workloads.data.corpora import read_corpus
from workloads.data.features import STAGES
from workloads.data.pipeline import StrictModeError, load_features, prepare
from workloads.data.synth import load_manifest

REASONS = {"unreadable": "unreadable", "no audio stream": "no audio stream", "empty audio": "empty audio",
           "silent audio": "silent audio", "unknown label": "label", "not valid UTF-8": "UTF-8",
           "missing media": "not found"}

ROOT = Path(__file__).resolve().parents[1]


def _assert_faults_reported(errors: pd.DataFrame, faults: list):
    for fault in faults:
        hits = errors[(errors["path"] == fault["path"]) & (errors["line"] == fault["line"])]
        assert len(hits) == 1, f"planted fault {fault} reported {len(hits)} times:\n{errors}"
        assert REASONS[fault["kind"]] in hits.iloc[0]["reason"]


@pytest.mark.parametrize("corpus", ["meld", "shemo"])
def test_faults_reported_good_items_kept_and_cache_reused(ray_cluster, synth, tmp_path, corpus):
    root = synth(corpus)
    info = load_manifest(root)
    manifest = read_corpus(corpus, root)
    stages = {"mfcc_mean": {}, "waveform": {"seconds": 1.0}}
    cold = prepare(manifest, stages, cache_dir=str(tmp_path), shard_size=8, progress=False)

    assert cold.decoded == len(manifest.items)
    _assert_faults_reported(cold.errors, info["faults"])
    assert len(cold.errors) == len(info["faults"])  # nothing else went wrong
    errors_csv = pd.read_csv(Path(cold.corpus_dir) / "errors.csv")
    assert len(errors_csv) == len(cold.errors) and set(errors_csv.columns) >= {"path", "stage", "reason"}
    for name in stages:
        items, arrays = load_features(cold, name)
        assert sorted(items["uid"]) == sorted(info["good"]), f"{name}: good items missing or extra"
    items, arrays = load_features(cold, "mfcc_mean")
    wave = decode_audio(items["path"][0])
    np.testing.assert_allclose(arrays[0], STAGES["mfcc_mean"](wave)["mfcc_mean"], rtol=1e-5)
    assert all(a.shape == (16000,) for a in load_features(cold, "waveform")[1])

    warm = prepare(manifest, stages, cache_dir=str(tmp_path), progress=False)
    assert warm.decoded == 0, "a warm run decoded files"
    assert all(s.cached == len(manifest.items) and s.computed == 0 for s in warm.stages.values())
    pd.testing.assert_frame_equal(warm.errors.reset_index(drop=True), cold.errors.reset_index(drop=True))
    assert "errors by reason" in warm.summary()
    # and `emosweep data prepare` on a warm cache computes nothing, so it never imports Ray
    code = ("import sys; from sweeps.cli import main; rc = main(sys.argv[1:]); "
            "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "data", "prepare", corpus, "--root", str(root), "--features",
                          "mfcc_mean", "waveform", "--param", "waveform.seconds=1.0", "--cache-dir", str(tmp_path),
                          "--no-progress"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ray imported: False" in out.stdout and "decoded 0 files" in out.stdout, out.stdout[-2000:]

    # a new parameter is a new key: only that stage is computed, the other comes from the cache
    more = prepare(manifest, {"mfcc_mean": {}, "waveform": {"seconds": 2.0}}, cache_dir=str(tmp_path), progress=False)
    assert more.stages["mfcc_mean"].computed == 0 and more.stages["waveform"].computed == len(manifest.items)


def test_strict_stops_at_the_first_bad_input(ray_cluster, synth, tmp_path):
    manifest = read_corpus("shemo", synth("shemo"))
    with pytest.raises(StrictModeError, match="unknown label"):  # a reader problem: before any decoding
        prepare(manifest, ["mfcc_mean"], cache_dir=str(tmp_path), strict=True, progress=False)
    manifest.problems = manifest.problems.iloc[:0]
    with pytest.raises(StrictModeError) as err:
        prepare(manifest, ["mfcc_mean"], cache_dir=str(tmp_path), strict=True, progress=False)
    bad = {f["path"] for f in load_manifest(synth("shemo"))["faults"]}
    assert any(path in str(err.value) for path in bad), err.value


def _shards(cache: Path, stage: str) -> list[Path]:
    return sorted(cache.glob(f"*/{stage}-*/shard-*.parquet"))


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_shards(ray_cluster, synth, tmp_path):
    root = synth("gtzan", n=80, seed=2, faults=False)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "sweeps.cli", "data", "prepare", "gtzan", "--root", str(root),
           "--features", "logmel", "frame46", "--shard-size", "2", "--cache-dir", str(cache),
           "--address", ray_cluster, "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while len(_shards(cache, "logmel")) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{out[-3000:]}"
    time.sleep(3)  # let tasks already running for the dead driver finish or be killed
    assert not list(cache.glob("*/logmel-*/_SUCCESS.json"))
    stage_dir = _shards(cache, "logmel")[0].parent
    (stage_dir / ".tmp-deadbeef-shard-0000.parquet").write_bytes(b"PAR1 half a file")  # a write cut short
    finished = {u for p in _shards(cache, "logmel") for u in pq.read_table(p, columns=["uid"]).column("uid").to_pylist()}
    assert 4 * 2 <= len(finished) < 80

    manifest = read_corpus("gtzan", root)
    resumed = prepare(manifest, ["logmel", "frame46"], cache_dir=str(cache), shard_size=2, progress=False)
    assert resumed.stages["logmel"].cached >= len(finished)
    assert resumed.stages["logmel"].computed == 80 - resumed.stages["logmel"].cached
    assert resumed.decoded < 80, "the resumed run redid finished work"
    uids = [u for p in _shards(cache, "logmel") for u in pq.read_table(p, columns=["uid"]).column("uid").to_pylist()]
    assert sorted(uids) == sorted(manifest.items["uid"]), "an item is missing or was computed twice"
    items, arrays = load_features(resumed, "logmel")
    assert len(items) == 80 and all(a.shape == (128, 128) for a in arrays)
    assert list(cache.glob("*/logmel-*/_SUCCESS.json"))


def test_media_and_cache_given_as_uris(ray_cluster, synth, tmp_path):
    """The workers read file bytes through pyarrow filesystems: a manifest of URIs and a URI
    cache root take the same code path as s3:// on a cluster (file:// here)."""
    root = synth("emodb", n=20, seed=4, faults=False)
    local = read_corpus("emodb", root)
    remote = read_corpus("emodb", root)
    remote.items["path"] = ["file://" + p for p in remote.items["path"]]
    result = prepare(remote, ["spectral_stats"], cache_dir=f"file://{tmp_path}", progress=False)
    assert result.decoded == 20 and len(result.errors) == 0
    assert result.fingerprint == local.fingerprint()  # same content, same key, wherever it lies
    items, arrays = load_features(result, "spectral_stats")
    direct = STAGES["spectral_stats"](decode_audio(local.items["path"][0]))["spectral_stats"]
    np.testing.assert_allclose(arrays[0], direct, rtol=1e-5)
    assert list(tmp_path.glob("emodb-*/spectral_stats-*/shard-*.parquet"))
