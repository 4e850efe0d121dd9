"""A cached stage read through its memory-mapped flat copy (data/flat.py): the same items and
arrays as its Parquet shards, made once, and made again when the stage changed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

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
        assert (Path(folder) / "flat" / "values.npy").is_file()
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
