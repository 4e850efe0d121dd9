"""FarsTail (Persian NLI) in its native layout: tab-separated Train/Val/Test files with a
header `premise hypothesis label ...`; labels e (entailment), c (contradiction), n (neutral).
Fields may be double-quoted with doubled inner quotes, and a quoted field may span lines.

The data set itself (MIT licence) ships inside this package as the offline default."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pandas as pd

from .manifest import ITEM_COLUMNS, PROBLEM_COLUMNS, Manifest, field_problem, read_text_records
from ..core.errors import BadInput, InputNotFound

LABELS = ["e", "c", "n"]
LABEL_NAMES = ["entailment", "contradiction", "neutral"]
SPLIT_PATTERNS = {"train": re.compile(r"^train"), "val": re.compile(r"^(val|dev)"), "test": re.compile(r"^test")}


def embedded_root() -> Path:
    return Path(str(resources.files("workloads.data") / "farstail"))


def find_split_files(root: Path) -> dict:
    """train/val/test → file. Prefers the `-word` files of the official release."""
    found = {}
    for path in sorted(root.iterdir(), key=lambda p: ("word" not in p.name.lower(), p.name)):
        if path.suffix.lower() not in (".csv", ".tsv"):
            continue
        for split, pattern in SPLIT_PATTERNS.items():
            if pattern.match(path.name.lower()) and split not in found:
                found[split] = path
    return found


def read_farstail(root: str | Path | None = None) -> Manifest:
    """Read FarsTail into a Manifest: text = premise, text_b = hypothesis, label ∈ e/c/n.
    Bad rows (wrong field count, empty text, unknown label, invalid UTF-8) go to problems
    with their file and line; every good row is kept."""
    root = Path(root) if root is not None else embedded_root()
    if not root.is_dir():
        raise InputNotFound(f"FarsTail folder not found: {root}")
    files = find_split_files(root)
    missing = [s for s in SPLIT_PATTERNS if s not in files]
    if missing:
        raise InputNotFound(
            f"{root}: no FarsTail file for split(s) {missing}; expected Train-word.csv, Val-word.csv, "
            f"Test-word.csv (tab-separated, header 'premise hypothesis label')")
    items, problems = [], []
    for split, path in files.items():
        records = read_text_records(path, delimiter="\t")
        _, header = next(records, (0, None))
        if header is None or [h.strip() for h in header[:3]] != ["premise", "hypothesis", "label"]:
            raise BadInput(f"{path}: header must start with 'premise<TAB>hypothesis<TAB>label', got {header}")
        for line, row in records:
            reason = None
            if len(row) < 3:
                reason = f"expected at least 3 tab-separated fields, got {len(row)}"
            elif field_problem(row):
                reason = field_problem(row)
            elif not row[0].strip() or not row[1].strip():
                reason = "empty premise or hypothesis"
            elif row[2].strip() not in LABELS:
                reason = f"unknown label {row[2].strip()!r} (expected one of {LABELS})"
            if reason:
                problems.append({"path": str(path), "line": line, "reason": reason})
                continue
            items.append({
                "uid": f"{split}-{len(items)}", "path": str(path), "label": row[2].strip(),
                "split": split, "speaker": "", "text": row[0].strip(), "text_b": row[1].strip(),
                "line": line,
            })
    return Manifest(
        name="farstail",
        items=pd.DataFrame(items, columns=ITEM_COLUMNS + ["text_b", "line"]),
        problems=pd.DataFrame(problems, columns=PROBLEM_COLUMNS),
        sources=[str(p) for p in files.values()],
        classes=LABELS,
    )
