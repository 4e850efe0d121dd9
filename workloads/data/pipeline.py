"""The media pipeline: manifest → Ray Data (read file bytes, FFmpeg decode, feature stages,
across workers) → a content-addressed Parquet cache. `run_cached` is the cache driver any
input kind can use with its own worker (the FER2013 CSV reader does); `prepare` is the one
for media files.

Cache layout (`cache_dir` is a local folder or a pyarrow URI such as s3://bucket/cache):

    {corpus}-{fingerprint}/                 one corpus, identified by its content
        errors.csv / errors.parquet         everything not usable: path, line, stage, reason
        manifest.parquet                    media corpora: the items (uid, path, label, split, …)
        {stage}-v{version}-{params hash}/   one stage with one set of params
            shard-{hash}.parquet            uid + the stage's arrays (flattened) + their shapes
            failed-{hash}.parquet           items of that shard that could not be used
            _SUCCESS.json                   written last: the stage is complete; every file's size,
                                            mtime and SHA-256 (workloads/data/shards.py checks them)
            damaged/                        files found damaged, moved aside (their items recomputed)

A shard is written by the worker that computed it, to a temporary name and then renamed,
so no half-written shard is ever read. An item is done when a shard or failed file lists
it, so a run cut short resumes where it stopped, and a run over a complete stage decodes
nothing (it reads only the uid columns).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .audio import MAX_FILE_MB, MAX_SECONDS, TARGET_SR, MediaError, Recording, decode_audio
from .features import get_stage
from .manifest import Manifest
from .shards import ARRAY_SHARD, INDEX, array_column, array_dtype, binary_layout, build_index, chunk_values, check_stage, list_parquet, read_index, read_shard
from .shards import write_atomic as _write_atomic
from ..core.storage import file_size, filesystem, read_bytes

ERROR_COLUMNS = ["path", "line", "stage", "reason", "detail"]


class StrictModeError(RuntimeError):
    """--strict: the first unusable input stops the run."""


# ----------------------------------------------------------------------------- storage

def _list(fs: pafs.FileSystem, folder: str, prefix: str) -> list[str]:
    return [i.path for i in list_parquet(fs, folder, prefix)]


def _shard_name(uids) -> str:
    return hashlib.sha256("\0".join(sorted(uids)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the workers

SUMMARY_COLUMNS = ["uid", "path", "line", "ok", "stage", "reason", "detail", "node"]


class ShardWriter:
    """Collects one shard's outputs in a worker and writes, per stage, one shard file (uid,
    the arrays flattened with their shapes, and any per-item metadata) and one failed file."""

    def __init__(self, stages: dict, fs_uri: str):
        from ..core.on_ray import _ray

        self.stages, self.fs = stages, filesystem(fs_uri)[0]
        ray = _ray()
        self.node = ray.get_runtime_context().get_node_id() if ray is not None else ""
        self.results = {name: [] for name in stages}
        self.failures = {name: [] for name in stages}
        self.summary = []

    def ok(self, uid: str, path: str, outputs: dict, meta: dict | None = None, line: int = 0) -> None:
        """outputs: stage name → {array name: array}."""
        for name, arrays in outputs.items():
            self.results[name].append((uid, arrays, meta or {}))
        self.summary.append({"uid": uid, "path": path, "line": line, "ok": True, "stage": "", "reason": "",
                             "detail": "", "node": self.node})

    def failed(self, uid: str, path: str, stages, stage: str, reason: str, detail: str = "", line: int = 0,
               limit: tuple | None = None) -> None:
        """`limit`: (kind, value) of the media limit that refused it (MediaError.limit): kept in
        the failed file, so a run with that limit raised tries the item again."""
        row = {"uid": uid, "path": path, "line": line, "stage": stage, "reason": reason, "detail": detail,
               "limit_kind": limit[0] if limit else "", "limit": float(limit[1]) if limit else 0.0}
        for name in stages:
            self.failures[name].append(row)
        self.summary.append({**{k: row[k] for k in SUMMARY_COLUMNS if k in row}, "ok": False, "node": self.node})

    def close(self) -> pd.DataFrame:
        for name, rows in self.results.items():
            folder = self.stages[name]["dir"]
            if rows:
                _write_atomic(self.fs, f"{folder}/shard-{_shard_name(u for u, _, _ in rows)}.parquet", _to_table(rows),
                              **ARRAY_SHARD)
            if self.failures[name]:
                _write_atomic(self.fs, f"{folder}/failed-{_shard_name(r['uid'] for r in self.failures[name])}.parquet",
                              pa.Table.from_pylist(self.failures[name]))
        return pd.DataFrame(self.summary, columns=SUMMARY_COLUMNS)


def read_and_decode(path: str, sr: int, max_seconds: float | None = MAX_SECONDS,
                    max_file_mb: float | None = MAX_FILE_MB, segment: tuple[float, float] | None = None,
                    info: dict | None = None, recording: Recording | None = None):
    """A media file (local path or URI) decoded to mono float32 at `sr`; MediaError with a
    stable reason for anything that cannot be used. A whole file over `max_file_mb` is refused
    before it is read, one over `max_seconds` before (or while) it is decoded. A segment of a
    long recording is read from the open file, seeking to its start: only its own bytes are
    read, so the size cap does not apply to it (its length does). `recording`: keeps the file
    open for the next segment of the same file (a worker reading a shard's segments in order)."""
    if segment is not None:
        def opener():
            fs, inner = filesystem(path)
            return fs.open_input_file(inner)
        own = recording is None
        recording = recording or Recording()
        try:
            return recording.read(path, opener, sr, max_seconds, segment, info)
        except OSError as e:
            raise MediaError(path, "unreadable", f"cannot read file: {e}") from None
        finally:
            if own:
                recording.close()
    try:
        size = file_size(path)
        if max_file_mb is not None and size is not None and size > max_file_mb * 1e6:
            raise MediaError(path, "file too large", f"{size / 1e6:.0f} MB, over the {max_file_mb:g} MB limit "
                                                     f"(--max-file-mb); not read",
                             limit=("max_file_mb", float(max_file_mb)))
        data = read_bytes(path)
    except OSError as e:
        raise MediaError(path, "unreadable", f"cannot read file: {e}") from None
    return decode_audio(data, sr=sr, name=path, max_seconds=max_seconds, info=info)


def segments(batch: pd.DataFrame) -> list:
    """Each row's (start, end) seconds where it is a segment of a longer file, else None."""
    starts = batch["start"] if "start" in batch else [None] * len(batch)
    ends = batch["end"] if "end" in batch else [None] * len(batch)
    return [(float(a), float(b)) if a is not None and not pd.isna(a) else None for a, b in zip(starts, ends)]


def featurize_batch(batch: pd.DataFrame, stages: dict, fs_uri: str, sr: int, max_seconds: float | None = MAX_SECONDS,
                    max_file_mb: float | None = MAX_FILE_MB) -> pd.DataFrame:
    """The media worker, one shard: read each file's bytes, decode once, compute the stages
    the item still needs. Returns one summary row per item."""
    writer = ShardWriter(stages, fs_uri)
    recording = Recording()  # a long recording's segments, in order, through one open file
    for uid, path, need, segment in zip(batch["uid"], batch["path"], batch["need"], segments(batch)):
        need = need.split(",")
        stage = "decode"
        info: dict = {}
        try:
            wave = read_and_decode(path, sr, max_seconds, max_file_mb, segment, info, recording)
            stage, outputs = "features", {}
            for name in need:
                try:
                    outputs[name] = get_stage(name)(wave, sr, **stages[name]["params"])
                except Exception as e:  # a stage that cannot handle this clip (e.g. too short)
                    raise MediaError(path, f"stage {name} failed", f"{type(e).__name__}: {e}") from None
            writer.ok(uid, path, outputs, {"seconds": float(info.get("seconds", 0.0)),
                                           "source_sr": int(info.get("source_sr", 0))})
        except MediaError as e:
            writer.failed(uid, path, need, stage, e.reason, e.detail, limit=e.limit)
    recording.close()
    return writer.close()


def _to_table(rows: list) -> pa.Table:
    """rows: (uid, {array name: array}, {meta name: scalar}). Arrays keep their dtype, each
    item's stored as its raw bytes (shards.array_column)."""
    fields, columns = [pa.field("uid", pa.string())], [pa.array([u for u, _, _ in rows], pa.string())]
    for key in rows[0][1]:
        arrays = [np.asarray(a[key]) for _, a, _ in rows]
        field, column = array_column(arrays)
        fields += [field.with_name(key), pa.field(f"{key}_shape", pa.list_(pa.int32()))]
        columns += [column, pa.array([list(a.shape) for a in arrays], pa.list_(pa.int32()))]
    for key in rows[0][2]:
        column = pa.array([m[key] for _, _, m in rows])
        fields.append(pa.field(key, column.type))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


# ----------------------------------------------------------------------------- the driver

@dataclass
class StageCache:
    name: str
    params: dict
    key: str
    dir: str
    computed: int = 0  # items computed (or found unusable) by this run
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
    nodes: set = field(default_factory=set)  # Ray nodes that worked on items in this run
    unit: str = "files"
    busy_s: float = 0.0  # an encoder's device busy seconds, summed over its workers (encoder stages)
    worker_s: float = 0.0  # and those workers' wall seconds, decoding included

    @property
    def usable(self) -> int:
        return len(self.items) - int((self.errors["stage"] != "read").sum())

    def profile(self) -> str:
        """Speakers, classes, total duration and the sample rates seen, of the usable items (the
        last two from the decoder's record in the cache, where it holds one)."""
        items = self.items
        if self.unit != "files" or items.empty or "label" not in items:
            return ""
        items = items[~items["path"].isin(set(self.errors["path"]))]
        speakers = items["speaker"].fillna("").astype(str) if "speaker" in items else pd.Series([], dtype=str)
        parts = [f"{speakers[speakers != ''].nunique()} speakers", f"{items['label'].nunique()} classes"]
        meta = self.decoded_meta()
        if len(meta):
            parts.append(f"{meta['seconds'].sum() / 60:.1f} min of audio")
            rates = meta["source_sr"].value_counts()
            parts.append("sample rates " + ", ".join(f"{int(r)} Hz ×{n}" for r, n in rates.items() if r))
        return "; ".join(parts)

    def decoded_meta(self) -> pd.DataFrame:
        """uid, seconds, source_sr of every usable item the first stage's shards record (none for
        shards written before the decoder recorded them)."""
        if not self.stages:
            return pd.DataFrame(columns=["uid", "seconds", "source_sr"])
        fs, _ = filesystem(self.fs_uri)
        stage = next(iter(self.stages.values()))
        frames = []
        for path in _list(fs, stage.dir, "shard-"):
            schema = pq.read_schema(path, filesystem=fs)
            if {"seconds", "source_sr"} <= set(schema.names):
                frames.append(pq.read_table(path, columns=["uid", "seconds", "source_sr"], filesystem=fs).to_pandas())
        meta = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["uid", "seconds", "source_sr"])
        meta = meta.drop_duplicates("uid")
        return meta[meta["uid"].isin(set(self.items["uid"]))]

    def summary(self) -> str:
        where = f" on {len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''}" if self.nodes else ""
        verb = "decoded" if self.unit == "files" else "parsed"
        lines = [f"{self.corpus} ({self.fingerprint}): {len(self.items)} items read, {self.usable} usable, "
                 f"{len(self.errors)} errors; {verb} {self.decoded} {self.unit}{where} in {self.seconds:.1f} s"
                 + (f" ({self.decoded / self.seconds:.1f} {self.unit}/s)" if self.decoded and self.seconds else "")]
        if self.worker_s:
            lines.append(f"  encoder busy {self.busy_s / self.worker_s:.0%} of its workers' time "
                         f"({self.busy_s:.1f} of {self.worker_s:.1f} s; the rest decodes and writes)")
        for s in self.stages.values():
            lines.append(f"  {s.key}: {s.computed} computed, {s.cached} from cache → {s.dir}")
        profile = self.profile()
        if profile:
            lines.append("  " + profile)
        if len(self.errors):
            lines.append("  errors by reason:")
            for (stage, reason), group in self.errors.groupby(["stage", "reason"]):
                names = ", ".join(os.path.basename(str(p)) for p in group["path"].head(3))
                more = f" and {len(group) - 3} more" if len(group) > 3 else ""
                lines.append(f"    {len(group):5d}  {stage}: {reason} ({names}{more})")
            lines.append(f"  full list: {self.corpus_dir}/errors.csv")
        return "\n".join(lines)


