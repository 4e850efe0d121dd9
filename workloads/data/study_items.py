"""The items a study's trials read: one small Parquet file the driver writes beside the cache.

A study's driver decides, once per sweep, which items are usable and in which split; every
trial needs that table. It travels as a file, not inside the config: Tune prints and stores
every config value of every trial. The file name carries a digest of its content, so a
changed table never overwrites one a running sweep reads."""
from __future__ import annotations

import hashlib
from functools import lru_cache

import pandas as pd


def write_items(config: dict, table: pd.DataFrame, corpus_dir_name: str) -> dict:
    """Write `table` (a uid column and whatever the trials read) under the cache and set
    config["items_fs"] / config["items_file"] to find it. Returns config."""
    import pyarrow as pa

    from ..core.storage import filesystem
    from .pipeline import _write_atomic, default_cache_dir

    fs_uri = config.get("cache_fs") or default_cache_dir()
    fs, base = filesystem(fs_uri)
    digest = hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:12]
    config["items_fs"] = fs_uri if "://" in fs_uri else base
    config["items_file"] = f"{base}/{corpus_dir_name}/study-items-{digest}.parquet"
    fs.create_dir(config["items_file"].rsplit("/", 1)[0], recursive=True)
    _write_atomic(fs, config["items_file"], pa.Table.from_pandas(table, preserve_index=False))
    return config


def study_items(config: dict) -> dict:
    """uid → {column: value} for the items the driver wrote (or config["items"], handed in
    directly by tests and plain-process runs)."""
    if "items" in config:
        return config["items"]
    return _read_items(config["items_fs"], config["items_file"])


@lru_cache(maxsize=2)
def _read_items(fs_uri: str, path: str) -> dict:
    import pyarrow.parquet as pq

    from ..core.storage import filesystem

    frame = pq.read_table(path, filesystem=filesystem(fs_uri)[0]).to_pandas()
    columns = [c for c in frame.columns if c != "uid"]
    return {uid: {c: (int(v) if c == "y" else v) for c, v in zip(columns, values)}
            for uid, *values in frame[["uid", *columns]].itertuples(index=False)}
