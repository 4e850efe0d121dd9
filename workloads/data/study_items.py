"""The items a study's trials read: one small Parquet file the driver writes beside the cache.

A study's driver decides, once per sweep, which items are usable and in which split; every
trial needs that table. It travels as a file, not inside the config: Tune prints and stores
every config value of every trial. The file name carries a digest of its content, so a
changed table never overwrites one a running sweep reads."""
from __future__ import annotations

import hashlib
from functools import lru_cache

import pandas as pd

from ..core.errors import BadInput


def write_items(config: dict, table: pd.DataFrame, corpus_dir_name: str) -> dict:
    """Write `table` (a uid column and whatever the trials read) under the cache and set
    config["items_fs"] / config["items_file"] to find it. Returns config."""
    from ..core.storage import filesystem
    from .pipeline import default_cache_dir

    fs_uri = config.get("cache_fs") or default_cache_dir()
    fs, base = filesystem(fs_uri)
    config["items_fs"] = fs_uri if "://" in fs_uri else base
    config["items_file"] = _store(fs, f"{base}/{corpus_dir_name}", table)
    return config


def _store(fs, folder: str, table: pd.DataFrame) -> str:
    """`table` as `folder/study-items-<digest of its content>.parquet`; returns the path."""
    import pyarrow as pa

    from .pipeline import _write_atomic

    digest = hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:12]
    path = f"{folder}/study-items-{digest}.parquet"
    fs.create_dir(folder, recursive=True)
    _write_atomic(fs, path, pa.Table.from_pandas(table, preserve_index=False))
    return path


def study_items(config: dict) -> dict:
    """uid → {column: value} for the items the driver wrote (or config["items"], handed in
    directly by tests and plain-process runs)."""
    if "items" in config:
        return config["items"]
    return _read_items(config["items_fs"], config["items_file"])


def drop_duplicates(config: dict) -> tuple[dict, list]:
    """Keep the first item (by uid) of each group of identical decoded audio (content_hash,
    within a corpus) and drop the others from the items the trials read. Returns (config, the
    groups: [(kept uid, [dropped uids])])."""
    items = study_items(config)
    groups: dict = {}
    for uid in sorted(items):
        h = items[uid].get("content_hash") or ""
        if h:
            groups.setdefault((str(items[uid].get("corpus") or ""), h), []).append(uid)
    dropped = [(uids[0], uids[1:]) for uids in groups.values() if len(uids) > 1]
    gone = {u for _, rest in dropped for u in rest}
    if not gone:
        return config, []
    config = dict(config)
    if "items" in config:
        config["items"] = {u: row for u, row in items.items() if u not in gone}
        return config, dropped
    import pyarrow.parquet as pq

    from ..core.storage import filesystem

    fs = filesystem(config["items_fs"])[0]
    table = pq.read_table(config["items_file"], filesystem=fs).to_pandas()
    config["items_file"] = _store(fs, config["items_file"].rsplit("/", 1)[0],
                                  table[~table["uid"].isin(gone)].reset_index(drop=True))
    return config, dropped


@lru_cache(maxsize=2)
def _read_items(fs_uri: str, path: str) -> dict:
    import pyarrow.parquet as pq

    from ..core.storage import filesystem

    frame = pq.read_table(path, filesystem=filesystem(fs_uri)[0]).to_pandas()
    columns = [c for c in frame.columns if c != "uid"]
    return {uid: {c: (int(v) if c == "y" else v) for c, v in zip(columns, values)}
            for uid, *values in frame[["uid", *columns]].itertuples(index=False)}


