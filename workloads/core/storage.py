"""Files wherever they lie: a local path or a URI (s3://, gs://, file://), through pyarrow's
filesystems, so readers, workers and the cache run unchanged on a laptop or a cluster."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.fs as pafs


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it); a local path is made absolute."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def file_size(location: str) -> int:
    fs, path = filesystem(location)
    return fs.get_file_info(path).size


def read_range(location: str, start: int, stop: int) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_file(path) as f:
        return f.read_at(stop - start, start)


def file_sample(location: str, edge: int = 4096) -> bytes:
    """Size + the first and last `edge` bytes: a cheap content signature of a large file."""
    fs, path = filesystem(location)
    with fs.open_input_file(path) as f:
        size = f.size()
        head = f.read_at(min(edge, size), 0)
        tail = f.read_at(edge, size - edge) if size > 2 * edge else f.read_at(max(size - edge, 0), edge)
    return str(size).encode() + head + tail


def sha256(location: str | os.PathLike, fs: pafs.FileSystem | None = None) -> str:
    """The SHA-256 of a file (a local path or URI; `fs`: the filesystem `location` is a path in)."""
    path = str(location)
    if fs is None:
        fs, path = filesystem(path)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Every file under a local folder by its relative path (POSIX form), in sorted order."""
    folder = Path(folder)
    return {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*")) if f.is_file()}
