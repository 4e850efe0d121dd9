"""A cached stage's arrays as one memory-mapped file, shared by every process on the machine.

Reading a stage from its Parquet shards decodes every value (encoder states are a list of
float16 per item: about 10 s per 0.5 GB on one core) and leaves each process its own copy.
Trials read the same stage over and over: every Tune actor, every sweep, every fold. So the
stage is copied once, flat and uncompressed, into `{stage}/flat/`:

    values.npy      every item's array, end to end (one .npy, memory-mapped by readers)
    index.parquet   uid, the item's other columns, its offset into values and its shape
    source.json     the stage's index when the copy was made (each shard's size, mtime, SHA-256)

A reader maps `values.npy`: nothing is decoded, and the pages belong to the operating
system's cache, shared by all the processes that map them. A stage whose shards changed
since the copy was made (an item recomputed, a damaged shard moved aside) is copied again.
Local disks only: a stage on object storage is read from its shards.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .shards import array_dtype, chunk_values, list_parquet, read_index, read_shard

FLAT = "flat"
VERSION = 1


def _source(stage_dir: str, feature: str) -> dict:
    return {"version": VERSION, "feature": feature, "shards": read_index(pafs.LocalFileSystem(), stage_dir)}


def _current(stage_dir: str, feature: str) -> bool:
    folder = os.path.join(stage_dir, FLAT)
    try:
        with open(os.path.join(folder, "source.json")) as f:
            made = json.load(f)
    except (OSError, ValueError):
        return False
    values = os.path.join(folder, "values.npy")
    return (made.get("source") == _source(stage_dir, feature) and os.path.exists(values)
            and os.path.getsize(values) == made.get("values_bytes"))


@contextmanager
def _locked(stage_dir: str):
    """One writer per stage on this machine; the others wait and then map its copy."""
    with open(os.path.join(stage_dir, ".flat.lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(stage_dir: str, feature: str) -> bool:
    """Make the stage's flat copy unless it is current. False where there is nothing to copy
    (a stage without a complete index, or with no shards)."""
    if not read_index(pafs.LocalFileSystem(), stage_dir):
        return False
    if _current(stage_dir, feature):
        return True
    with _locked(stage_dir):
        if not _current(stage_dir, feature):
            _write(stage_dir, feature)
    return True


def ensure_local(fs_uri: str, stage_dir: str, feature: str) -> bool:
    """`ensure` for a stage on a local disk (a path or file:// URI); False for any other."""
    from ..core.storage import filesystem

    return isinstance(filesystem(fs_uri)[0], pafs.LocalFileSystem) and ensure(stage_dir, feature)


def _write(stage_dir: str, feature: str) -> None:
    fs = pafs.LocalFileSystem()
    source = _source(stage_dir, feature)
    shards = [i.path for i in list_parquet(fs, stage_dir, "shard-")]
    # pass 1: the small columns of every shard (uid, metadata, shapes), to place each item
    schema = pq.read_schema(shards[0])
    small = [c for c in schema.names if c == "uid" or c == f"{feature}_shape"
             or (not c.endswith("_shape") and f"{c}_shape" not in schema.names)]
    meta = pa.concat_tables([read_shard(fs, p, stage_dir, columns=small) for p in shards])
    shapes = meta.column(f"{feature}_shape").to_pylist()
    frame = meta.drop_columns([f"{feature}_shape"]).to_pandas()
    keep = ~frame["uid"].duplicated().to_numpy()  # a uid written twice (a resumed run) is the same work
    sizes = np.array([int(np.prod(s)) for s in shapes], dtype=np.int64)
    offsets = np.zeros(len(sizes), dtype=np.int64)
    offsets[keep] = np.concatenate([[0], np.cumsum(sizes[keep])[:-1]]) if keep.any() else []
    dtype = array_dtype(schema.field(feature))
    tmp = os.path.join(stage_dir, f".{FLAT}-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        values = np.lib.format.open_memmap(os.path.join(tmp, "values.npy"), mode="w+", dtype=dtype,
                                           shape=(int(sizes[keep].sum()),))
        # pass 2: the arrays, one shard at a time (never the whole stage in memory), every page checked
        i = 0
        for path in shards:
            column = read_shard(fs, path, stage_dir, columns=[feature]).column(feature)
            for chunk in column.chunks:
                flat, bounds = chunk_values(chunk, dtype)
                for j in range(len(chunk)):
                    if keep[i]:
                        values[offsets[i]:offsets[i] + sizes[i]] = flat[bounds[j]:bounds[j + 1]]
                    i += 1
        values.flush()
        del values
        index = frame.assign(_offset=offsets, _shape=[list(s) for s in shapes])[keep].reset_index(drop=True)
        pq.write_table(pa.Table.from_pandas(index, preserve_index=False), os.path.join(tmp, "index.parquet"))
        with open(os.path.join(tmp, "source.json"), "w") as f:  # last: it vouches for the rest
            json.dump({"source": source, "values_bytes": os.path.getsize(os.path.join(tmp, "values.npy"))}, f)
        for name in os.listdir(tmp):
            fd = os.open(os.path.join(tmp, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        target = os.path.join(stage_dir, FLAT)
        if os.path.exists(target):  # a stale copy; processes that still map it keep their pages
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_flat(stage_dir: str, feature: str) -> tuple[pd.DataFrame, list | np.ndarray] | None:
    """(uid + the items' other columns, their arrays as read-only views of the mapped copy),
    shaped as `pipeline.read_stage` returns them; made first when missing or stale. None
    where the stage has no complete index (read it from its shards)."""
    if not ensure(stage_dir, feature):
        return None
    folder = os.path.join(stage_dir, FLAT)
    values = np.load(os.path.join(folder, "values.npy"), mmap_mode="r")
    index = pq.read_table(os.path.join(folder, "index.parquet")).to_pandas()
    shapes = [tuple(int(d) for d in s) for s in index.pop("_shape")]
    offsets = index.pop("_offset").to_numpy()
    if shapes and all(s == shapes[0] for s in shapes):  # one array, as read_stage gives for equal shapes
        return index, values[:len(shapes) * int(np.prod(shapes[0]))].reshape(len(shapes), *shapes[0])
    return index, [values[o:o + int(np.prod(s))].reshape(s) for o, s in zip(offsets, shapes)]
