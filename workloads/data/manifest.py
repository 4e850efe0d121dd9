"""The reader contract: a corpus becomes a Manifest, one row per usable item, plus a
problems table for everything that could not be used (never a silent drop)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ITEM_COLUMNS = ["uid", "path", "label", "split", "speaker", "text"]
PROBLEM_COLUMNS = ["path", "line", "reason"]


@dataclass
class Manifest:
    name: str
    items: pd.DataFrame  # ITEM_COLUMNS + corpus-specific columns
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))
    sources: list = field(default_factory=list)  # files the manifest was read from

    def fingerprint(self) -> str:
        """Content hash of the source files: the same bytes give the same id on any machine."""
        h = hashlib.sha256(self.name.encode())
        for path in sorted(self.sources):
            h.update(os.path.basename(path).encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:12]

    def split(self, name: str) -> pd.DataFrame:
        return self.items[self.items["split"] == name].reset_index(drop=True)

    def summary(self) -> str:
        counts = self.items.groupby(["split", "label"]).size().unstack(fill_value=0)
        text = f"{self.name}: {len(self.items)} items, {len(self.problems)} problems\n{counts}"
        if len(self.problems):
            text += "\nproblems by reason:\n" + self.problems["reason"].value_counts().to_string()
        return text


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