def default_cache_dir() -> str:
    from workloads.core.paths import emosweep_home

    return str(emosweep_home() / "cache")


def _done_uids(fs, folder: str, limits: dict | None = None) -> tuple[set, list]:
    """The items the stage holds (computed or failed), after any damaged file was moved aside
    (its items are then not done: this run recomputes them). An item a media limit refused
    is not done when this run's `limits` ({kind: value}, MediaError.limit's kinds) raise that
    limit above the one that refused it: it is tried again."""
    ok, failed_rows = set(), []
    for name, table in check_stage(fs, folder).items():  # each file read once, its pages checked
        if name.startswith("failed-"):
            failed_rows.extend(table.to_pylist())
        else:
            ok.update(table.column("uid").to_pylist())

    def lifted(row) -> bool:
        kind = row.get("limit_kind") or ""
        return bool(kind) and limits is not None and kind in limits and (
            limits[kind] is None or float(limits[kind]) > float(row.get("limit") or 0.0))

    failed_rows = [r for r in failed_rows if r["uid"] not in ok and not lifted(r)]
    return ok | {r["uid"] for r in failed_rows}, failed_rows


def _strict_message(row) -> str:
    where = f"{row['path']}" + (f":{int(row['line'])}" if row.get("line") else "")
    return f"{where}: {row['reason']}" + (f" ({row['detail']})" if row.get("detail") else "")