def prepare_corpus(corpus: str, root: str, stages: dict, seed: int, by_speaker: bool,
                   fractions=(0.8, 0.1, 0.1), media_root: str | None = None,
                   emotions: bool = True, report: dict | None = None,
                   caps: dict | None = None) -> tuple[pd.DataFrame, dict, str, str]:
    """Driver side, for the hand-made-feature studies: read `corpus` in whatever layout `root`
    has (its reader when `corpus` names one and root is a folder; else a manifest, an EmoBox
    folder or the layout told from the files; `emotions`: a manifest's labels are emotions),
    split it from `seed`, compute `stages` ({name: params}) with the media pipeline (cached).
    Every file the reader or the decoder could not use is reported in the summary line and
    left out. Returns (usable items: uid as `corpus/uid`, corpus, label, split, speaker;
    {stage: cache folder}; the cache's filesystem URI; the corpus fingerprint)."""
    from .folds import content_hashes
    from .layouts import read_any
    from .manifest import fold_columns, split_items
    from .pipeline import prepare as prepare_media

    manifest = read_any(root, name=corpus, media_root=media_root, emotions=emotions)
    if manifest.items.empty:
        raise BadInput(f"{root}: no usable {corpus} clips; the reader said:\n{manifest.problems.head(10)}")
    manifest.items = split_items(manifest.items, seed, corpus, fractions=fractions, by_speaker=by_speaker)
    # the hash: for the split gate; caps: the study's media limits (audio.media_caps)
    result = prepare_media(manifest, {**stages, "content_hash": {}}, progress=False, **(caps or {}))
    print(f"[emosweep] {corpus}: {result.summary()}", flush=True)
    if report is not None:  # the corpus's profile and problems, for the sweep's data report
        problems = result.errors.groupby("reason").size().sort_values(ascending=False)
        report[corpus] = (f"{len(manifest.items)} items, {result.usable} usable; {result.profile()}"
                          + ("; problems: " + ", ".join(f"{reason} ×{n}" for reason, n in problems.items())
                             if len(problems) else "; no problems"))
    usable = manifest.items[~manifest.items["path"].isin(set(result.errors["path"]))]
    hashes = content_hashes(result.fs_uri, result.stages["content_hash"].dir)
    table = pd.DataFrame({"uid": corpus + "/" + usable["uid"], "corpus": corpus, "label": usable["label"],
                          "split": usable["split"], "speaker": usable["speaker"], "path": usable["path"],
                          "content_hash": usable["uid"].map(hashes).fillna(""),
                          **{c: usable[c].fillna("").astype(str) for c in fold_columns(usable.columns)}})
    dirs = {name: s.dir for name, s in result.stages.items() if name != "content_hash"}
    return table.reset_index(drop=True), dirs, result.fs_uri, result.fingerprint


def stage_splits(config: dict, stage: str, classes: list, corpus_of_split: dict, stack: bool = False,
                 feature: str | None = None) -> dict:
    """Trial side: split → (arrays, int64 labels) of one cached stage, for the items the driver
    wrote whose label is one of `classes` (label index = position): a list of arrays, or one
    array with `stack` (every item the same shape). corpus_of_split: split → the corpus it is
    read from (config["stage_dirs"][corpus][stage]). With config["speaker_norm"], every item is
    first standardized by its speaker's statistics (see speaker_standardized)."""
    import numpy as np

    from .folds import trial_splits
    from .pipeline import read_stage

    index = {c: i for i, c in enumerate(classes)}
    items = study_items(config)
    splits = trial_splits(items, config)
    read = {corpus: read_stage(config["cache_fs"], config["stage_dirs"][corpus][stage], feature)
            for corpus in set(corpus_of_split.values())}  # each corpus's stage read once, for all its splits
    if config.get("speaker_norm"):
        read = {corpus: speaker_standardized(frame, arrays, corpus, items) for corpus, (frame, arrays) in read.items()}
    out = {}
    for split, corpus in corpus_of_split.items():
        frame, arrays = read[corpus]
        xs, ys = [], []
        for i, uid in enumerate(frame["uid"]):
            row = items.get(f"{corpus}/{uid}")
            if row is None or splits[f"{corpus}/{uid}"] != split or row["label"] not in index:
                continue
            xs.append(np.asarray(arrays[i], dtype=np.float32))
            ys.append(index[row["label"]])
        if not ys:
            raise ValueError(f"{corpus}: no {split} clips of the classes {classes}")
        out[split] = (np.stack(xs) if stack else xs, np.asarray(ys, dtype=np.int64))
    return out


def speaker_statistics(samples, eps: float = 1e-6) -> dict:
    """speaker → (mean, std) over every observation of all that speaker's samples. samples:
    (speaker, array (..., observations, features)) pairs; the statistics keep the leading axes
    and one observation, (..., 1, features), summed in float64. Reads no label."""
    import numpy as np

    sums: dict = {}
    for who, x in samples:
        x = np.asarray(x, dtype=np.float64)
        s1, s2, n = sums.get(who, (0.0, 0.0, 0))
        sums[who] = (s1 + x.sum(-2, keepdims=True), s2 + (x ** 2).sum(-2, keepdims=True), n + x.shape[-2])
    out = {}
    for who, (s1, s2, n) in sums.items():
        mean = s1 / max(n, 1)
        out[who] = (mean, np.sqrt(np.maximum(s2 / max(n, 1) - mean ** 2, 0)) + eps)
    return out


def speaker_standardized(frame, arrays, corpus: str, items: dict) -> tuple:
    """Speaker normalization of one stage: each item's features (the last axis) minus its
    speaker's mean, over that speaker's standard deviation, both over every frame of all that
    speaker's clips in the corpus. No label is read; a test speaker's unlabeled clips are used,
    as speaker normalization in emotion recognition does."""
    import numpy as np

    speakers = [str((items.get(f"{corpus}/{uid}") or {}).get("speaker") or "") for uid in frame["uid"]]
    stats = speaker_statistics((w, np.reshape(a, (-1, np.shape(a)[-1]))) for w, a in zip(speakers, arrays))
    return frame, [((np.asarray(a, dtype=np.float64) - stats[w][0][0]) / stats[w][1][0]).astype(np.float32)
                   for w, a in zip(speakers, arrays)]
