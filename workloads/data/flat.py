"""A cached stage's arrays memory-mapped where they lie, shared by every process on the machine.

Reading a stage from its Parquet shards decodes every value (encoder states are a list of
float16 per item: about 10 s per 0.5 GB on one core) and leaves each process its own copy.
Trials read the same stage over and over: every Tune actor, every sweep, every fold. So the
first reader on a machine indexes the stage once, into `{stage}/flat/`:

    index.parquet   uid, the item's other columns, its shape, and where its bytes lie:
                    `_file` (a shard) and `_byte` (the offset of its first byte in that file)
    source.json     the stage's index when this was made (each shard's size, mtime, SHA-256)

A shard stores each array as one uncompressed PLAIN binary value: its raw bytes, whole, after
a 4-byte length (shards.ARRAY_SHARD). So the bytes a reader needs are already in the shard
file, and a reader maps the shard files themselves: nothing is decoded, nothing is stored
twice, and the pages belong to the operating system's cache. To find each value, the index
reads every shard once with its page checksums and finds each item's length and bytes in the
file, in order, from the column chunk's first page (a page header lies between pages): every
offset it records is checked byte for byte against what Parquet read.

A stage whose shards cannot be mapped where they lie (the earlier list layout, a compressed
shard, or more shards than this process may open) is copied instead, flat and uncompressed,
into `{stage}/flat/values.npy`, and mapped from there. A stage whose shards changed since the
index was made (an item recomputed, a damaged shard moved aside, a shard file touched) is
indexed again. Local disks only: a stage on object storage is read from its shards.
"""
from __future__ import annotations

import fcntl
import json
import mmap
import os
import resource
import struct
import shutil
import uuid
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .shards import array_dtype, chunk_values, damaged_shard, list_parquet, read_index, read_shard

FLAT = "flat"
VERSION = 2
SEARCH = 1 << 16  # bytes searched past one value for the next (a page header lies between pages)
SPARE_FILES = 256  # file descriptors left to the process besides one per mapped shard


def _source(stage_dir: str, feature: str) -> dict:
    return {"version": VERSION, "feature": feature, "shards": read_index(pafs.LocalFileSystem(), stage_dir)}


def _current(stage_dir: str, feature: str) -> bool:
    folder = os.path.join(stage_dir, FLAT)
    try:
        with open(os.path.join(folder, "source.json")) as f:
            made = json.load(f)
    except (OSError, ValueError):
        return False
    if made.get("source") != _source(stage_dir, feature):
        return False
    if "files" in made:  # mapped where they lie: every shard as it was indexed
        return all(_stat(os.path.join(stage_dir, name)) == seen for name, seen in made["files"].items())
    values = os.path.join(folder, "values.npy")
    return os.path.exists(values) and os.path.getsize(values) == made.get("values_bytes")