def run_cached(name: str, fingerprint: str, items: pd.DataFrame, problems: pd.DataFrame, stages: dict,
               worker, worker_kwargs: dict, cache_dir: str | None = None, strict: bool = False,
               shard_size: int = 32, progress: bool = True, key_context: dict | None = None,
               unit: str = "files", actors: dict | None = None) -> PrepareResult:
    """The cache driver every input kind shares. `items` has one row per unit of work (a uid
    plus whatever `worker` reads); `stages` maps a stage name to (Stage, params overrides).
    Items no shard or failed file lists yet are handed to `worker(batch, stages, fs_uri,
    **worker_kwargs)` on Ray Data, `shard_size` per task; the worker writes the shards.

    A worker that holds something costly (a neural encoder) is a class: `actors` =
    {"init": constructor kwargs, "concurrency": actors, "num_gpus": per actor, "num_cpus": …}
    runs it on a pool of Ray Data actors that each build it once (GPU actors on a cluster);
    "pre": (fn, kwargs) runs fn on each shard as plain one-CPU tasks first, streamed into the
    actors (the worker then finds fn's columns in its batch; in-process, it does that work itself).
    A cache that already holds everything is read without importing or starting Ray."""
    t0 = time.perf_counter()
    if not stages:
        raise ValueError("no feature stage given; choose from the stages in workloads/data/features.py")
    fs_uri = cache_dir or default_cache_dir()
    fs, base = filesystem(fs_uri)
    if "://" not in fs_uri:
        fs_uri = base
    if strict and len(problems):
        raise StrictModeError(_strict_message(problems.iloc[0]))
    corpus_dir = f"{base}/{name}-{fingerprint}"
    result = PrepareResult(name, fingerprint, corpus_dir, fs_uri, items, unit=unit)
    for stage_name, (stage, overrides) in stages.items():
        params = stage.params(overrides)
        key = stage.key(params, **(key_context or {}))
        result.stages[stage_name] = StageCache(stage_name, params, key, f"{corpus_dir}/{key}")
        fs.create_dir(result.stages[stage_name].dir, recursive=True)

    need, failed_rows = {}, []
    uids = items["uid"].tolist()
    # the media limits this run decodes with (featurize_batch's keywords, or the encoders' caps)
    limits = {"max_seconds": MAX_SECONDS, "max_file_mb": MAX_FILE_MB,
              **{k: v for k, v in {**worker_kwargs, **(worker_kwargs.get("caps") or {})}.items()
                 if k in ("max_seconds", "max_file_mb")}}
    for s in result.stages.values():
        done, rows = _done_uids(fs, s.dir, limits)
        failed_rows += rows
        todo = [u for u in uids if u not in done]
        s.cached = len(uids) - len(todo)
        s.computed = len(todo)
        for u in todo:
            need.setdefault(u, []).append(s.name)

    if need:
        pending = items[items["uid"].isin(need)].copy()
        if "start" in pending:  # a file's segments together and in order: a worker reads them through one open file
            pending = pending.sort_values(["path", "start"], kind="stable", na_position="first")
        pending["need"] = [",".join(need[u]) for u in pending["uid"]]
        spec = {n: {"params": s.params, "dir": s.dir} for n, s in result.stages.items()}
        run = _in_process if without_ray() else _on_ray_data
        for batch in run(name, pending, worker, {"stages": spec, "fs_uri": fs_uri, **worker_kwargs}, actors,
                         shard_size, progress):
            result.decoded += len(batch)
            result.nodes.update(batch["node"])
            if "busy_s" in batch:  # an encoder worker: how busy it kept its device
                result.busy_s += float(batch["busy_s"].sum())
                result.worker_s += float(batch["wall_s"].sum())
            bad = batch[~batch["ok"]]
            if strict and len(bad):
                raise StrictModeError(_strict_message(bad.iloc[0]))
            failed_rows += bad.to_dict("records")

    errors = pd.DataFrame(failed_rows, columns=["uid"] + ERROR_COLUMNS).drop_duplicates("uid")
    errors = errors.sort_values(["path", "line"])
    reader = problems.assign(stage="read", detail="")
    result.errors = pd.concat([reader[ERROR_COLUMNS], errors[ERROR_COLUMNS]], ignore_index=True)
    result.errors["line"] = result.errors["line"].fillna(0).astype(int)
    _write_atomic(fs, f"{corpus_dir}/errors.csv", result.errors.to_csv(index=False).encode())
    _write_atomic(fs, f"{corpus_dir}/errors.parquet", pa.Table.from_pandas(result.errors, preserve_index=False))
    for s in result.stages.values():  # the index of every file, with _SUCCESS in one atomic write
        _write_atomic(fs, f"{s.dir}/{INDEX}", json.dumps({
            "corpus": name, "fingerprint": fingerprint, "stage": s.name, "params": s.params, "key": s.key,
            "items": len(uids), **(key_context or {}),
            "shards": build_index(fs, s.dir, read_index(fs, s.dir))}).encode())
    result.seconds = time.perf_counter() - t0
    return result


