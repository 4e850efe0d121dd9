"""The media pipeline: manifest → Ray Data (read file bytes, FFmpeg decode, feature stages,
across workers) → a content-addressed Parquet cache.

Cache layout (`cache_dir` is a local folder or a pyarrow URI such as s3://bucket/cache):

    {corpus}-{fingerprint}/                 one corpus, identified by its content
        errors.csv / errors.parquet         everything not usable: path, line, stage, reason
        manifest.parquet                    the items (uid, path, label, split, speaker, text)
        {stage}-v{version}-{params hash}/   one stage with one set of params
            shard-{hash}.parquet            uid + the stage's arrays (flattened) + their shapes
            failed-{hash}.parquet           items of that shard that could not be used
            _SUCCESS.json                   written last: every item is in a shard or failed

A shard is written by the worker that computed it, to a temporary name and then renamed,
so no half-written shard is ever read. An item is done when a shard or failed file lists
it, so a run cut short resumes where it stopped, and a run that finds _SUCCESS.json does
no decoding at all.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .audio import TARGET_SR, MediaError, decode_audio
from .features import get_stage
from .manifest import Manifest

ERROR_COLUMNS = ["path", "line", "stage", "reason", "detail"]


class StrictModeError(RuntimeError):
    """--strict: the first unusable input stops the run."""


# ----------------------------------------------------------------------------- storage

def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _write_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write to a temporary name, then rename: readers see the whole file or nothing."""
    tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}-{os.path.basename(path)}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def _list(fs: pafs.FileSystem, folder: str, prefix: str) -> list[str]:
    info = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in info if i.type == pafs.FileType.File
                  and os.path.basename(i.path).startswith(prefix) and i.path.endswith(".parquet"))


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(p) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _shard_name(uids) -> str:
    return hashlib.sha256("\0".join(sorted(uids)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the worker

def featurize_batch(batch: pd.DataFrame, stages: dict, sr: int, fs_uri: str) -> pd.DataFrame:
    """One shard: read each item's bytes, decode once, compute the stages the item still
    needs, write one shard (and one failed file) per stage. Returns one row per item:
    uid, path, ok, stage, reason, detail, node."""
    import ray

    fs, _ = _fs(fs_uri)
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    results = {name: [] for name in stages}
    failed = {name: [] for name in stages}
    summary = []
    for uid, path, need in zip(batch["uid"], batch["path"], batch["need"]):
        need = need.split(",")
        row = {"uid": uid, "path": path, "ok": True, "stage": "", "reason": "", "detail": "", "node": node}
        try:
            try:
                data = _read_bytes(path)
            except OSError as e:
                raise MediaError(path, "unreadable", f"cannot read file: {e}") from None
            wave = decode_audio(data, sr=sr, name=path)
            row["stage"] = "features"
            outputs = {}
            for name in need:
                try:
                    outputs[name] = get_stage(name)(wave, sr, **stages[name]["params"])
                except Exception as e:  # a stage that cannot handle this clip (e.g. too short)
                    raise MediaError(path, f"stage {name} failed", f"{type(e).__name__}: {e}") from None
            for name, arrays in outputs.items():
                results[name].append((uid, arrays))
        except MediaError as e:
            row.update(ok=False, stage=row["stage"] or "decode", reason=e.reason, detail=e.detail)
            for name in need:
                failed[name].append({"uid": uid, **{k: row[k] for k in ("path", "stage", "reason", "detail")}})
        summary.append(row)
    for name, rows in results.items():
        folder = stages[name]["dir"]
        if rows:
            _write_atomic(fs, f"{folder}/shard-{_shard_name(u for u, _ in rows)}.parquet", _to_table(rows))
        if failed[name]:
            _write_atomic(fs, f"{folder}/failed-{_shard_name(r['uid'] for r in failed[name])}.parquet",
                          pa.Table.from_pylist(failed[name]))
    return pd.DataFrame(summary, columns=["uid", "path", "ok", "stage", "reason", "detail", "node"])


def _to_table(rows: list) -> pa.Table:
    columns = {"uid": pa.array([u for u, _ in rows], pa.string())}
    for key in rows[0][1]:
        arrays = [np.asarray(a[key], np.float32) for _, a in rows]
        offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(np.int64)
        values = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)
        columns[key] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
        columns[f"{key}_shape"] = pa.array([list(a.shape) for a in arrays], pa.list_(pa.int32()))
    return pa.table(columns)


# ----------------------------------------------------------------------------- the driver

@dataclass
class StageCache:
    name: str
    params: dict
    key: str
    dir: str
    computed: int = 0  # items computed by this run
    cached: int = 0  # items found already done


@dataclass
class PrepareResult:
    corpus: str
    fingerprint: str
    corpus_dir: str
    fs_uri: str
    items: pd.DataFrame
    stages: dict = field(default_factory=dict)
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ERROR_COLUMNS))
    decoded: int = 0
    seconds: float = 0.0
    nodes: set = field(default_factory=set)  # Ray nodes that decoded items in this run

    @property
    def usable(self) -> int:
        failed = set(self.errors.loc[self.errors["stage"] != "read", "path"])
        return int((~self.items["path"].isin(failed)).sum())

    def summary(self) -> str:
        where = f" on {len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''}" if self.nodes else ""
        lines = [f"{self.corpus} ({self.fingerprint}): {len(self.items)} items read, {self.usable} usable, "
                 f"{len(self.errors)} errors; decoded {self.decoded} files{where} in {self.seconds:.1f} s"
                 + (f" ({self.decoded / self.seconds:.1f} files/s)" if self.decoded and self.seconds else "")]
        for s in self.stages.values():
            lines.append(f"  {s.key}: {s.computed} computed, {s.cached} from cache → {s.dir}")
        if len(self.errors):
            lines.append("  errors by reason:")
            for (stage, reason), n in self.errors.groupby(["stage", "reason"]).size().items():
                lines.append(f"    {n:5d}  {stage}: {reason}")
            lines.append(f"  full list: {self.corpus_dir}/errors.csv")
        return "\n".join(lines)


