"""FER2013 in its native form: one `fer2013.csv` with columns emotion (0–6), pixels (2304
space-separated integers, a 48×48 grey image) and Usage (Training / PublicTest /
PrivateTest → train / val / test).

The file is parsed on Ray Data: the driver finds where each line starts (one pass over the
bytes), and each task reads and parses its own byte range of a few thousand lines. The
images land in the same content-addressed Parquet cache as every other feature stage, as
8-bit arrays, so a second run parses nothing. Malformed rows (wrong pixel count, values
that are not integers in 0–255, unknown label or usage) go to the errors table with their
line number; every good row is kept.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .features import Stage
from .manifest import PROBLEM_COLUMNS
from .pipeline import PrepareResult, ShardWriter, load_features, run_cached
from ..core.storage import read_range
from ..core.errors import BadInput, InputNotFound

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SIDE = 48
HEADER = ["emotion", "pixels", "Usage"]


def split_row(line: str) -> tuple[int, str, str]:
    """One CSV line → (label index, split, pixels text); ValueError(reason)."""
    fields = line.rstrip("\r\n").split(",")
    if len(fields) != 3:
        raise ValueError(f"expected 3 comma-separated fields (emotion,pixels,Usage), got {len(fields)}")
    emotion, pixels, usage = (f.strip().strip('"') for f in fields)
    if not emotion.isdigit() or int(emotion) >= len(LABELS):
        raise ValueError(f"unknown label {emotion!r} (expected 0-{len(LABELS) - 1})")
    if usage not in USAGE:
        raise ValueError(f"unknown Usage {usage!r} (expected one of {', '.join(USAGE)})")
    return int(emotion), USAGE[usage], pixels


def pixels_to_image(pixels: str, size: int = SIDE) -> dict:
    """The stage: a pixels string → {"image": uint8[size, size]}; ValueError(reason)."""
    try:  # numpy's C text parser: 4× faster than split + array; any doubt → the careful path
        image = np.fromstring(pixels, dtype=np.int64, sep=" ")
    except ValueError:
        image = None
    if image is None or len(image) != size * size:
        values = pixels.split()
        bad = next((v for v in values if not v.lstrip("-").isdigit()), None)
        if bad is not None:
            raise ValueError(f"pixel value {bad[:20]!r} is not an integer")
        if len(values) != size * size:
            raise ValueError(f"expected {size * size} pixels, got {len(values)}")
        image = np.array(values, dtype=np.int64)
    if image.min() < 0 or image.max() > 255:
        raise ValueError(f"pixel values must lie in 0-255, found {image.min()}..{image.max()}")
    return {"image": image.astype(np.uint8).reshape(size, size)}


def parse_row(line: str, size: int = SIDE) -> dict:
    """One CSV line → {"image": uint8[size, size], "label": int, "split": str}; ValueError(reason)."""
    label, split, pixels = split_row(line)
    return {**pixels_to_image(pixels, size), "label": label, "split": split}


FER_IMAGE = Stage("fer_image", 1, pixels_to_image, {"size": SIDE}, "48×48 uint8 face from a fer2013.csv row")


def find_csv(path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.rglob("fer2013.csv")) or sorted(path.glob("*.csv"))
        if not candidates:
            raise InputNotFound(f"FER2013: no fer2013.csv under {path}")
        path = candidates[0]
    if not path.is_file():
        raise InputNotFound(f"FER2013: file not found: {path} (expected fer2013.csv)")
    return path


def line_index(path: Path) -> tuple[pd.DataFrame, str]:
    """One row per data line: uid, path, line (1-based, header = 1), byte start and end;
    and the file's content hash. One sequential pass over the bytes."""
    data = path.read_bytes()
    header = data[: data.find(b"\n") if b"\n" in data else len(data)].decode("utf-8", "replace").strip().lstrip("\ufeff")
    if [h.strip() for h in header.split(",")] != HEADER:
        raise BadInput(f"{path}: header must be 'emotion,pixels,Usage', got {header[:80]!r}")
    starts, stops, lines = [], [], []
    pos, line = data.find(b"\n") + 1, 2  # after the header
    while 0 < pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        if end > pos and data[pos:end].strip():
            starts.append(pos), stops.append(end), lines.append(line)
        pos, line = end + 1, line + 1
    digest = hashlib.sha256(b"fer2013\0")
    digest.update(data)
    fingerprint = digest.hexdigest()[:12]
    return pd.DataFrame({"uid": [f"L{n}" for n in lines], "path": str(path), "line": lines,
                         "start": starts, "stop": stops}), fingerprint


def parse_batch(batch: pd.DataFrame, stages: dict, fs_uri: str) -> pd.DataFrame:
    """The FER worker: read this shard's byte range once and parse its lines."""
    writer = ShardWriter(stages, fs_uri)
    path = batch["path"].iloc[0]
    start = int(batch["start"].min())
    chunk = read_range(path, start, int(batch["stop"].max()))
    params = stages["fer_image"]["params"]
    for uid, line, a, b in zip(batch["uid"], batch["line"], batch["start"], batch["stop"]):
        try:
            label, split, pixels = split_row(chunk[a - start:b - start].decode("utf-8"))
            outputs = {"fer_image": FER_IMAGE(pixels, **params)}
        except UnicodeDecodeError:  # a ValueError too, but its message names bytes, not the problem
            writer.failed(uid, path, ["fer_image"], "parse", "not valid UTF-8", line=int(line))
        except ValueError as e:
            writer.failed(uid, path, ["fer_image"], "parse", str(e), line=int(line))
        else:
            writer.ok(uid, path, outputs, meta={"label": label, "split": split}, line=int(line))
    return writer.close()


def read_fer2013(path, cache_dir: str | None = None, strict: bool = False, shard_size: int = 2048,
                 progress: bool = True) -> PrepareResult:
    """Parse (or find in the cache) every row of fer2013.csv. load_images(result) gives the
    arrays; result.errors lists the malformed rows by line."""
    csv_path = find_csv(path)
    lines, fingerprint = line_index(csv_path)
    return run_cached("fer2013", fingerprint, lines, pd.DataFrame(columns=PROBLEM_COLUMNS),
                      {"fer_image": (FER_IMAGE, {})}, parse_batch, {}, cache_dir=cache_dir, strict=strict,
                      shard_size=shard_size, progress=progress, unit="rows")


def load_images(result: PrepareResult) -> tuple[pd.DataFrame, np.ndarray]:
    """(items with uid, line, label (0–6), split; uint8 images N × 48 × 48) in file order."""
    items, arrays = load_features(result, "fer_image")
    order = np.argsort(items["line"].to_numpy(), kind="stable")
    items = items.iloc[order].reset_index(drop=True)
    images = np.asarray(arrays)[order] if len(arrays) else np.zeros((0, SIDE, SIDE), np.uint8)
    return items, images


def read_with_pandas(path) -> tuple[pd.DataFrame, np.ndarray]:
    """The plain way, for comparison (bench/fer_throughput.py): pandas.read_csv and a parse of
    every pixels string. It fails on the first malformed row instead of reporting it."""
    frame = pd.read_csv(find_csv(path))
    images = np.stack([np.array(p.split(), dtype=np.uint8).reshape(SIDE, SIDE) for p in frame["pixels"]])
    return frame, images

