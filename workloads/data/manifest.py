"""The reader contract: a corpus becomes a Manifest, one row per usable item, plus a
problems table for everything that could not be used (never a silent drop)."""
from __future__ import annotations

import csv
import hashlib
import io
import re
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..core.storage import file_sample

ITEM_COLUMNS = ["uid", "path", "label", "split", "speaker", "text"]
PROBLEM_COLUMNS = ["path", "line", "reason"]


@dataclass
class Manifest:
    name: str
    items: pd.DataFrame  # ITEM_COLUMNS + corpus-specific columns
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))
    sources: list = field(default_factory=list)  # text files the manifest was read from
    classes: list = field(default_factory=list)  # label order (class index = position)
    options: dict = field(default_factory=dict)  # how it was read, when not the default (follow_symlinks)

    def fingerprint(self) -> str:
        """Content hash: the same corpus gives the same id on any machine, wherever it lies.
        Text sources (CSV/TSV) are hashed whole. Media files are hashed by name, size and
        their first and last 4 KiB (reading every byte of a 10 GB corpus would cost more
        than decoding it). Splits are not part of it: features do not depend on them."""
        h = hashlib.sha256(self.name.encode())
        for path in sorted(self.sources):
            h.update(os.path.basename(path).encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        media = self.items[self.items["path"].astype(bool) & ~self.items["path"].isin(self.sources)]
        for uid, path in sorted(zip(media["uid"], media["path"])):
            h.update(f"{uid}\0{os.path.basename(path)}\0".encode())
            h.update(file_sample(path))
        return h.hexdigest()[:12]

    def split(self, name: str) -> pd.DataFrame:
        return self.items[self.items["split"] == name].reset_index(drop=True)

    def summary(self) -> str:
        counts = self.items.groupby(["split", "label"]).size().unstack(fill_value=0)
        text = f"{self.name}: {len(self.items)} items, {len(self.problems)} problems\n{counts}"
        if self.options:
            text += "\nread with " + ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        if len(self.problems):
            text += "\nproblems by reason:\n" + self.problems["reason"].value_counts().to_string()
        return text


def read_text_records(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) for every record of a delimited UTF-8 text file, quoted
    fields spanning lines included. Undecodable bytes are kept as surrogates (see
    `invalid_utf8`) so that one bad row is reported on its own instead of failing the file."""
    text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"')
    start = 0
    limit = csv.field_size_limit(max(len(text), FIELD_LIMIT) + 1)  # an oversized field is a row's problem, not the file's
    try:
        for row in reader:
            line, start = start + 1, reader.line_num
            yield line, row
    finally:
        csv.field_size_limit(limit)


FIELD_LIMIT = 128 * 1024  # characters a field may hold (the csv module's own default)


def invalid_utf8(fields) -> bool:
    return any("\udc80" <= ch <= "\udcff" for field in fields for ch in field)


def field_problem(fields) -> str | None:
    """Why a record's fields cannot be used as text, or None: bytes that are not UTF-8, or a
    field longer than FIELD_LIMIT."""
    if invalid_utf8(fields):
        return "not valid UTF-8"
    longest = max((len(f) for f in fields), default=0)
    if longest > FIELD_LIMIT:
        return f"a field of {longest // 1024} KiB (at most {FIELD_LIMIT // 1024} KiB)"
    return None


SPLITS = ("train", "val", "test")


def fold_columns(names) -> list[str]:
    """The columns that carry a corpus's own folds (fold_1 … fold_K: train or test; EmoBox's),
    in fold order."""
    return sorted((n for n in names if re.fullmatch(r"fold_\d+", str(n))), key=lambda n: int(str(n)[5:]))


def split_items(items: pd.DataFrame, seed: int, name: str, fractions=(0.8, 0.1, 0.1),
                by_speaker: bool = True) -> pd.DataFrame:
    """assign_splits by speaker where asked and the corpus allows it (every item names a
    speaker, at least three of them), else stratified by item, saying so in one line."""
    items = items.assign(split_given=items["split"].fillna("").astype(str) != "")  # the corpus's own split
    speakers = items["speaker"].fillna("").astype(str)
    if by_speaker and ((speakers == "").any() or speakers.nunique() < 3):
        why = "some items name no speaker" if (speakers == "").any() else f"it has {speakers.nunique()} speakers"
        print(f"[emosweep] {name}: {why}, so its split is stratified by item, not by speaker", flush=True)
        by_speaker = False
    return assign_splits(items, seed, fractions=fractions, by_speaker=by_speaker)


def assign_splits(items: pd.DataFrame, seed: int, fractions=(0.8, 0.1, 0.1),
                  by_speaker: bool = False, label: str = "label") -> pd.DataFrame:
    """train/val/test for every row whose split is empty, from a seed.
    Default: stratified per class (class proportions preserved, cut points rounded).
    by_speaker: speaker-independent (no speaker in two splits) with sklearn's
    StratifiedGroupKFold, keeping class proportions as close as the speakers allow."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    items = items.copy()
    todo = items.index[items["split"].fillna("") == ""]
    if len(todo) == 0:
        return items
    rng = np.random.default_rng(seed)
    if not by_speaker:
        for cls in sorted(items.loc[todo, label].unique()):
            idx = rng.permutation(todo[items.loc[todo, label] == cls])
            cuts = np.round(np.cumsum(fractions) * len(idx)).astype(int)
            for name, part in zip(SPLITS, np.split(idx, cuts[:2])):
                items.loc[part, "split"] = name
        return items
    from sklearn.model_selection import StratifiedGroupKFold

    groups = items.loc[todo, "speaker"].fillna("").astype(str)
    if (groups == "").any():
        raise ValueError("speaker-independent split needs a speaker for every item; some are empty")
    n_speakers = groups.nunique()
    folds = min(10, n_speakers)
    if n_speakers < 3:
        raise ValueError(f"speaker-independent split needs at least 3 speakers, found {n_speakers}")
    per_split = np.maximum(np.round(np.array(fractions) * folds).astype(int), [1 if f > 0 else 0 for f in fractions])
    per_split[0] = folds - per_split[1:].sum()
    if per_split[0] < 1:
        raise ValueError(f"{n_speakers} speakers cannot make a speaker-independent {fractions} split")
    fold_split = np.repeat(["test", "val", "train"], per_split[::-1])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = items.loc[todo, label].astype(str).to_numpy()
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(todo)), labels, groups.to_numpy())):
        items.loc[todo[held], "split"] = fold_split[fold]
    return items


def stratified_subset(df: pd.DataFrame, n: int | None, seed: int, label: str = "label") -> pd.DataFrame:
    """At most n rows, class proportions preserved (largest-remainder rounding), from a seed."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    counts = df[label].value_counts().sort_index()
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    for cls in (exact - take).sort_values(ascending=False).index[: n - int(take.sum())]:
        take[cls] += 1
    parts = [df[df[label] == cls].sample(n=int(k), random_state=seed) for cls, k in take.items() if k > 0]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def split_subset(items: pd.DataFrame, split: str, config: dict) -> pd.DataFrame:
    """The rows of one split, cut to the run's `<split>_size` (a CPU subset, a smoke run) by a
    stratified draw from the run's seed; all of them when the size is None."""
    part = items[items["split"] == split].reset_index(drop=True)
    return stratified_subset(part, config.get(f"{split}_size"), seed=config["seed"])
