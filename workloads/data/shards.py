"""The cache's files and their integrity: atomic, fsynced writes; Parquet page checksums; an
index of every shard (size, mtime, SHA-256) kept in the stage's `_SUCCESS.json`; and the
checks that find a damaged shard, move it aside and let the next run recompute its items.

What finds what:
- a re-run of a stage (cheap): a shard whose size differs from the index, or that is missing;
  a shard whose mtime changed, by its SHA-256; a shard whose footer or uid column cannot be
  read. The damaged shard goes to `{stage}/damaged/`, one warning line names it, and its items
  are recomputed; the rest are kept.
- a trial reading a stage: Parquet's page checksums (CRC32 of every data page, written with
  the shard) and the footer; it stops with the shard's path and the command that repairs it.
- `emosweep data verify` (full): every shard's SHA-256 against the index and a full read with
  page checksums; damaged shards are moved aside the same way.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..core.errors import BadInput
from ..core.storage import sha256

INDEX = "_SUCCESS.json"
DAMAGED = "damaged"


class DamagedShard(BadInput):
    """A cache file that cannot be read as it was written."""


def repair_hint(stage_dir: str) -> str:
    return f"`emosweep data verify {stage_dir}` moves it aside; the next run recomputes its items"


# ----------------------------------------------------------------------------- arrays in a shard
# A shard stores each item's array as one binary value, its raw bytes, with the dtype in the
# column's metadata and the shape in `{name}_shape`. Parquet writes a binary value with one copy;
# a list<float16> it writes value by value (FIXED_LEN_BYTE_ARRAY), 4x slower, and that was what
# bounded the encoder cache (bench/encoder_pass.py). Shards of the earlier layout, a list of the
# dtype, are read as before.

def array_column(arrays: list) -> tuple[pa.Field, pa.Array]:
    """(field, column) holding `arrays` (one dtype) as raw bytes: one copy, into the column."""
    dtype = np.asarray(arrays[0]).dtype
    sizes = np.array([np.asarray(a).nbytes for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for a, start, end in zip(arrays, offsets[:-1], offsets[1:]):
        data[start:end] = np.ascontiguousarray(a, dtype=dtype).reshape(-1).view(np.uint8)
    column = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(arrays),
                                              [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.field("", pa.large_binary(), metadata={"dtype": dtype.str}), column


def array_dtype(field: pa.Field) -> np.dtype:
    """The dtype of the arrays a shard column holds (either layout)."""
    if pa.types.is_large_binary(field.type) or pa.types.is_binary(field.type):
        return np.dtype((field.metadata or {})[b"dtype"].decode())
    return np.dtype(field.type.value_type.to_pandas_dtype())


def chunk_values(chunk: pa.Array, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(every value of the chunk end to end, the element offset of each item and the end):
    read-only views of the chunk's own buffers, no copy (either layout)."""
    if pa.types.is_large_binary(chunk.type) or pa.types.is_binary(chunk.type):
        _, offsets, data = chunk.buffers()
        width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        bounds = np.frombuffer(offsets, dtype=width)[chunk.offset:chunk.offset + len(chunk) + 1].astype(np.int64)
        flat = np.frombuffer(data, dtype=dtype, count=data.size // dtype.itemsize) if data is not None else \
            np.empty(0, dtype)
        return flat, bounds // dtype.itemsize
    return chunk.values.to_numpy(zero_copy_only=False), chunk.offsets.to_numpy()


def binary_layout(table: pa.Table) -> pa.Table:
    """The table with any array column of the earlier list layout rewritten as raw bytes (a
    copy), so shards of both layouts in one stage (a cache resumed across the change) concat."""
    for name in [c[:-len("_shape")] for c in table.column_names if c.endswith("_shape")]:
        field = table.schema.field(name)
        if pa.types.is_large_binary(field.type) or not len(table):
            continue
        dtype = array_dtype(field)
        items = []
        for chunk in table.column(name).chunks:
            flat, bounds = chunk_values(chunk, dtype)
            items += [flat[bounds[j]:bounds[j + 1]] for j in range(len(chunk))]
        new, column = array_column(items)
        table = table.set_column(table.column_names.index(name), new.with_name(name), column)
    return table


# Parquet options for a shard of arrays: no dictionary (arrays of floats never repeat), no
# column statistics (min/max of a list of floats is never read), no compression (Snappy kept
# 1.00 of real whisper-base states' bytes and cost 16% of the write; zstd kept 0.88 for +40%).
# Page checksums stay: the cache's healing reads them.
ARRAY_SHARD = {"use_dictionary": False, "write_statistics": False, "compression": "none"}


def write_atomic(fs: pafs.FileSystem, path: str, content: pa.Table | bytes, **parquet) -> None:
    """Write to a temporary name, then rename: readers see the whole file or nothing. On a
    local disk the file and its folder are fsynced, so a crash never leaves a named file
    with lost pages. A table is written as Parquet with page checksums, bytes as they are."""
    folder = os.path.dirname(path)
    tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{os.path.basename(path)}"
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:
        with open(tmp, "wb") as f:
            if isinstance(content, pa.Table):
                pq.write_table(content, f, write_page_checksum=True, **parquet)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    if isinstance(content, pa.Table):
        pq.write_table(content, tmp, filesystem=fs, write_page_checksum=True, **parquet)
    else:
        with fs.open_output_stream(tmp) as f:
            f.write(content)
    fs.move(tmp, path)


def list_parquet(fs: pafs.FileSystem, folder: str, prefix: str) -> list[pafs.FileInfo]:
    info = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted((i for i in info if i.type == pafs.FileType.File and i.base_name.startswith(prefix)
                   and i.base_name.endswith(".parquet")), key=lambda i: i.path)


def read_index(fs: pafs.FileSystem, folder: str) -> dict:
    """{file name: {size, mtime_ns, sha256}} as the stage's last complete run recorded it."""
    try:
        with fs.open_input_stream(f"{folder}/{INDEX}") as f:
            return dict(json.loads(f.read()).get("shards") or {})
    except (OSError, ValueError):
        return {}


def _stat(info: pafs.FileInfo) -> dict:
    return {"size": info.size, "mtime_ns": info.mtime_ns}


def build_index(fs: pafs.FileSystem, folder: str, previous: dict) -> dict:
    """The index of the stage's files now: a file the previous index lists with the same size
    and mtime keeps its hash; any other is hashed."""
    index = {}
    for info in list_parquet(fs, folder, "shard-") + list_parquet(fs, folder, "failed-"):
        known = previous.get(info.base_name)
        same = known and known.get("size") == info.size and known.get("mtime_ns") == info.mtime_ns
        index[info.base_name] = {**_stat(info), "sha256": known["sha256"] if same else sha256(info.path, fs)}
    return index


def move_aside(fs: pafs.FileSystem, path: str, why: str, stage_dir: str) -> str:
    """Move a damaged file into `{stage}/damaged/` (kept for a post-mortem, never read again)
    and say so in one line."""
    target_dir = f"{stage_dir}/{DAMAGED}"
    fs.create_dir(target_dir, recursive=True)
    target = f"{target_dir}/{os.path.basename(path)}.{time.strftime('%Y%m%d-%H%M%S')}"
    fs.move(path, target)
    print(f"[emosweep] damaged cache file {path} ({why}): moved to {target}; its items are recomputed",
          file=sys.stderr, flush=True)
    return target


def damage(fs: pafs.FileSystem, info: pafs.FileInfo, recorded: dict | None,
           full: bool) -> tuple[str | None, pa.Table | None]:
    """(why a cache file is damaged or None, what was read of it). Cheap unless `full` or its
    mtime changed since it was indexed: then its SHA-256 is compared too. What is read, every
    page checked: a shard's uid column, a failed file whole, or (`full`) everything, which is
    not kept."""
    if info.size == 0:
        return "empty file", None
    if recorded:
        if recorded.get("size") != info.size:
            return f"size {info.size} bytes, {recorded.get('size')} when written", None
        if (full or recorded.get("mtime_ns") != info.mtime_ns) and sha256(info.path, fs) != recorded.get("sha256"):
            return "its SHA-256 differs from the one recorded when it was written", None
    columns = None if full or info.base_name.startswith("failed-") else ["uid"]
    try:
        table = pq.read_table(info.path, columns=columns, filesystem=fs, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        return f"unreadable Parquet: {str(e).splitlines()[0][:200]}", None
    return None, (None if full else table)


def check_stage(fs: pafs.FileSystem, folder: str, full: bool = False,
                found: list | None = None) -> dict[str, pa.Table | None]:
    """Check the stage's files, move the damaged ones aside (appending (path, why) to `found`;
    an indexed file that is gone is reported too: its items are recomputed), and return what
    was read of each intact one by file name (see damage)."""
    index = read_index(fs, folder)
    found = [] if found is None else found
    intact = {}
    for info in list_parquet(fs, folder, "shard-") + list_parquet(fs, folder, "failed-"):
        why, table = damage(fs, info, index.get(info.base_name), full)
        if why:
            move_aside(fs, info.path, why, folder)
            found.append((info.path, why))
        else:
            intact[info.base_name] = table
    for name in sorted(set(index) - set(intact) - {os.path.basename(p) for p, _ in found}):
        print(f"[emosweep] cache file {folder}/{name} is missing; its items are recomputed", file=sys.stderr,
              flush=True)
        found.append((f"{folder}/{name}", "missing"))
    return intact


def read_shard(fs: pafs.FileSystem, path: str, stage_dir: str, columns: list | None = None) -> pa.Table:
    """A shard as a table, every page checked against its checksum; DamagedShard names the file
    and the command that repairs it."""
    try:
        return pq.read_table(path, columns=columns, filesystem=fs, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise damaged_shard(path, stage_dir, e) from None


def damaged_shard(path: str, stage_dir: str, error: Exception) -> DamagedShard:
    """The error a reader stops with: the shard, why, and the command that repairs it."""
    return DamagedShard(f"{path}: damaged cache shard ({str(error).splitlines()[0][:200]}); {repair_hint(stage_dir)}")
