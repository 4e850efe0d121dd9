"""A cached stage read through memory maps (data/flat.py): the same items and arrays as its
Parquet shards, indexed once, and indexed again when the stage changed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workloads.data.corpora import read_corpus
from workloads.data.pipeline import prepare, read_stage


def test_a_stage_maps_one_flat_copy_identical_to_its_shards_and_remade_when_it_changes(synth, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSWEEP_LOCAL", "1")
    manifest = read_corpus("ravdess", synth("ravdess", 12, seed=3, faults=False))
    cache = str(tmp_path / "cache")
    result = prepare(manifest, ["mfcc", "mfcc_mean"], cache_dir=cache, shard_size=4, progress=False)
    for stage in ("mfcc", "mfcc_mean"):  # arrays of different shapes (frames), and of one shape
        folder = result.stages[stage].dir
        frame, arrays = read_stage(result.fs_uri, folder, stage)
        mapped_frame, mapped = read_stage(result.fs_uri, folder, stage, mapped=True)
        assert not (Path(folder) / "flat" / "values.npy").exists()  # mapped where they lie: no copy
        pd.testing.assert_frame_equal(frame, mapped_frame)
        assert len(mapped) == len(arrays) == 12
        for a, b in zip(arrays, mapped):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
            assert not b.flags.writeable  # read-only views of the mapped file
    shapes = {a.shape for a in read_stage(result.fs_uri, result.stages["mfcc"].dir, "mfcc", mapped=True)[1]}
    assert len(shapes) > 1, "the look-alike's clips differ in length"

    # a shard's items recomputed (its file gone, the index rewritten): the copy is made again
    folder = Path(result.stages["mfcc"].dir)
    made = json.loads((folder / "flat" / "source.json").read_text())
    sorted(folder.glob("shard-*.parquet"))[0].unlink()
    again = prepare(manifest, ["mfcc", "mfcc_mean"], cache_dir=cache, shard_size=4, progress=False)
    frame, arrays = read_stage(again.fs_uri, str(folder), "mfcc")
    mapped_frame, mapped = read_stage(again.fs_uri, str(folder), "mfcc", mapped=True)
    assert json.loads((folder / "flat" / "source.json").read_text()) != made
    pd.testing.assert_frame_equal(frame, mapped_frame)
    for a, b in zip(arrays, mapped):
        np.testing.assert_array_equal(a, b)


def test_arrays_are_mapped_where_the_shards_hold_them_and_a_changed_shard_is_caught(synth, tmp_path, monkeypatch):
    """Nothing is stored twice: the index points into the shard files, and every view reads the
    shard's own bytes. A shard whose bytes change after indexing (one flipped in an array) is
    read again with its page checksums, and the reader stops naming it."""
    import os

    import pyarrow.parquet as pq

    from workloads.data.shards import DamagedShard

    monkeypatch.setenv("EMOSWEEP_LOCAL", "1")
    manifest = read_corpus("ravdess", synth("ravdess", 8, seed=5, faults=False))
    result = prepare(manifest, ["mfcc"], cache_dir=str(tmp_path / "cache"), shard_size=3, progress=False)
    folder = Path(result.stages["mfcc"].dir)
    _, arrays = read_stage(result.fs_uri, str(folder), "mfcc")
    _, mapped = read_stage(result.fs_uri, str(folder), "mfcc", mapped=True)
    index = pq.read_table(folder / "flat" / "index.parquet").to_pandas()
    assert set(index["_file"]) == {p.name for p in folder.glob("shard-*.parquet")} and len(set(index["_file"])) == 3
    assert sum(f.stat().st_size for f in (folder / "flat").iterdir()) < 20_000  # an index, not a copy
    for a, b, (name, start) in zip(arrays, mapped, zip(index["_file"], index["_byte"])):
        raw = (folder / name).read_bytes()[start:start + a.nbytes]
        assert raw == np.ascontiguousarray(a).tobytes() and np.array_equal(a, b)

    name, start = index["_file"][1], int(index["_byte"][1])
    with open(folder / name, "r+b") as f:  # one byte of an array, in place: same size, new mtime
        f.seek(start + 5)
        byte = f.read(1)
        f.seek(start + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(folder / name, ns=(os.stat(folder / name).st_atime_ns, os.stat(folder / name).st_mtime_ns + 10**9))
    with pytest.raises(DamagedShard, match=f"{name}.*emosweep data verify"):
        read_stage(result.fs_uri, str(folder), "mfcc", mapped=True)


def test_shards_that_cannot_be_mapped_where_they_lie_are_copied_once(synth, tmp_path, monkeypatch):
    """More shards than the process may hold open (a hard limit of open files too low): the
    arrays are copied into one flat file instead, and read back the same."""
    from workloads.data import flat

    monkeypatch.setenv("EMOSWEEP_LOCAL", "1")
    monkeypatch.setattr(flat, "SPARE_FILES", 1 << 40)
    manifest = read_corpus("ravdess", synth("ravdess", 6, seed=7, faults=False))
    result = prepare(manifest, ["mfcc"], cache_dir=str(tmp_path / "cache"), shard_size=2, progress=False)
    folder = Path(result.stages["mfcc"].dir)
    _, arrays = read_stage(result.fs_uri, str(folder), "mfcc")
    _, mapped = read_stage(result.fs_uri, str(folder), "mfcc", mapped=True)
    assert (folder / "flat" / "values.npy").is_file()
    assert len(mapped) == len(arrays) == 6
    for a, b in zip(arrays, mapped):
        np.testing.assert_array_equal(a, b)
