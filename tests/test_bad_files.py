"""One bad file never stops a `data prepare`: a symlink loop, a dangling link, a link out of
the corpus folder, a FIFO named .wav (never opened: it would hang the run), a file name that is
not UTF-8 and an oversized CSV field each become one problems-table row with its reason, and
every good item is prepared. The real command, in a subprocess with a time limit (a FIFO that
is opened blocks for ever)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _prepare(corpus: str, root: Path, home: Path) -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "data", "prepare", corpus, "--root", str(root),
                          "--features", "mfcc_mean", "--no-progress"], capture_output=True, text=True, timeout=300,
                         cwd=home, env={**os.environ, "EMOSWEEP_HOME": str(home), "PYTHONPATH": str(ROOT)})
    errors = pd.concat([pd.read_csv(p) for p in (home / "cache").glob(f"{corpus}-*/errors.csv")])
    return out, errors


def test_bad_entries_are_reported_and_every_good_item_kept(synth, tmp_path):
    root = tmp_path / "ravdess"
    shutil.copytree(synth("ravdess", 24, seed=5, faults=False), root)
    good = sorted(root.rglob("*.wav"))
    actor = good[0].parent
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(good[0], outside)
    planted = {"loop.wav": "symlink loop", "dangling.wav": "dangling symlink",
               "outside.wav": "symlink leads outside the corpus folder", "fifo.wav": "not a regular file (FIFO)"}
    os.symlink("loop.wav", actor / "loop.wav")  # a link to itself
    os.symlink(tmp_path / "gone.wav", actor / "dangling.wav")
    os.symlink(outside, actor / "outside.wav")
    os.mkfifo(actor / "fifo.wav")
    with open(os.fsencode(str(actor)) + b"/name\xff.wav", "wb") as f:
        f.write(good[0].read_bytes())
    names = {p.name for p in good}  # a link inside the folder is followed: an item like any other
    free = next(f"03-01-0{e}-0{i}-0{s}-0{r}-01.wav" for e in range(1, 9) for i in (1, 2) for s in (1, 2) for r in (1, 2)
                if f"03-01-0{e}-0{i}-0{s}-0{r}-01.wav" not in names)
    os.symlink(good[1], actor / free)

    out, errors = _prepare("ravdess", root, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(good) + 1} usable" in out.stdout  # every good clip, and the link inside
    reasons = {Path(p).name: r for p, r in zip(errors["path"], errors["reason"])}
    for name, reason in planted.items():
        assert reason in reasons.get(name, ""), (name, reasons)
    assert reasons["name\\xff.wav"] == "file name is not valid UTF-8"


def test_an_oversized_csv_field_is_one_row_not_a_crash(synth, tmp_path):
    from workloads.data.corpora import read_meld

    root = tmp_path / "meld"
    shutil.copytree(synth("meld", 24, seed=5, faults=False), root)
    train = next(root.rglob("train_sent_emo.csv"))
    rows = list(csv.reader(train.open(newline="", encoding="utf-8")))
    rows[1][1] = "word " * 40_000  # a 195 KiB utterance: over the csv module's 128 KiB field limit
    with train.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    manifest = read_meld(root)
    hits = manifest.problems[manifest.problems["reason"].str.contains("a field of 195 KiB")]
    assert len(hits) == 1 and int(hits["line"].iloc[0]) == 2
    assert len(manifest.items) == 23  # the other rows of all three files