def _in_process(name: str, pending: pd.DataFrame, worker, fn_kwargs: dict, actors: dict | None, shard_size: int,
                progress: bool):
    """The worker's summary of each shard, computed in this process (--local)."""
    fn = worker(**actors.get("init", {})) if actors is not None else worker
    for i in _progress(range(0, len(pending), shard_size), progress, f"{name}: decoding in this process"):
        yield fn(pending.iloc[i:i + shard_size], **fn_kwargs)


MAX_TASK_RETRIES = 2  # a task whose worker process dies is run again this often, then its items are reported


def _worker_died(error: BaseException) -> BaseException | None:
    """The worker-death error (crash, OOM kill, lost node) inside a Ray Data failure, if any."""
    from ray import exceptions as rex

    deaths = (rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError, rex.ObjectLostError, rex.RayActorError)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, deaths) or (isinstance(error, rex.RayTaskError) and isinstance(error.cause, deaths)):
            return error
        error = error.__cause__ or error.__context__
    return None


def _one_per_task(name: str, left: pd.DataFrame, worker, fn_kwargs: dict):
    """After a shard killed its worker MAX_TASK_RETRIES + 1 times: each item left in a task of
    its own (with as many retries), so the file that kills its worker is found and reported
    (written to the stage's failed files, so no later run tries it again) and every other item
    is computed."""
    import ray

    run = ray.remote(num_cpus=1, max_retries=MAX_TASK_RETRIES)(lambda batch: worker(batch, **fn_kwargs))
    refs = [(row, run.remote(left.iloc[[i]])) for i, (_, row) in enumerate(left.iterrows())]
    for row, ref in refs:
        try:
            yield ray.get(ref)
        except Exception as e:
            death = _worker_died(e)
            if death is None:
                raise
            yield _report_death(row, fn_kwargs, death)


