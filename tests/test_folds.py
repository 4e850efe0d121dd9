"""Folds, the split gate and the per-arm statistics: pure functions, checked on fixed inputs
(the statistics against scipy's own results on fixed numbers)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweeps.results import arm_table, format_arm_table
from workloads.data.folds import (FoldError, assignments, check_splits, count_folds, fold_splits, gate, parse_folds,
                                  resolve_split_by)


def corpus(n_speakers=10, per_speaker=12, classes=("a", "b", "c"), corpus_name=None):
    items = {}
    for s in range(n_speakers):
        for i in range(per_speaker):
            uid = f"s{s:02d}-{i:02d}"
            items[uid] = {"speaker": f"spk{s:02d}", "label": classes[i % len(classes)], "split": "",
                          "content_hash": f"{s:02d}{i:02d}", "path": f"/data/{uid}.wav",
                          **({"corpus": corpus_name} if corpus_name else {})}
    return items


def test_speaker_folds_are_disjoint_cover_every_speaker_once_and_are_seeded():
    items = corpus()
    tested = []
    for k in range(4):
        splits = fold_splits(items, 4, k, "speaker", seed=7)
        parts = {p: {items[u]["speaker"] for u, s in splits.items() if s == p} for p in ("train", "val", "test")}
        assert all(parts.values()), parts  # every part has speakers
        assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
        tested += sorted(parts["test"])
        assert check_splits(items, splits, check_speakers=True) == []
    assert sorted(tested) == sorted({r["speaker"] for r in items.values()})  # each speaker tested in one fold
    # the same seed gives the same folds whatever the order the items come in (a resumed trial)
    shuffled = dict(reversed(list(items.items())))
    assert fold_splits(shuffled, 4, 2, "speaker", 7) == fold_splits(items, 4, 2, "speaker", 7)
    assert fold_splits(items, 4, 2, "speaker", 8) != fold_splits(items, 4, 2, "speaker", 7)


def test_loso_is_one_fold_per_speaker_and_refused_where_it_cannot_be():
    items = corpus(n_speakers=5)
    assert count_folds(items, "loso", "speaker") == 5
    for k in range(5):
        test = {items[u]["speaker"] for u, s in fold_splits(items, 5, k, "speaker", 1).items() if s == "test"}
        assert len(test) == 1
    two = {**corpus(n_speakers=5, corpus_name="x"), **{f"y{u}": v for u, v in corpus(6, corpus_name="y").items()}}
    with pytest.raises(FoldError, match="different numbers of speakers"):
        count_folds(two, "loso", "speaker")
    with pytest.raises(FoldError, match="too few"):
        count_folds(corpus(n_speakers=4), 4, "speaker")
    with pytest.raises(FoldError, match="at least 2"):
        parse_folds("1")
    assert parse_folds("LOSO") == "loso" and parse_folds(None) == 0 and parse_folds("3") == 3


def test_item_folds_are_stratified_and_split_by_falls_back_without_speakers():
    items = corpus(n_speakers=1, per_speaker=90)
    for row in items.values():
        row["speaker"] = ""
    assert resolve_split_by(items, None)[0] == "item"
    with pytest.raises(FoldError, match="no speaker"):
        resolve_split_by(items, "speaker")
    assert resolve_split_by(corpus(), None, speaker_folds=False)[0] == "item"
    seen = []
    for k in range(3):
        splits = fold_splits(items, 3, k, "item", 0)
        test = [u for u, s in splits.items() if s == "test"]
        seen += test
        counts = pd.Series([items[u]["label"] for u in test]).value_counts()
        assert counts.to_dict() == {"a": 10, "b": 10, "c": 10}  # class proportions kept
        assert sum(s == "val" for s in splits.values()) == 6  # a tenth of the 60 left, 2 per class
    assert sorted(seen) == sorted(items)


def test_gate_names_a_planted_speaker_leak_and_identical_audio():
    items = corpus()
    splits = fold_splits(items, 4, 0, "speaker", 3)
    test_uid = next(u for u, s in splits.items() if s == "test")
    train_uid = next(u for u, s in splits.items() if s == "train")
    items[test_uid]["content_hash"] = items[train_uid]["content_hash"]  # the same recording twice
    leaks = check_splits(items, splits, check_speakers=True)
    assert len(leaks) == 1 and "identical audio in train and test" in leaks[0]
    assert items[test_uid]["path"] in leaks[0] and items[train_uid]["path"] in leaks[0]
    # a speaker planted in the test part of a split the driver wrote
    for uid, row in items.items():
        row["split"] = splits[uid]
    row = items[train_uid]
    moved = next(u for u, r in items.items() if r["speaker"] == row["speaker"] and u != train_uid)
    items[moved]["split"] = "test"
    per, leaks = gate(items, assignments(items, 0, "speaker", 3), "speaker")
    assert per == {"split": 2} and any(f"speaker {row['speaker']} is in train and test" in x for x in leaks)
    # item folds check only identical audio
    per, leaks = gate(items, assignments(items, 0, "item", 3), "item")
    assert per == {"split": 1}


def test_arm_table_chooses_by_validation_and_pairs_over_folds():
    rows = []
    # arm x: config c0 has the better validation mean but the worse test: it must be chosen anyway
    for fold, (v0, t0, v1, t1, vf, tf) in enumerate([(0.8, 0.60, 0.7, 0.90, 0.5, 0.50), (0.8, 0.62, 0.7, 0.92, 0.5, 0.52),
                                                      (0.8, 0.64, 0.7, 0.94, 0.5, 0.49)]):
        for arm, cid, val, test in (("x", "x/c0", v0, t0), ("x", "x/c1", v1, t1), ("floor", "floor/c0", vf, tf)):
            rows.append({"arm": arm, "config_id": cid, "fold": fold, "seed": 42, "trial": f"{cid}-{fold}",
                         "best_val_acc": val, "test_acc": test, "test_uar": test, "test_macro_f1": test - 0.1,
                         "status": "OK", "model": "m", "random_init": False})
    trials = pd.DataFrame(rows)
    table = arm_table(trials, {"x": {}, "floor": {}}, reference="floor").set_index("arm")
    assert table.loc["x", "test_acc_mean"] == pytest.approx(0.62)  # c0's test, chosen on validation
    assert table.loc["x", "n_runs"] == 3 and table.loc["x", "n_configs"] == 2
    assert "best mean best_val_acc of 2" in table.loc["x", "selected_by"]
    assert table.loc["x", "test_acc_diff"] == pytest.approx(np.mean([0.10, 0.10, 0.15]))
    # the corrected resampled t-test over the 3 folds (n_test/n_train unreported: 1/(K-1))
    d = np.subtract([0.60, 0.62, 0.64], [0.50, 0.52, 0.49])
    t = d.mean() / math.sqrt(d.var(ddof=1) * (1 / 3 + 1 / 2))
    assert table.loc["x", "p_value"] == pytest.approx(2 * stats.t.sf(t, 2))
    assert table.loc["x", "p_holm"] == table.loc["x", "p_value"]  # one arm compared: Holm changes nothing
    assert table.loc["floor", "verdict"] == "reference"
    text = format_arm_table(table.reset_index())
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "0.620 ±" in text


@pytest.mark.parametrize("study_module, argv, message", [
    ("sweeps.bert_freezing", ["--folds", "4"], "FarsTail's official train/val/test files"),
    ("sweeps.fer_architectures", ["--folds", "loso"], "FER2013's official"),
    ("sweeps.meld_fusion", ["--split-by", "item"], "MELD's official"),
    ("sweeps.speaker_id", ["--folds", "3", "--split-by", "speaker"], "labels are the speakers"),
    ("sweeps.hubert_pooling", ["--split-by", "item"], "give --folds K too"),
    ("sweeps.bert_head_pruning", ["--allow-leak"], "the split gate does not run"),
    ("sweeps.hubert_pooling", ["--folds", "one"], "2 or more"),
    ("sweeps.hubert_pooling", ["--reference", "nope"], "not an arm"),
])
def test_fold_flags_a_study_cannot_use_are_refused(study_module, argv, message, tmp_path, capsys):
    """Before Ray or MLflow start: one line, naming why."""
    import importlib

    from sweeps.runner import main

    study = importlib.import_module(study_module).STUDY
    with pytest.raises(SystemExit) as refused:
        main(study, [*argv, "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_identical_audio_never_straddles_a_split_and_validation_of_given_folds_is_speaker_disjoint():
    """The planted pair of RAVDESS Actor_07 (two takes that decode to the same audio): item
    folds and the validation carved from given folds keep the pair together, so the gate
    passes; a given fold that itself puts the pair across train and test is refused by name,
    and --drop-duplicates keeps one of them."""
    from workloads.data.study_items import drop_duplicates

    items = corpus(n_speakers=8, per_speaker=12)
    a, b = "s03-00", "s03-03"  # same speaker, same class (i % 3 == 0)
    items[b]["content_hash"] = items[a]["content_hash"]
    for k in range(1, 5):  # EmoBox-like given folds: two speakers' items test each fold
        for uid, row in items.items():
            row[f"fold_{k}"] = "test" if int(row["speaker"][3:]) // 2 == k - 1 else "train"
    for split_by, n in (("item", 4), ("given", 4), ("speaker", 4)):
        for fold in range(n):
            splits = fold_splits(items, n, fold, split_by, seed=3)
            assert splits[a] == splits[b], (split_by, fold)
        per, leaks = gate(items, assignments(items, n, split_by, 3), split_by)
        assert not leaks, leaks
    # by item without speakers too: validation of a given fold deals the pair as one
    anonymous = {u: {**row, "speaker": ""} for u, row in items.items()}
    for fold in range(4):
        splits = fold_splits(anonymous, 4, fold, "given", seed=5)
        assert splits[a] == splits[b]
    # the corpus's own fold puts the pair across train and test: refused, naming both files
    items[b]["fold_1"] = "test" if items[a]["fold_1"] == "train" else "train"
    per, leaks = gate(items, assignments(items, 4, "given", 3), "given")
    assert per["fold 0"] == 1 and items[a]["path"] in leaks[0] and items[b]["path"] in leaks[0]
    config, dropped = drop_duplicates({"items": items})
    assert dropped == [(a, [b])] and b not in config["items"] and a in config["items"]
    assert not gate(config["items"], assignments(config["items"], 4, "given", 3), "given")[1]


def test_the_gate_checks_only_the_parts_the_arms_use():
    """Two corpora: B has two speakers, so its own split is by item and shares speakers across
    its parts. A within-B arm would leak; a cross arm A → B tests on all of B and trains on
    none of it, so its use is clean."""
    from workloads.data.folds import arm_parts

    items = {**corpus(6, 6, corpus_name="a"), **{f"b/{u}": {**row, "corpus": "b", "speaker": f"b{int(u[1:3]) % 2}"}
                                               for u, row in corpus(4, 6).items()}}
    rng = np.random.default_rng(0)
    for uid, row in items.items():
        if row["corpus"] == "a":
            row["split"] = {0: "test", 1: "val"}.get(int(row["speaker"][3:]), "train")
        else:
            row["split"] = ["train", "val", "test"][int(rng.integers(3))]
    checks = assignments(items, 0, "speaker", 0)
    assert gate(items, checks, "speaker", {("b", "b")})[1]  # B's item split leaks its speakers
    assert not gate(items, checks, "speaker", {("a", "b"), ("a", "a")})[1]
    parts = arm_parts(items, checks[0][1], "a", "b")
    assert {u for u, s in parts.items() if s == "test"} == {u for u in items if items[u]["corpus"] == "b"}
    assert all(items[u]["corpus"] == "a" for u, s in parts.items() if s != "test")
    # where B names its own test set, that is what a cross arm tests on
    for row in items.values():
        row["split_given"] = row["corpus"] == "b"
    parts = arm_parts(items, checks[0][1], "a", "b")
    assert {u for u, s in parts.items() if s == "test" and items[u]["corpus"] == "b"} == \
        {u for u in items if items[u]["corpus"] == "b" and items[u]["split"] == "test"}


def test_drop_duplicates_rewrites_the_items_file_the_trials_read(tmp_path):
    from workloads.data.study_items import drop_duplicates, study_items, write_items

    table = pd.DataFrame({"uid": ["a", "b", "c"], "label": ["x", "x", "y"], "speaker": ["s", "s", "t"],
                          "content_hash": ["h1", "h1", "h2"], "split": ["train", "test", "val"]})
    config = write_items({"cache_fs": str(tmp_path)}, table, "corpus")
    dropped_config, dropped = drop_duplicates(config)
    assert dropped == [("a", ["b"])] and dropped_config["items_file"] != config["items_file"]
    assert sorted(study_items(dropped_config)) == ["a", "c"] and sorted(study_items(config)) == ["a", "b", "c"]
