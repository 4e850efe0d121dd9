"""`emosweep export emobox SWEEP --emobox DIR --out OUT`: a sweep's per-item test predictions in
EmoBox's layout, for a corpus read from EmoBox's files (`--folds given`).

EmoBox scores a submission per fold as a list of `{"key", "prediction"}` records against its
`{"key", "label"}` test records (EmoBox/EmoEval.py), with its own label names (`emo` in
<corpus>.jsonl). The export writes, for each arm's selected configuration,

    OUT/<arm>/<corpus>/fold_K/<corpus>_test_fold_K.jsonl     {"key": …, "prediction": "<emo>"} per line

so each file lines up with EmoBox's `data/<corpus>/fold_K/<corpus>_test_fold_K.jsonl`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workloads.core.errors import UserError


def emobox_keys(folder: Path, media_root: str | None) -> tuple[str, dict, dict]:
    """(corpus, study uid → EmoBox key, canonical label → EmoBox's own label name) of an EmoBox
    corpus folder, read as a study reads it (the same uids)."""
    from workloads.data.labels import canonical
    from workloads.data.manifest_files import _emobox_corpus, _json_rows, read_emobox

    manifest = read_emobox(folder, media_root)
    corpus = _emobox_corpus(Path(folder))
    names = {}
    for _, record in _json_rows(Path(folder) / f"{corpus}.jsonl", []):
        if record.get("emo") is not None and canonical(record["emo"]) is not None:
            names.setdefault(canonical(record["emo"]), str(record["emo"]))
    keys = dict(zip(corpus + "/" + manifest.items["uid"], manifest.items["key"].astype(str)))
    return corpus, keys, names


def export_emobox(predictions: pd.DataFrame, arms: pd.DataFrame, folder: Path, out: Path,
                  media_root: str | None = None, seed: int | None = None) -> list[Path]:
    """Write the files; returns their paths. `arms`: the arm table (its selected config_id per arm)."""
    corpus, keys, names = emobox_keys(folder, media_root)
    test = predictions[(predictions["split"] == "test") & predictions["uid"].isin(keys.keys())]
    if test.empty:
        raise UserError(f"{folder}: none of the sweep's test predictions are items of this EmoBox corpus ({corpus})")
    if test["fold"].isna().all():
        raise UserError("export emobox: the sweep ran on one split; EmoBox's folds need --folds given")
    seeds = sorted(test["seed"].dropna().unique())
    if seed is None and len(seeds) > 1:
        raise UserError(f"export emobox: the sweep ran {len(seeds)} seeds ({', '.join(str(int(s)) for s in seeds)}); "
                        f"choose one with --seed")
    chosen = dict(zip(arms["arm"], arms["config_id"])) if "config_id" in arms else {}
    written = []
    for (arm, config_id, fold), part in test.groupby(["arm", "config_id", "fold"]):
        if chosen and chosen.get(arm) != config_id:
            continue
        part = part[part["seed"] == (seed if seed is not None else seeds[0])]
        if part.empty:
            continue
        k = int(fold) + 1  # fold index f reads EmoBox's fold_{f+1}
        path = out / str(arm) / corpus / f"fold_{k}" / f"{corpus}_test_fold_{k}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"key": keys[uid], "prediction": names.get(pred, pred)}) + "\n"
                                for uid, pred in zip(part["uid"], part["pred"])))
        written.append(path)
    return written


def export_command(args) -> int:
    from workloads.core.paths import emosweep_home

    from .compare import find_sweep

    arms_csv = find_sweep(args.sweep, emosweep_home())
    per_item = arms_csv.with_name(arms_csv.name.replace(".arms.csv", ".predictions.parquet"))
    if not per_item.exists():
        raise UserError(f"{arms_csv.parent}: the sweep kept no per-item predictions ({per_item.name}); "
                        f"sweeps keep them since this version")
    folder = Path(args.emobox)
    if not folder.is_dir():
        raise UserError(f"--emobox: folder not found: {folder}")
    files = export_emobox(pd.read_parquet(per_item), pd.read_csv(arms_csv), folder, Path(args.out),
                          args.media_root, args.seed)
    print(f"{len(files)} fold files under {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="a sweep's per-item predictions in another tool's format")
    formats = p.add_subparsers(dest="format", required=True)
    e = formats.add_parser("emobox", help="EmoBox's per-fold {key, prediction} files")
    e.add_argument("sweep", help="the sweep's name, folder or results.arms.csv")
    e.add_argument("--emobox", required=True, metavar="DIR", help="the EmoBox corpus folder the sweep read")
    e.add_argument("--media-root", help="where EmoBox's wav paths are relative to, as the sweep was given it")
    e.add_argument("--out", required=True, help="the folder to write")
    e.add_argument("--seed", type=int, help="which seed's predictions, when the sweep ran several")
