"""A cache that heals (issue 22): every shard's size and SHA-256 are recorded with _SUCCESS;
a re-run moves a damaged or missing shard aside with one warning line and recomputes only its
items; a trial that meets silent damage stops with the shard's path and the repair command;
`emosweep data verify` finds it in full. In this process (--local), on a generated corpus."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workloads.data.corpora import read_corpus
from workloads.data.pipeline import load_features, prepare

ROOT = Path(__file__).resolve().parents[1]


def _flip(path: Path, offset: int, keep_mtime: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:  # bit rot: the content changed, the file's times did not
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _in_a_data_page(path: Path) -> int:
    """An offset inside the pages of the feature column (not its header or the footer)."""
    import pyarrow.parquet as pq

    column = next(c for c in (pq.ParquetFile(path).metadata.row_group(0).column(i) for i in range(3))
                  if c.path_in_schema.split(".")[0] == "mfcc_mean")
    start = column.dictionary_page_offset or column.data_page_offset
    return start + column.total_compressed_size // 2


@pytest.fixture
def cached(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSWEEP_LOCAL", "1")
    manifest = read_corpus("ravdess", synth("ravdess", 24, seed=5, faults=False))
    result = prepare(manifest, ["mfcc_mean"], cache_dir=str(tmp_path / "cache"), shard_size=4, progress=False)
    items, arrays = load_features(result, "mfcc_mean")
    return manifest, tmp_path / "cache", dict(zip(items["uid"], arrays)), Path(result.stages["mfcc_mean"].dir)


def test_a_rerun_heals_truncated_empty_flipped_and_missing_shards(cached, capsys):
    manifest, cache, before, stage = cached
    index = json.loads((stage / "_SUCCESS.json").read_text())["shards"]
    shards = sorted(stage.glob("shard-*.parquet"))
    assert len(shards) == 6 and set(index) == {p.name for p in shards}
    assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in index.values())
    truncated, empty, footer, page, gone, intact = shards
    truncated.write_bytes(truncated.read_bytes()[:-100])
    empty.write_bytes(b"")
    _flip(footer, footer.stat().st_size - 30)
    _flip(page, _in_a_data_page(page))
    gone.unlink()
    capsys.readouterr()

    again = prepare(manifest, ["mfcc_mean"], cache_dir=str(cache), shard_size=4, progress=False)
    err = capsys.readouterr().err
    for damaged in (truncated, empty, footer, page):
        assert f"damaged cache file {damaged}" in err, err
    assert f"{gone} is missing" in err
    assert again.stages["mfcc_mean"].computed == 20 and again.stages["mfcc_mean"].cached == 4  # the intact one kept
    assert len(list((stage / "damaged").iterdir())) == 4
    items, arrays = load_features(again, "mfcc_mean")
    assert set(items["uid"]) == set(before)
    for uid, array in zip(items["uid"], arrays):
        np.testing.assert_array_equal(array, before[uid])
    assert intact.exists()


def test_silent_damage_stops_a_trial_with_the_shard_and_verify_repairs_it(cached):
    from workloads.data.pipeline import read_stage
    from workloads.data.shards import DamagedShard

    manifest, cache, before, stage = cached
    shard = sorted(stage.glob("shard-*.parquet"))[2]
    _flip(shard, _in_a_data_page(shard), keep_mtime=True)
    with pytest.raises(DamagedShard) as caught:
        read_stage(str(cache), str(stage))
    assert str(shard) in str(caught.value) and "emosweep data verify" in str(caught.value)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    verify = subprocess.run([sys.executable, "-m", "sweeps.cli", "data", "verify", str(cache)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and "1 damaged" in verify.stdout, verify.stdout + verify.stderr
    assert str(shard) in verify.stderr and not shard.exists()
    again = prepare(manifest, ["mfcc_mean"], cache_dir=str(cache), shard_size=4, progress=False)
    assert again.stages["mfcc_mean"].computed == 4
    items, arrays = load_features(again, "mfcc_mean")
    assert set(items["uid"]) == set(before)
    clean = subprocess.run([sys.executable, "-m", "sweeps.cli", "data", "verify", str(cache)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and "0 damaged" in clean.stdout, clean.stdout + clean.stderr