def _report_death(row, fn_kwargs: dict, death) -> pd.DataFrame:
    """The summary of an item whose worker died on it every time: written to the stage's failed
    files (so no later run tries it again) as `worker died`."""
    writer = ShardWriter(fn_kwargs["stages"], fn_kwargs["fs_uri"])
    writer.failed(row["uid"], str(row.get("path", row["uid"])), str(row["need"]).split(","), "decode",
                  "worker died", f"the process working on it died {MAX_TASK_RETRIES + 1} times "
                                 f"({type(death).__name__})", int(row.get("line", 0) or 0))
    return writer.close()


def _one_per_actor_call(name: str, left: pd.DataFrame, worker, fn_kwargs: dict, actors: dict):
    """_one_per_task for a worker that is a class (an encoder actor): one actor, restarted as
    often as a task is retried, takes the items left one call each, so the model is built once
    per actor, not once per item. The item on which it died every time is reported and a new
    actor takes the rest. A `pre` stage (decoding ahead of GPU actors) runs as a one-item task
    first, and an item that kills it is reported the same way."""
    import ray

    options = {"num_cpus": actors.get("num_cpus", 1), "max_restarts": MAX_TASK_RETRIES,
               "max_task_retries": MAX_TASK_RETRIES}
    if actors.get("num_gpus"):
        options["num_gpus"] = actors["num_gpus"]
    cls = ray.remote(**options)(worker)
    pre = None
    if actors.get("pre"):
        fn, pre_kwargs = actors["pre"]
        pre = ray.remote(num_cpus=1, max_retries=MAX_TASK_RETRIES)(lambda batch: fn(batch, **pre_kwargs))
    actor = None
    for i in range(len(left)):
        row, batch = left.iloc[i], left.iloc[[i]]
        try:
            if pre is not None:
                batch = ray.get(pre.remote(batch))
            actor = actor or cls.remote(**actors.get("init", {}))
            yield ray.get(actor.__call__.remote(batch, **fn_kwargs))
        except Exception as e:
            death = _worker_died(e)
            if death is None:
                raise
            actor = None  # a dead actor's restarts are spent: a fresh one for the next item
            yield _report_death(row, fn_kwargs, death)


