"""Corpora described by a file rather than a folder layout: a researcher's own manifest
(CSV, TSV, JSONL or JSON) and EmoBox's JSONL with its fixed folds.

A manifest names each item's `path` and `label` (required) and may give `speaker`, `split`,
`text`, and `start`/`end` (seconds: a segment of a longer file). Paths are relative to the
manifest. A path that is not there is looked up by file name under the manifest's folder (or
`media_root`), and by stem when only the extension differs (a corpus re-encoded to another
container). Labels go through the canonical emotion map (`labels.py`); an unmapped one is
reported. Every row that cannot be used is one problems-table row with its line and reason.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .corpora import FOLLOW_SYMLINKS, _manifest, index_media, media_key, shown, unusable_entry
from .labels import canonical
from .manifest import Manifest, field_problem, fold_columns, read_text_records
from ..core.errors import BadInput, InputNotFound

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
PATH_ALIASES = ("path", "file", "filename", "wav", "audio", "audio_path")
LABEL_ALIASES = ("label", "emotion", "emo", "class")
SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
          "test": "test", "": ""}


class _Resolver:
    """A manifest's path → the media file it means (None when none is found), as described
    above; the tree under `root` is indexed once, on the first path that is not where it says."""

    def __init__(self, base: Path, root: Path):
        self.base, self.root, self._index = base, root, None

    def __call__(self, raw: str) -> tuple[str | None, str]:
        given = Path(raw)
        for candidate in ([given] if given.is_absolute() else [self.base / given, self.root / given]):
            if candidate.exists():
                return str(candidate), ""
        if self._index is None:
            self._index = index_media(self.root, [])  # unusable entries matter only if a row names one
        found = self._index.get(media_key(given.name), [])
        exact = [p for p in found if os.path.basename(p) == given.name]
        found = exact or found
        if len(found) > 1:  # prefer the one whose folders match the given path's
            tail = [p for p in found if Path(p).as_posix().endswith(given.as_posix().lstrip("./"))]
            found = tail or found
        if len(found) == 1:
            return found[0], ""
        if found:
            return None, f"ambiguous: {len(found)} files named like {given.name} under {self.root}"
        return None, f"media not found: {raw} (nor a file named like it under {self.root})"


def _unusable(path: str, root: Path) -> str | None:
    """corpora.unusable_entry's reasons (never opened: FIFO, device, loop, dangling link, a
    name not UTF-8), following links wherever they lead: a manifest names its files itself."""
    token = FOLLOW_SYMLINKS.set(True)
    try:
        return unusable_entry(path, root)
    finally:
        FOLLOW_SYMLINKS.reset(token)


def _seconds(value, name: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name} is not a number of seconds: {value!r}") from None
    if seconds < 0:
        raise ValueError(f"{name} is negative: {value!r}")
    return seconds


def items_from_rows(name: str, rows, base: Path, root: Path, source: Path, problems: list,
                    emotions: bool = True) -> list[dict]:
    """Manifest rows (line, {path, label, ...}) → items; the rows that cannot be used go to
    `problems`. `emotions`: labels go through the canonical emotion map (else as written)."""
    resolve, items, seen = _Resolver(base, root), [], set()

    def bad(line: int, reason: str) -> None:
        problems.append({"path": str(source), "line": line, "reason": reason})

    for line, row in rows:
        row = {str(k).strip().lower(): v for k, v in row.items()}
        raw = next((str(row[k]).strip() for k in PATH_ALIASES if row.get(k) not in (None, "")), "")
        label_raw = next((row[k] for k in LABEL_ALIASES if row.get(k) not in (None, "")), None)
        texts = [str(v) for v in row.values() if v is not None]
        if field_problem(texts):
            bad(line, field_problem(texts))
            continue
        if not raw:
            bad(line, f"no path (a column named one of {', '.join(PATH_ALIASES)})")
            continue
        label = canonical(label_raw) if emotions else (str(label_raw).strip() or None if label_raw is not None else None)
        if label is None:
            bad(line, f"unmapped label {label_raw!r} (not in the emotion map, workloads/data/labels.py)"
                if label_raw is not None else f"no label (a column named one of {', '.join(LABEL_ALIASES)})")
            continue
        split = SPLITS.get(str(row.get("split") or "").strip().lower())
        if split is None:
            bad(line, f"unknown split {row.get('split')!r} (train, val or test)")
            continue
        try:
            start, end = _seconds(row.get("start"), "start"), _seconds(row.get("end"), "end")
        except ValueError as e:
            bad(line, str(e))
            continue
        if (start is None) != (end is None) or (start is not None and end <= start):
            bad(line, f"a segment needs both start and end, end after start (got {row.get('start')!r}, "
                      f"{row.get('end')!r})")
            continue
        path, why = resolve(raw)
        if path is None:
            bad(line, why)
            continue
        why = _unusable(path, root)
        if why:
            bad(line, f"{shown(path)}: {why}")
            continue
        rel = os.path.relpath(path, root) if Path(path).resolve().is_relative_to(root.resolve()) else path
        uid = rel + (f"#{start:g}-{end:g}" if start is not None else "")
        if uid in seen:
            bad(line, f"the same item twice: {uid}")
            continue
        seen.add(uid)
        item = {"uid": uid, "path": path, "label": label, "split": split,
                "speaker": str(row.get("speaker") or "").strip(), "text": str(row.get("text") or "").strip(),
                "manifest_line": line}
        if start is not None:
            item.update(start=start, end=end)
        if row.get("key") not in (None, ""):  # the corpus's own id (EmoBox's): an export writes it back
            item["key"] = str(row["key"])
        items.append({**item, **{k: row[k] for k in fold_columns(row)}})
    return items


def _json_rows(path: Path, problems: list):
    """(line, record) for a JSONL file (one object per line) or a JSON file (a list of objects,
    or an object holding one under "items"); a line that is not a JSON object is a problem."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise BadInput(f"{path}: not valid JSON ({e})") from None
        data = data.get("items", data) if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise BadInput(f"{path}: expected a list of items (or an object with \"items\")")
        for i, record in enumerate(data, 1):
            if isinstance(record, dict):
                yield i, record
            else:
                problems.append({"path": str(path), "line": i, "reason": "item is not a JSON object"})
        return
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as e:
            problems.append({"path": str(path), "line": line, "reason": f"not valid JSON ({str(e)[:80]})"})
            continue
        if not isinstance(record, dict):
            problems.append({"path": str(path), "line": line, "reason": "line is not a JSON object"})
            continue
        yield line, record