def _stat(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


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
    """Index the stage's arrays (or copy them) unless that is current. False where there is
    nothing to map (a stage without a complete index, or with no shards)."""
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
    dtype = array_dtype(schema.field(feature))
    tmp = os.path.join(stage_dir, f".{FLAT}-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        # pass 2: every shard's arrays read with their page checksums, one shard at a time
        placed = _place(stage_dir, shards, feature, dtype, len(frame)) if _may_map(len(shards)) else None
        if placed is not None:
            files, starts = placed
            index = frame.assign(_file=[os.path.basename(shards[f]) for f in files], _byte=starts)
            made = {"files": {os.path.basename(p): _stat(p) for p in shards}}
        else:
            offsets = _copy(stage_dir, shards, feature, dtype, shapes, keep, tmp)
            index = frame.assign(_offset=offsets)
            made = {"values_bytes": os.path.getsize(os.path.join(tmp, "values.npy"))}
        index = index.assign(_shape=[list(s) for s in shapes])[keep].reset_index(drop=True)
        pq.write_table(pa.Table.from_pandas(index, preserve_index=False), os.path.join(tmp, "index.parquet"))
        with open(os.path.join(tmp, "source.json"), "w") as f:  # last: it vouches for the rest
            json.dump({"source": source, **made}, f)
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


def _may_map(shards: int) -> bool:
    """Whether this process may hold one open file per shard (a mapping keeps its file open),
    raising its soft limit up to the hard one where it must."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = shards + SPARE_FILES
    if soft == resource.RLIM_INFINITY or need <= soft:
        return True
    if hard != resource.RLIM_INFINITY and need > hard:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (ValueError, OSError):
        return False
    return True


def _place(stage_dir: str, shards: list, feature: str, dtype: np.dtype, count: int) -> tuple | None:
    """(each item's shard number, the byte offset of its array in that file), every array found
    byte for byte where Parquet stored it; None where a shard does not hold its arrays as raw
    binary values in the file (the earlier list layout, compression)."""
    files = np.zeros(count, dtype=np.int32)
    starts = np.zeros(count, dtype=np.int64)
    i = 0
    for number, path in enumerate(shards):
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        column = parquet.schema_arrow.get_field_index(feature)
        if not pa.types.is_large_binary(parquet.schema_arrow.field(feature).type):
            return None
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as whole:
            for group in range(parquet.metadata.num_row_groups):
                chunk_meta = parquet.metadata.row_group(group).column(column)
                if chunk_meta.compression != "UNCOMPRESSED":
                    return None
                at = chunk_meta.data_page_offset
                try:
                    table = parquet.read_row_group(group, columns=[feature])
                except (OSError, pa.ArrowException) as e:
                    raise damaged_shard(path, stage_dir, e) from None
                for chunk in table.column(0).chunks:
                    _, offsets, data = chunk.buffers()
                    bounds = np.frombuffer(offsets, dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
                    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
                    for j in range(len(chunk)):
                        found = _find(whole, raw[bounds[j]:bounds[j + 1]], at)
                        if found is None:
                            return None
                        files[i], starts[i] = number, found
                        at = found + int(bounds[j + 1] - bounds[j])
                        i += 1
    return (files, starts) if i == count else None


def _find(whole: mmap.mmap, value: np.ndarray, at: int) -> int | None:
    """The offset of `value`'s bytes in the file at or after `at`, stored as Parquet stores a
    binary value (a 4-byte little-endian length, then the bytes); None if not within SEARCH."""
    length = struct.pack("<I", len(value))
    limit = min(len(whole), at + SEARCH + 4)
    while True:
        q = whole.find(length, at, limit)
        if q < 0:
            return None
        begin = q + 4
        if begin + len(value) <= len(whole):
            stored = np.frombuffer(whole, dtype=np.uint8, count=len(value), offset=begin)
            same = np.array_equal(stored, value)
            del stored  # no view outlives the mapping
            if same:
                return begin
        at = q + 1


def _copy(stage_dir: str, shards: list, feature: str, dtype: np.dtype, shapes: list, keep: np.ndarray,
          tmp: str) -> np.ndarray:
    """Every kept item's array end to end into `{tmp}/values.npy`; their element offsets."""
    fs = pafs.LocalFileSystem()
    sizes = np.array([int(np.prod(s)) for s in shapes], dtype=np.int64)
    offsets = np.zeros(len(sizes), dtype=np.int64)
    offsets[keep] = np.concatenate([[0], np.cumsum(sizes[keep])[:-1]]) if keep.any() else []
    values = np.lib.format.open_memmap(os.path.join(tmp, "values.npy"), mode="w+", dtype=dtype,
                                       shape=(int(sizes[keep].sum()),))
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
    return offsets


def read_flat(stage_dir: str, feature: str) -> tuple[pd.DataFrame, list | np.ndarray] | None:
    """(uid + the items' other columns, their arrays as read-only views of mapped files), as
    `pipeline.read_stage` returns them, except that arrays mapped where they lie are always a
    list; indexed first when missing or stale. None where the stage has no complete index, or
    more shards than this process may keep open (read it from its shards)."""
    if not ensure(stage_dir, feature):
        return None
    folder = os.path.join(stage_dir, FLAT)
    index = pq.read_table(os.path.join(folder, "index.parquet")).to_pandas()
    shapes = [tuple(int(d) for d in s) for s in index.pop("_shape")]
    if "_file" in index:
        files, starts = index.pop("_file").tolist(), index.pop("_byte").to_numpy()
        dtype = array_dtype(pq.read_schema(os.path.join(stage_dir, files[0])).field(feature)) if files else \
            np.dtype("float32")
        if not _may_map(len(set(files))):  # this process may not hold them all open: read the shards
            return None
        maps = {name: np.memmap(os.path.join(stage_dir, name), dtype=np.uint8, mode="r") for name in set(files)}
        return index, [maps[name][b:b + int(np.prod(s)) * dtype.itemsize].view(dtype).reshape(s)
                       for name, b, s in zip(files, starts, shapes)]
    values = np.load(os.path.join(folder, "values.npy"), mmap_mode="r")
    offsets = index.pop("_offset").to_numpy()
    if shapes and all(s == shapes[0] for s in shapes):  # one array, as read_stage gives for equal shapes
        return index, values[:len(shapes) * int(np.prod(shapes[0]))].reshape(len(shapes), *shapes[0])
    return index, [values[o:o + int(np.prod(s))].reshape(s) for o, s in zip(offsets, shapes)]