def _on_ray_data(name: str, pending: pd.DataFrame, worker, fn_kwargs: dict, actors: dict | None, shard_size: int,
                 progress: bool):
    """The worker's summary of each shard, computed by Ray Data tasks (or a pool of actors).
    A task whose worker dies is retried MAX_TASK_RETRIES times (Ray Data's default is for
    ever), an actor restarted as often; then the items not yet done are run one per task (one
    per call of an actor), and the one that kills its worker is reported."""
    import ray

    from ..core.ray_start import start_ray

    start_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    shards = [pending.iloc[i:i + shard_size] for i in range(0, len(pending), shard_size)]
    kwargs = {"fn_kwargs": fn_kwargs, "num_cpus": 1, "max_retries": MAX_TASK_RETRIES}
    if actors is not None:
        kwargs.pop("max_retries")
        kwargs.update(fn_constructor_kwargs=actors.get("init", {}), num_cpus=actors.get("num_cpus", 1),
                      compute=ray.data.ActorPoolStrategy(size=int(actors.get("concurrency", 1))),
                      max_restarts=MAX_TASK_RETRIES, max_task_retries=MAX_TASK_RETRIES)
        if actors.get("num_gpus"):
            kwargs["num_gpus"] = actors["num_gpus"]
    ds = ray.data.from_pandas(shards)
    if actors is not None and actors.get("pre"):  # a CPU stage ahead of the actors (decoding for GPU encoders)
        fn, fn_kwargs_pre = actors["pre"]
        ds = ds.map_batches(fn, batch_size=None, batch_format="pandas", fn_kwargs=fn_kwargs_pre, num_cpus=1,
                            max_retries=MAX_TASK_RETRIES)
    ds = ds.map_batches(worker, batch_size=None, batch_format="pandas", **kwargs)
    done = set()
    try:
        for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
            done.update(batch["uid"])
            yield batch
    except Exception as e:
        if _worker_died(e) is None:
            raise
        left = pending[~pending["uid"].isin(done)]
        print(f"[emosweep] {name}: a worker died {MAX_TASK_RETRIES + 1} times on one shard "
              f"({type(_worker_died(e)).__name__}); running the {len(left)} items left one per "
              f"{'task' if actors is None else 'call of a fresh actor'} to find the file", file=sys.stderr, flush=True)
        if actors is None:
            yield from _one_per_task(name, left, worker, fn_kwargs)
        else:
            yield from _one_per_actor_call(name, left, worker, fn_kwargs, actors)


