"""Any corpus from one path: the layout is told from the path itself.

    a .csv/.tsv/.jsonl/.json file   a manifest (manifest_files.read_manifest_file)
    an EmoBox folder                <corpus>.jsonl + fold_K/… (read_emobox; audio under --media-root)
    a folder, named corpus          that corpus's reader (`--corpus emodb=DIR`)
    a folder                        the reader whose file names it holds (RAVDESS, CREMA-D, TESS,
                                    SAVEE, EmoDB, ShEMO; IEMOCAP by its EmoEvaluation folders),
                                    else one folder per class

`--corpus NAME=PATH` names a corpus for the studies that take several (S4's arms are NAME,
NAME_floor and every cross pair); `--data-dir PATH` is the short form for one.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from .corpora import MEDIA_EXTENSIONS, READERS, media_key, read_corpus
from .manifest import Manifest
from .manifest_files import MANIFEST_SUFFIXES, is_emobox, read_emobox, read_manifest_file
from ..core.errors import BadInput, InputNotFound

# file-name patterns (of media_key: lower case, no extension) that tell a corpus's layout
SIGNATURES = {
    "ravdess": re.compile(r"^\d\d-\d\d-\d\d-\d\d-\d\d-\d\d-\d\d$"),
    "cremad": re.compile(r"^\d{4}_[a-z]{3}_[a-z]{3}_[a-z]{2}$"),
    "tess": re.compile(r"^(oaf|yaf)_.+_(angry|disgust|fear|happy|neutral|ps|sad)$"),
    "savee": re.compile(r"^((dc|je|jk|kl)_)?(a|d|f|h|n|sa|su)\d\d$"),
    "emodb": re.compile(r"^\d\d[a-z]\d\d[wlaeftn][a-z]$"),
    "shemo": re.compile(r"^[fm]\d\d[ahnswf]\d\d$"),
}
SAMPLE = 400  # media files looked at to tell a layout


def _media_names(root: Path, limit: int = SAMPLE) -> list[tuple[str, str]]:
    """(file name key, the folder relative to root) of up to `limit` media files under root."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name.lower())[1] in MEDIA_EXTENSIONS:
                out.append((media_key(name), os.path.relpath(folder, root)))
                if len(out) >= limit:
                    return out
    return out


def detect_layout(path) -> str:
    """The layout of a corpus path: 'manifest', 'emobox', a reader's name, or 'folders'.
    BadInput when nothing fits."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        raise BadInput(f"{path}: a corpus is a folder or a manifest (.csv, .tsv, .jsonl, .json)")
    if not path.is_dir():
        raise InputNotFound(f"{path}: no such file or folder")
    if is_emobox(path):
        return "emobox"
    if any(path.glob("Session*/dialog/EmoEvaluation")) or path.name == "EmoEvaluation":
        return "iemocap"
    names = _media_names(path)
    if not names:
        raise BadInput(f"{path}: no media files and no manifest; give a corpus folder, a manifest file or an "
                       f"EmoBox folder")
    for corpus, pattern in SIGNATURES.items():
        if sum(bool(pattern.match(key)) for key, _ in names) >= 0.8 * len(names):
            return corpus
    if all(folder != "." for _, folder in names):
        return "folders"
    raise BadInput(f"{path}: its file names match no known corpus and some files sit at its top, so it is not one "
                   f"folder per class either; name the corpus (--corpus ravdess={path}) or write a manifest "
                   f"(path,label columns)")


def read_any(path, name: str | None = None, media_root=None, emotions: bool = True,
             follow_symlinks: bool = False) -> Manifest:
    """The corpus at `path` in whatever layout it has (see the module's table). `name`: what
    the study calls it; when it names a reader and `path` is a folder, that reader is used.
    `emotions`: labels must be emotions (manifests map them canonically); False keeps a
    manifest's labels as written (digits, genres, speakers). A driver reads a corpus twice
    (its classes build the arms, then its study prepares it): the second read is the first's
    copy, while the path's modification time is unchanged."""
    path = Path(path).expanduser()
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0, name, str(media_root), emotions,
           follow_symlinks)
    if key not in _READ:
        if len(_READ) >= 4:
            _READ.pop(next(iter(_READ)))
        _READ[key] = _read(path, name, media_root, emotions, follow_symlinks)
    read = _READ[key]
    return dataclasses.replace(read, items=read.items.copy(), problems=read.problems.copy(),
                               options=dict(read.options))


_READ: dict = {}  # the last few corpora read in this process (read_any)


def _read(path: Path, name, media_root, emotions: bool, follow_symlinks: bool) -> Manifest:
    layout = "manifest" if path.is_file() else (name if name in READERS and path.is_dir() and not is_emobox(path)
                                                 else detect_layout(path))
    if layout == "manifest":
        manifest = read_manifest_file(path, media_root, name, emotions=emotions)
    elif layout == "emobox":
        manifest = read_emobox(path, media_root, name)
    else:
        manifest = read_corpus(layout, path, follow_symlinks=follow_symlinks)
        manifest.options.setdefault("layout", layout)
    if name:
        manifest.name = name
    return manifest


def named_corpora(corpus_flags: list | None, data_dir: str | None = None, default_name: str | None = None) -> dict:
    """`--corpus NAME=PATH` (repeatable) and `--data-dir PATH` → {name: path}, in the order
    given. A --data-dir corpus is named `default_name`, else its detected layout, else its
    folder's name. BadInput for a malformed or repeated name."""
    out: dict[str, str] = {}
    for flag in corpus_flags or []:
        name, sep, path = str(flag).partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise BadInput(f"--corpus {flag}: expected NAME=PATH (e.g. --corpus emodb=~/data/EmoDB)")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise BadInput(f"--corpus {flag}: NAME is letters, digits and _, starting with a letter")
        if name in out:
            raise BadInput(f"--corpus {name}: named twice")
        if "://" not in path and not Path(path).expanduser().exists():
            raise InputNotFound(f"--corpus {name}={path}: no such file or folder")
        out[name] = os.path.expanduser(path)
    if data_dir:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise InputNotFound(f"--data-dir {data_dir}: no such file or folder")
        try:
            layout = detect_layout(path)
        except BadInput:
            layout = "folders"
        name = default_name or (layout if layout in READERS and layout != "folders" else
                                re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "corpus")
        if name in out:
            raise BadInput(f"--data-dir {data_dir}: a corpus named {name} is given by --corpus too")
        out[name] = str(path)
    return out


def corpus_classes(name: str, path, media_root=None) -> list[str]:
    """A named corpus's classes as canonical emotions, in its reader's order (read once, driver
    side, to build the arms and their class maps). BadInput for a corpus with no usable item."""
    from .labels import spelled

    manifest = read_any(path, name=name, media_root=media_root)
    if manifest.items.empty:
        raise BadInput(f"--corpus {name}={path}: no usable items; the reader said:\n"
                       f"{manifest.problems.head(5).to_string()}")
    present = set(manifest.items["label"].map(spelled))
    ordered = [spelled(c) for c in manifest.classes] or sorted(present)
    return [c for c in dict.fromkeys(ordered) if c in present]


def cross_pairs(classes: dict, min_shared: int = 2) -> list[tuple[str, str, list[str]]]:
    """(train corpus, test corpus, the classes they share in the first's order) for every
    ordered pair of named corpora ({name: classes}) sharing at least `min_shared` classes."""
    from .labels import shared_classes

    return [(a, b, shared) for a in classes for b in classes
            if a != b and len(shared := shared_classes(classes[a], classes[b])) >= min_shared]