def default_cache_dir() -> str:
    from workloads.core.paths import emosweep_home

    return str(emosweep_home() / "cache")


def _done_uids(fs, folder: str) -> tuple[set, list]:
    done, failed_rows = set(), []
    for path in _list(fs, folder, "shard-"):
        done.update(pq.read_table(path, columns=["uid"], filesystem=fs).column("uid").to_pylist())
    for path in _list(fs, folder, "failed-"):
        table = pq.read_table(path, filesystem=fs).to_pylist()
        failed_rows.extend(table)
        done.update(r["uid"] for r in table)
    return done, failed_rows


def prepare(manifest: Manifest, stages, cache_dir: str | None = None, strict: bool = False,
            sr: int = TARGET_SR, shard_size: int = 32, progress: bool = True) -> PrepareResult:
    """Compute `stages` ({name: params} or [names]) for every item of the manifest on Ray
    Data, reusing whatever the cache already holds. Starts a local Ray if none is running."""
    import ray

    t0 = time.perf_counter()
    stages = {s: {} for s in stages} if isinstance(stages, (list, tuple)) else dict(stages)
    if not stages:
        raise ValueError("no feature stage given; choose from the stages in workloads/data/features.py")
    fs_uri = cache_dir or default_cache_dir()
    fs, base = _fs(fs_uri)
    if "://" not in fs_uri:
        fs_uri = base
    if strict and len(manifest.problems):
        p = manifest.problems.iloc[0]
        raise StrictModeError(f"{p['path']}" + (f":{p['line']}" if p["line"] else "") + f": {p['reason']}")
    fingerprint = manifest.fingerprint()
    corpus_dir = f"{base}/{manifest.name}-{fingerprint}"
    result = PrepareResult(manifest.name, fingerprint, corpus_dir, fs_uri, manifest.items)
    for name, params in stages.items():
        stage = get_stage(name)
        params = stage.params(params)
        key = stage.key(params, sr)
        result.stages[name] = StageCache(name, params, key, f"{corpus_dir}/{key}")
        fs.create_dir(result.stages[name].dir, recursive=True)
    _write_atomic(fs, f"{corpus_dir}/manifest.parquet",
                  pa.Table.from_pandas(manifest.items.astype({"split": str}), preserve_index=False))

    need, failed_rows = {}, []
    uids = manifest.items["uid"].tolist()
    for s in result.stages.values():
        done, rows = _done_uids(fs, s.dir)
        failed_rows += rows
        todo = [u for u in uids if u not in done]
        s.cached = len(uids) - len(todo)
        for u in todo:
            need.setdefault(u, []).append(s.name)

    if need:
        pending = manifest.items[manifest.items["uid"].isin(need)][["uid", "path"]].copy()
        pending["need"] = [",".join(need[u]) for u in pending["uid"]]
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.print_on_execution_start = progress
        shards = [pending.iloc[i:i + shard_size] for i in range(0, len(pending), shard_size)]
        ds = ray.data.from_pandas(shards).map_batches(
            featurize_batch, batch_size=None, batch_format="pandas", num_cpus=1,
            fn_kwargs={"stages": {n: {"params": s.params, "dir": s.dir} for n, s in result.stages.items()},
                       "sr": sr, "fs_uri": fs_uri})
        for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
            result.decoded += len(batch)
            result.nodes.update(batch["node"])
            bad = batch[~batch["ok"]]
            if strict and len(bad):
                b = bad.iloc[0]
                raise StrictModeError(f"{b['path']}: {b['reason']}" + (f" ({b['detail']})" if b["detail"] else ""))
            failed_rows += bad.to_dict("records")
        for s in result.stages.values():
            s.computed = len([u for u in need if s.name in need[u]])

    errors = pd.DataFrame(failed_rows, columns=["uid"] + ERROR_COLUMNS).drop_duplicates("uid").sort_values("path")
    errors["line"] = 0
    reader = manifest.problems.assign(stage="read", detail="")
    result.errors = pd.concat([reader[ERROR_COLUMNS], errors[ERROR_COLUMNS]], ignore_index=True)
    with fs.open_output_stream(f"{corpus_dir}/errors.csv") as f:
        f.write(result.errors.to_csv(index=False).encode())
    _write_atomic(fs, f"{corpus_dir}/errors.parquet", pa.Table.from_pandas(result.errors, preserve_index=False))
    for s in result.stages.values():
        with fs.open_output_stream(f"{s.dir}/_SUCCESS.json") as f:
            f.write(json.dumps({"corpus": manifest.name, "fingerprint": fingerprint, "stage": s.name,
                                "params": s.params, "key": s.key, "items": len(uids), "sr": sr}).encode())
    result.seconds = time.perf_counter() - t0
    return result


def load_features(result: PrepareResult, stage: str, feature: str | None = None):
    """(items, arrays) for one stage: the manifest rows that have features, in manifest
    order, and a list of arrays (np.stack them when the shapes agree)."""
    s = result.stages[stage]
    fs, _ = _fs(result.fs_uri)
    tables = [pq.read_table(p, filesystem=fs) for p in _list(fs, s.dir, "shard-")]
    if not tables:
        return result.items.iloc[:0], []
    table = pa.concat_tables(tables)
    feature = feature or next(c for c in table.column_names if c != "uid" and not c.endswith("_shape"))
    uids = table.column("uid").to_pylist()
    values = table.column(feature).combine_chunks()
    flat = values.values.to_numpy(zero_copy_only=False)
    offsets = values.offsets.to_numpy()
    shapes = table.column(f"{feature}_shape").to_pylist()
    by_uid = {u: flat[offsets[i]:offsets[i + 1]].reshape(shapes[i]) for i, u in enumerate(uids)}
    items = result.items[result.items["uid"].isin(by_uid)].reset_index(drop=True)
    return items, [by_uid[u] for u in items["uid"]]