def without_ray() -> bool:
    """Whether this process computes what the cache lacks itself, not on Ray Data: `--local`
    (EMOSWEEP_LOCAL=1) outside a running Ray, or no Ray installed."""
    import importlib.util

    from ..core.on_ray import _ray

    if _ray() is not None:
        return False
    from ..core.config import env_flag

    return env_flag("EMOSWEEP_LOCAL") or importlib.util.find_spec("ray") is None


def _progress(steps, show: bool, desc: str):
    """steps, with a bar over them when show."""
    from ..core.console import progress_bar

    bar = progress_bar(len(steps), desc, "shard") if show else None
    for step in steps:
        yield step
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def prepare(manifest: Manifest, stages, cache_dir: str | None = None, strict: bool = False,
            sr: int = TARGET_SR, shard_size: int = 32, progress: bool = True,
            max_seconds: float | None = MAX_SECONDS, max_file_mb: float | None = MAX_FILE_MB) -> PrepareResult:
    """Decode every media item of the manifest and compute `stages` ({name: params} or
    [names]) on Ray Data, reusing whatever the cache already holds. Starts a local Ray if
    none is running. An item over `max_file_mb` or `max_seconds` is reported, not decoded."""
    stages = {s: {} for s in stages} if isinstance(stages, (list, tuple)) else dict(stages)
    result = run_cached(
        manifest.name, manifest.fingerprint(), manifest.items, manifest.problems,
        {name: (get_stage(name), params) for name, params in stages.items()},
        featurize_batch, {"sr": sr, "max_seconds": max_seconds, "max_file_mb": max_file_mb}, cache_dir=cache_dir, strict=strict, shard_size=shard_size,
        progress=progress, key_context={"sr": sr})
    fs, _ = filesystem(result.fs_uri)
    table = pa.Table.from_pandas(manifest.items.astype({"split": str}), preserve_index=False)
    if manifest.options:  # how the corpus was read (--follow-symlinks), kept with its items
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"emosweep.read_options": json.dumps(manifest.options).encode()})
    _write_atomic(fs, f"{result.corpus_dir}/manifest.parquet", table)
    return result