def _delimited_rows(path: Path, delimiter: str, problems: list):
    records = read_text_records(path, delimiter=delimiter)
    _, header = next(records, (0, []))
    header = [h.strip().lower() for h in header]
    if not any(h in PATH_ALIASES for h in header) or not any(h in LABEL_ALIASES for h in header):
        raise BadInput(f"{path}: the header needs a path column ({', '.join(PATH_ALIASES)}) and a label column "
                       f"({', '.join(LABEL_ALIASES)}); it is {header}")
    for line, fields in records:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            problems.append({"path": str(path), "line": line, "reason": f"expected {len(header)} fields, got "
                                                                         f"{len(fields)}"})
            continue
        yield line, dict(zip(header, fields))


def read_manifest_file(path, media_root=None, name: str | None = None, emotions: bool = True) -> Manifest:
    """A manifest file (.csv, .tsv, .jsonl, .json) → Manifest named `name` (default: its stem).
    `emotions`: labels are emotions, spelled canonically (False: kept as written)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise BadInput(f"{path}: a manifest is .csv, .tsv, .jsonl or .json")
    root = Path(media_root) if media_root else path.parent
    if not root.is_dir():
        raise InputNotFound(f"--media-root: folder not found: {root}")
    problems: list = []
    rows = (_json_rows(path, problems) if suffix in (".jsonl", ".json") else
            _delimited_rows(path, "\t" if suffix == ".tsv" else ",", problems))
    items = items_from_rows(name or path.stem, rows, path.parent, root, path, problems, emotions)
    if not items and not problems:
        raise BadInput(f"{path}: no items")
    classes = sorted({i["label"] for i in items})
    return _manifest(name or _name_of(path.stem), items, problems, classes, sources=[path])


def _name_of(stem: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "manifest"


# --- EmoBox -------------------------------------------------------------------------------
def is_emobox(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob("fold_*/*_test_fold_*.jsonl")) and _emobox_corpus(folder) is not None


def _emobox_corpus(folder: Path) -> str | None:
    tops = [p.stem for p in folder.glob("*.jsonl")]
    folds = {m.group(1) for p in folder.glob("fold_*/*.jsonl") if (m := re.match(r"(.+)_(train|test)_fold_\d+$", p.stem))}
    both = sorted(set(tops) & folds)
    return both[0] if both else (tops[0] if len(tops) == 1 else None)


def read_emobox(folder, media_root=None, name: str | None = None) -> Manifest:
    """One corpus's EmoBox files: `<corpus>.jsonl` (records `{key, wav, emo, ...}`) and
    `fold_K/<corpus>_{train,test}_fold_K.jsonl`, with the audio under `media_root` (where
    EmoBox's `wav` paths are relative to; default: the folder). Each item gets `fold_K` =
    train or test as EmoBox's folds say, so `--folds given` reproduces its protocol."""
    folder = Path(folder)
    corpus = _emobox_corpus(folder) if folder.is_dir() else None
    if corpus is None:
        raise BadInput(f"{folder}: not an EmoBox corpus folder (<corpus>.jsonl and fold_K/<corpus>_test_fold_K.jsonl)")
    root = Path(media_root) if media_root else folder
    if not root.is_dir():
        raise InputNotFound(f"--media-root: folder not found: {root}")
    problems: list = []
    fold_of: dict[str, dict] = {}
    for fold_file in sorted(folder.glob(f"fold_*/{corpus}_*_fold_*.jsonl")):
        m = re.match(rf"{re.escape(corpus)}_(train|test)_fold_(\d+)$", fold_file.stem)
        if not m:
            continue
        for _, record in _json_rows(fold_file, problems):
            fold_of.setdefault(str(record.get("key")), {})[f"fold_{int(m.group(2))}"] = m.group(1)
    source = folder / f"{corpus}.jsonl"

    def rows():
        for line, record in _json_rows(source, problems):
            yield line, {"path": record.get("wav"), "label": record.get("emo"), "speaker": record.get("speaker", ""),
                         "key": record.get("key"), **fold_of.get(str(record.get("key")), {})}
    items = items_from_rows(corpus, rows(), root, root, source, problems)
    folds = fold_columns({k for i in items for k in i})
    for item in items:
        for k in folds:
            item.setdefault(k, "")
    manifest = _manifest(name or corpus, items, problems, sorted({i["label"] for i in items}),
                         sources=[source, *sorted(folder.glob(f"fold_*/{corpus}_*_fold_*.jsonl"))])
    manifest.options["given_folds"] = len(folds)
    return manifest