def read_stage(fs_uri: str, stage_dir: str, feature: str | None = None,
               mapped: bool = False) -> tuple[pd.DataFrame, list]:
    """Everything one cached stage holds: (uid + any per-item metadata, arrays), in shard
    order. Needs no manifest, so a trial can load what the driver prepared. When every item
    has the same shape the arrays are one ndarray (N × shape, no copy of the column);
    otherwise a list. `mapped` (a stage on a local disk, a named feature): the arrays are
    read-only views of the stage's shards, memory-mapped where they lie (data/flat.py; a list),
    indexed on first use and shared by every process on the machine."""
    fs, _ = filesystem(fs_uri)
    if mapped and feature and isinstance(fs, pafs.LocalFileSystem):
        from .flat import read_flat

        got = read_flat(stage_dir, feature)
        if got is not None:
            return got
    tables = [read_shard(fs, p, stage_dir) for p in _list(fs, stage_dir, "shard-")]
    if not tables:
        return pd.DataFrame(columns=["uid"]), []
    if len({t.schema.remove_metadata() for t in tables}) > 1:  # shards of both array layouts
        tables = [binary_layout(t) for t in tables]
    table = pa.concat_tables(tables)
    arrays = [c[:-len("_shape")] for c in table.column_names if c.endswith("_shape")]
    feature = feature or arrays[0]
    meta = [c for c in table.column_names if c != "uid" and c not in arrays and not c.endswith("_shape")]
    shapes = table.column(f"{feature}_shape").to_pylist()
    frame = table.select(["uid"] + meta).to_pandas()
    # a uid listed twice (a task of a killed run that finished after the resume began) is the same work
    keep = ~frame["uid"].duplicated().to_numpy()
    dtype = array_dtype(table.schema.field(feature))
    if not (shapes and all(sh == shapes[0] for sh in shapes)):
        out = [a for a, k in zip(_views(table.column(feature), shapes, dtype), keep) if k]
        return frame[keep].reset_index(drop=True), out
    flat, offsets = chunk_values(table.column(feature).combine_chunks(), dtype)
    if offsets[0] == 0:
        out = flat[:offsets[-1]].reshape(len(shapes), *shapes[0])
        out = out if keep.all() else out[keep]
    else:
        out = [a for a, k in zip(_views(table.column(feature), shapes, dtype), keep) if k]
    return frame[keep].reset_index(drop=True), out


def _views(column: pa.ChunkedArray, shapes: list, dtype: np.dtype) -> list:
    """One read-only numpy view per item of an array column, chunk by chunk: no copy of the
    column (a frozen encoder's states are gigabytes; a trial must not hold them twice)."""
    out, i = [], 0
    for chunk in column.chunks:
        flat, offsets = chunk_values(chunk, dtype)
        for j in range(len(chunk)):
            out.append(flat[offsets[j]:offsets[j + 1]].reshape(shapes[i]))
            i += 1
    return out


def load_features(result: PrepareResult, stage: str, feature: str | None = None):
    """(items, arrays) for one stage: the manifest rows that have features, in manifest
    order (with any per-item metadata the worker found), and a list of arrays (np.stack
    them when the shapes agree)."""
    frame, arrays = read_stage(result.fs_uri, result.stages[stage].dir, feature)
    by_uid = dict(zip(frame["uid"], arrays))
    items = result.items[result.items["uid"].isin(by_uid)].reset_index(drop=True)
    meta = [c for c in frame.columns if c != "uid"]
    if meta:
        items = items.drop(columns=[c for c in meta if c in items.columns]).merge(frame, on="uid", how="left")
    return items, [by_uid[u] for u in items["uid"]]
