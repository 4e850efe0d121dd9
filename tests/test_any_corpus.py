"""Any corpus in one flag (issue 20): the readers of TESS, CREMA-D, SAVEE and IEMOCAP on their
look-alikes, folder-per-class, a hand-written manifest (relative paths, files found by name or
stem, unmapped labels, segments), EmoBox's JSONL with its folds, and the layout told from a
path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workloads.data.corpora import read_corpus
from workloads.data.layouts import detect_layout, named_corpora, read_any
from workloads.data.synth import load_manifest

FAULT_ITEMS = 5  # the five planted media faults are items the readers keep (the decoder reports them)


@pytest.mark.parametrize("corpus, classes, speakers", [
    ("tess", {"anger", "disgust", "fear", "happiness", "neutral", "surprise", "sadness"}, 2),
    ("cremad", {"anger", "disgust", "fear", "happiness", "neutral", "sadness"}, 4),
    ("savee", {"anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}, 4),
])
def test_file_named_corpora(synth, corpus, classes, speakers):
    root = synth(corpus, 56, seed=1)
    info = load_manifest(root)
    manifest = read_corpus(corpus, root)
    assert set(info["good"]) <= set(manifest.items["uid"]) and len(manifest.items) == len(info["good"]) + FAULT_ITEMS
    assert set(manifest.items["label"]) == classes and manifest.items["speaker"].nunique() == speakers
    assert len(manifest.problems) == 1 and "unknown label" in manifest.problems["reason"].iloc[0]
    assert detect_layout(root) == corpus


def test_tess_takes_the_emotion_from_the_name_whatever_the_folder(synth):
    """TESS copies spell their folders differently (`OAF_Pleasant_surprise`,
    `YAF_pleasant_surprised`); the file name decides. An AIFF named .wav decodes."""
    from workloads.data.audio import decode_audio

    root = synth("tess", 56, seed=1)
    items = read_corpus("tess", root).items
    surprise = items[items["label"] == "surprise"]
    assert {Path(p).parent.name.lower() for p in surprise["path"]} <= {"oaf_pleasant_surprise", "yaf_pleasant_surprised"}
    aiff = next(p for p in items["path"] if Path(p).read_bytes()[:4] == b"FORM")
    assert len(decode_audio(aiff)) > 8000


def test_tess_keeps_the_real_sets_misspelled_speaker_by_its_folder(synth, tmp_path):
    """The real TESS ships OAF_neutral/OA_bite_neutral.wav: kept, as OAF (it was dropped: 2,799
    of 2,800); a name that fits no speaker, in no speaker's folder, is still reported."""
    source = next(p for p in Path(synth("tess", 56, seed=1)).rglob("OAF_*.wav"))
    (tmp_path / "OAF_neutral").mkdir()
    (tmp_path / "misc").mkdir()
    shutil.copy(source, tmp_path / "OAF_neutral" / "OA_bite_neutral.wav")
    shutil.copy(source, tmp_path / "OAF_neutral" / "OAF_back_neutral.wav")
    shutil.copy(source, tmp_path / "misc" / "XX_bite_neutral.wav")
    manifest = read_corpus("tess", tmp_path)
    kept = manifest.items.set_index(manifest.items["path"].map(lambda p: Path(p).name))
    assert kept.loc["OA_bite_neutral.wav", "speaker"] == "OAF" and kept.loc["OA_bite_neutral.wav", "label"] == "neutral"
    assert len(kept) == 2 and manifest.problems["path"].str.endswith("XX_bite_neutral.wav").tolist() == [True]


def test_savee_reads_both_layouts(synth):
    items = read_corpus("savee", synth("savee", 56, seed=1)).items
    assert {Path(p).parent.name for p in items["path"]} >= {"ALL", "DC"}
    flat = items[items["path"].str.contains("/ALL/")]
    assert set(flat["speaker"]) <= {"DC", "JE", "JK", "KL"} and len(flat) > 0


def test_iemocap_labels_speakers_and_the_four_class_map(synth):
    root = synth("iemocap", 60, seed=2)
    info = load_manifest(root)
    full = read_corpus("iemocap", root)
    assert sorted(full.items["uid"]) == sorted(info["good"])
    assert all(s[:5] == u[:5] and s[-1] == u.rsplit("_", 1)[1][0] for s, u in zip(full.items["speaker"], full.items["uid"]))
    reasons = full.problems["reason"]
    assert (reasons == "no majority label (xxx)").any() and reasons.str.startswith("media not found").sum() == 1
    four = read_corpus("iemocap4", root)
    assert set(four.items["label"]) <= {"anger", "happiness", "sadness", "neutral"}
    excited = set(full.items.loc[full.items["label"] == "excitement", "uid"])
    assert excited and excited <= set(four.items.loc[four.items["label"] == "happiness", "uid"])  # exc → happy
    assert four.problems["reason"].str.contains("outside the 4-class map").any()
    assert detect_layout(root) == "iemocap"


def test_folder_per_class(tmp_path, synth):
    src = read_corpus("savee", synth("savee", 56, seed=1)).items
    for i, (label, path) in enumerate(zip(src["label"].head(12), src["path"].head(12))):
        folder = tmp_path / "corpus" / label.capitalize() / "take1"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"clip{i:02d}.wav")
    assert detect_layout(tmp_path / "corpus") == "folders"
    m = read_any(tmp_path / "corpus")
    assert set(m.items["label"]) == set(src["label"].head(12)) and len(m.items) == 12


# ----------------------------------------------------------------------------- manifests

def _clips(synth, n=8):
    items = read_corpus("ravdess", synth("ravdess", 24, seed=5, faults=False)).items
    return items.head(n)


def test_a_manifest_with_relative_paths_lookups_unmapped_labels_and_segments(synth, tmp_path):
    from workloads.data.pipeline import load_features, prepare

    clips = _clips(synth)
    audio = tmp_path / "audio"
    (audio / "deep" / "er").mkdir(parents=True)
    for i, path in enumerate(clips["path"]):
        shutil.copy(path, (audio / "deep" / "er" if i == 2 else audio) / Path(path).name)
    renamed = audio / Path(clips["path"].iloc[3]).name.replace(".wav", ".flac")
    (audio / Path(clips["path"].iloc[3]).name).rename(renamed)  # re-encoded to another container (name only here)
    names = [Path(p).name for p in clips["path"]]
    rows = [
        "path,label,speaker,split,start,end",
        f"audio/{names[0]},Angry,a1,train,,",
        f"audio/{names[1]},HAPPY,a1,dev,,",
        f"somewhere/else/{names[2]},sad,a2,test,,",       # not there: found by name under the folder
        f"audio/{names[3]},neutral,a2,,,",                 # only the extension differs
        f"audio/{names[4]},bliss,a3,train,,",              # unmapped label
        "audio/missing.wav,anger,a3,train,,",              # no such file anywhere
        f"audio/{names[5]},fear,a3,holdout,,",             # unknown split
        f"audio/{names[6]},calm,a4,train,0.5,1.5",         # a segment
        f"audio/{names[6]},calm,a4,train,1.5,2.0",         # another segment of the same file
        f"audio/{names[7]},surprised,a4,train,2,1",        # end before start
    ]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    m = read_any(tmp_path / "mine.csv")
    reasons = dict(zip(m.problems["line"], m.problems["reason"]))
    assert "unmapped label 'bliss'" in reasons[6] and "media not found: audio/missing.wav" in reasons[7]
    assert "unknown split 'holdout'" in reasons[8] and "end after start" in reasons[11]
    assert len(m.items) == 6 and len(m.problems) == 4
    by_line = m.items.set_index("manifest_line")
    assert by_line.loc[2, "label"] == "anger" and by_line.loc[3, "split"] == "val"
    assert by_line.loc[4, "path"].endswith(f"deep/er/{names[2]}") and by_line.loc[5, "path"] == str(renamed)
    assert list(m.items["uid"].iloc[-2:]) == [f"audio/{names[6]}#0.5-1.5", f"audio/{names[6]}#1.5-2"]
    assert m.name == "mine"

    old = __import__("os").environ.get("EMOSWEEP_LOCAL")
    __import__("os").environ["EMOSWEEP_LOCAL"] = "1"
    try:
        result = prepare(m, ["waveform"], cache_dir=str(tmp_path / "cache"), progress=False)
    finally:
        if old is None:
            __import__("os").environ.pop("EMOSWEEP_LOCAL")
    items, arrays = load_features(result, "waveform")
    assert sorted(u for u in items["uid"] if "#" in u) == [f"audio/{names[6]}#0.5-1.5", f"audio/{names[6]}#1.5-2"]
    from workloads.data.audio import decode_audio

    whole = decode_audio(str(audio / names[6]))
    part = decode_audio(str(audio / names[6]), segment=(0.5, 1.5))
    np.testing.assert_array_equal(part, whole[8000:24000])  # exactly the segment's samples


def test_tsv_jsonl_and_json_manifests_read_the_same_items(synth, tmp_path):
    clips = _clips(synth, 4)
    records = [{"path": p, "label": lab, "speaker": s} for p, lab, s in zip(clips["path"], clips["label"],
                                                                            clips["speaker"])]
    pd.DataFrame(records).to_csv(tmp_path / "m.tsv", sep="\t", index=False)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    (tmp_path / "m.json").write_text(json.dumps({"items": records}))
    read = {s: read_any(tmp_path / f"m.{s}") for s in ("tsv", "jsonl", "json")}
    uids = {s: sorted(m.items["uid"]) for s, m in read.items()}
    assert uids["tsv"] == uids["jsonl"] == uids["json"] and len(uids["tsv"]) == 4
    assert read["jsonl"].problems["reason"].str.startswith("not valid JSON").sum() == 1


def test_a_manifest_reads_a_corpus_exactly_as_its_reader_does(synth, tmp_path):
    root = synth("ravdess", 24, seed=5, faults=False)
    native = read_corpus("ravdess", root)
    native.items.assign(path=[str(Path(p).relative_to(root)) for p in native.items["path"]])[
        ["path", "label", "speaker"]].to_csv(root.parent / "ravdess-manifest.csv", index=False)
    via = read_any(root.parent / "ravdess-manifest.csv", media_root=root)
    from workloads.data.labels import canonical

    a = native.items.assign(label=native.items["label"].map(canonical)).set_index("uid")[["path", "label", "speaker"]]
    b = via.items.set_index("uid")[["path", "label", "speaker"]]
    pd.testing.assert_frame_equal(a.sort_index(), b.sort_index())


# ----------------------------------------------------------------------------- EmoBox

def test_emobox_jsonl_with_its_folds(synth, tmp_path):
    clips = _clips(synth, 8)
    media = synth("ravdess", 24, seed=5, faults=False)
    box = tmp_path / "emobox" / "ravdess"
    records = [{"key": f"k{i}", "dataset": "ravdess", "wav": str(Path(p).relative_to(media)), "type": "raw",
                "sample_rate": 16000, "length": 3.0, "task": "category",
                "emo": {"angry": "Angry", "happy": "Happy", "surprised": "Surprised"}.get(lab, lab.capitalize()),
                "channel": 1}
               for i, (p, lab) in enumerate(zip(clips["path"], clips["label"]))]
    (box / "fold_1").mkdir(parents=True)
    (box / "fold_2").mkdir()
    (box / "ravdess.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for k, test in ((1, records[:4]), (2, records[4:])):
        train = [r for r in records if r not in test]
        (box / f"fold_{k}" / f"ravdess_test_fold_{k}.jsonl").write_text("\n".join(json.dumps(r) for r in test))
        (box / f"fold_{k}" / f"ravdess_train_fold_{k}.jsonl").write_text("\n".join(json.dumps(r) for r in train))
    assert detect_layout(box) == "emobox"
    m = read_any(box, media_root=media)
    assert len(m.items) == 8 and m.options["given_folds"] == 2
    assert list(m.items["fold_1"]) == ["test"] * 4 + ["train"] * 4
    assert list(m.items["fold_2"]) == ["train"] * 4 + ["test"] * 4
    from workloads.data.labels import canonical

    assert list(m.items["label"]) == [canonical(lab) for lab in clips["label"]]


def test_the_emobox_export_round_trips_through_emoboxs_own_keys(synth, tmp_path):
    """Per-item predictions of a `--folds given` sweep, exported per fold as EmoBox's
    {key, prediction} records: each file's keys are exactly its test_fold_K file's, the
    predictions use EmoBox's own label names, and scoring them as EmoEval does (prediction
    against the label of the same key) gives the accuracy of the predictions exported."""
    from sweeps.export import export_emobox
    from workloads.data.layouts import read_any
    from workloads.data.labels import canonical

    clips = _clips(synth, 8)
    media = synth("ravdess", 24, seed=5, faults=False)
    box = tmp_path / "emobox" / "ravdess"
    records = [{"key": f"Ses{i:02d}_k", "dataset": "ravdess", "wav": str(Path(p).relative_to(media)),
                "emo": {"fearful": "Fearful", "surprised": "Surprised"}.get(lab, lab.capitalize()), "channel": 1}
               for i, (p, lab) in enumerate(zip(clips["path"], clips["label"]))]
    (box / "fold_1").mkdir(parents=True)
    (box / "fold_2").mkdir()
    (box / "ravdess.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    for k, test in ((1, records[:4]), (2, records[4:])):
        (box / f"fold_{k}" / f"ravdess_test_fold_{k}.jsonl").write_text("\n".join(json.dumps(r) for r in test))
        (box / f"fold_{k}" / f"ravdess_train_fold_{k}.jsonl").write_text(
            "\n".join(json.dumps(r) for r in records if r not in test))
    items = read_any(box, media_root=media).items  # as a study reads it: uid corpus/<path>, label canonical
    rng = np.random.default_rng(0)
    classes = sorted(items["label"].unique())
    rows = []
    for k in (1, 2):
        for _, item in items[items[f"fold_{k}"] == "test"].iterrows():
            pred = item["label"] if rng.random() < 0.5 else classes[int(rng.integers(len(classes)))]
            rows.append({"trial": f"t{k}", "arm": "probe", "config_id": "probe/c0", "fold": k - 1, "seed": 42,
                         "split": "test", "uid": f"ravdess/{item['uid']}", "label": item["label"], "pred": pred})
    predictions = pd.DataFrame(rows)
    files = export_emobox(predictions, pd.DataFrame({"arm": ["probe"], "config_id": ["probe/c0"]}), box, tmp_path / "out",
                          str(media))
    assert sorted(f.relative_to(tmp_path / "out").as_posix() for f in files) == [
        "probe/ravdess/fold_1/ravdess_test_fold_1.jsonl", "probe/ravdess/fold_2/ravdess_test_fold_2.jsonl"]
    labels = {r["key"]: r["emo"] for r in records}
    right = 0
    for k, path in zip((1, 2), sorted(files)):
        exported = [json.loads(line) for line in path.read_text().splitlines()]
        official = [json.loads(line) for line in (box / f"fold_{k}" / f"ravdess_test_fold_{k}.jsonl").read_text().splitlines()]
        assert sorted(r["key"] for r in exported) == sorted(r["key"] for r in official)
        assert {r["prediction"] for r in exported} <= set(labels.values())  # EmoBox's names, not ours
        right += sum(r["prediction"] == labels[r["key"]] for r in exported)
    assert right / len(predictions) == pytest.approx((predictions["pred"] == predictions["label"]).mean())
    assert all(canonical(labels[r]) for r in labels)


def test_corpus_flags_name_the_corpora(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y.csv"
    x.mkdir()
    y.write_text("path,label\n")
    assert named_corpora([f"a={x}", f"b={y}"]) == {"a": str(x), "b": str(y)}
    for bad, why in ((["a"], "expected NAME=PATH"), ([f"a={x}", f"a={y}"], "named twice"), ([f"1a={x}"], "NAME is"),
                     ([f"a={tmp_path / 'gone'}"], "no such file or folder")):
        with pytest.raises(Exception, match=why):
            named_corpora(bad)


# ----------------------------------------------------------------------------- the studies' flags

STUDIES = ["bert_freezing", "bert_head_pruning", "fer_architectures", "hubert_pooling", "meld_fusion",
           "blstm_attention", "audiomnist_mlp", "gtzan_cnn", "speaker_id"]
TAKE_CORPORA = {"hubert_pooling", "blstm_attention", "audiomnist_mlp", "gtzan_cnn", "speaker_id"}


@pytest.mark.parametrize("study_name", STUDIES)
def test_every_study_uses_or_refuses_each_corpus_flag(study_name, synth, tmp_path, capsys):
    """--corpus and --media-root are used by the speech studies and refused, in one line, by
    the others; --data-dir is used by every study (none ignores it)."""
    import importlib

    from sweeps.runner import main
    from sweeps.study import build_parser, check_flags, with_corpus_arms

    study = importlib.import_module(f"sweeps.{study_name}").STUDY
    root = str(synth("ravdess", 24, seed=5, faults=False))
    for argv in (["--corpus", f"mine={root}"], ["--media-root", root]):
        opts = build_parser(study).parse_args([*argv, "--storage-path", str(tmp_path)])
        if study_name in TAKE_CORPORA:
            check_flags(with_corpus_arms(study, opts), opts)  # accepted: prepare takes it
        else:
            with pytest.raises(SystemExit) as stopped:
                main(study, [*argv, "--storage-path", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"])
            err = capsys.readouterr().err
            assert stopped.value.code == 2 and f"{argv[0]}: {study_name} does not use it" in err, err
    assert study.no_data_dir == ""  # --data-dir is never refused as such


def test_blstm_arms_follow_the_corpora_named(synth):
    from sweeps.blstm_attention import STUDY
    from sweeps.study import build_parser, with_corpus_arms

    ravdess, cremad = synth("ravdess", 24, seed=5, faults=False), synth("cremad", 56, seed=1)
    opts = build_parser(STUDY).parse_args(["--corpus", f"ravdess={ravdess}", "--corpus", f"mine={cremad}"])
    arms = with_corpus_arms(STUDY, opts).arms
    assert sorted(arms) == sorted(["ravdess", "mine", "ravdess_to_mine", "mine_to_ravdess", "ravdess_floor",
                                   "mine_floor"])
    assert arms["mine"]["classes"].split(",") == ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]
    assert set(arms["ravdess_to_mine"]["classes"].split(",")) == {"anger", "disgust", "fear", "happiness", "neutral",
                                                                  "sadness"}
    assert arms["ravdess_to_mine"]["classes"].split(",")[0] == "neutral"  # in the training corpus's order
    one = with_corpus_arms(STUDY, build_parser(STUDY).parse_args(["--data-dir", str(cremad)])).arms
    assert sorted(one) == ["cremad", "cremad_floor"]  # --data-dir: one corpus, named by its layout
    assert with_corpus_arms(STUDY, build_parser(STUDY).parse_args([])).arms is STUDY.arms


def test_given_folds_are_the_corpus_own():
    """--folds given: fold k's test part is the corpus's test_fold_k, a seeded tenth of its
    train part's speakers validates (speaker-disjoint, as EmoBox's folds are; by item where
    speakers are unknown), items in neither sit the fold out."""
    from workloads.data.folds import FoldError, count_folds, fold_splits, parse_folds, resolve_split_by

    items = {f"u{i}": {"label": "anger" if i % 2 else "sadness", "speaker": f"s{i % 3}",
                       "fold_1": "test" if i < 10 else "train", "fold_2": "train" if i < 10 else "test"}
             for i in range(40)}
    items["u39"]["fold_2"] = ""  # in no part of fold 2
    assert parse_folds("given") == "given" and resolve_split_by(items, None, True, "given")[0] == "given"
    assert count_folds(items, "given", "given") == 2
    first = fold_splits(items, 2, 0, "given", seed=7)
    assert {u for u, s in first.items() if s == "test"} == {f"u{i}" for i in range(10)}
    val_speakers = {items[u]["speaker"] for u, s in first.items() if s == "val"}
    train_speakers = {items[u]["speaker"] for u, s in first.items() if s == "train"}
    assert len(val_speakers) == 1 and not val_speakers & train_speakers  # one of the 3 speakers
    anonymous = {u: {**row, "speaker": ""} for u, row in items.items()}  # by item: 2 per class
    by_item = fold_splits(anonymous, 2, 0, "given", seed=7)
    assert sum(s == "val" for s in by_item.values()) == 4 and sum(s == "train" for s in by_item.values()) == 26
    assert fold_splits(items, 2, 0, "given", seed=7) == first  # seeded
    second = fold_splits(items, 2, 1, "given", seed=7)
    assert second["u39"] == "none" and sum(s == "test" for s in second.values()) == 29
    with pytest.raises(FoldError, match="brings no folds"):
        count_folds({"u": {"label": "a", "speaker": "s"}}, "given", "given")


@pytest.mark.slow
def test_s4_runs_cross_corpus_on_corpora_named_on_the_command_line(synth, tmp_path):
    """`--corpus ravdess=DIR --corpus mine=MANIFEST`: a manifest-read corpus and a folder, the
    cross pair trained and tested on the classes they share, with its class map reported."""
    import os

    from sweeps.blstm_attention import STUDY
    from sweeps.runner import main

    ravdess = synth("ravdess", 24, seed=5, faults=False)
    items = read_corpus("cremad", synth("cremad", 56, seed=1, faults=False)).items
    items[["path", "label", "speaker"]].assign(label=items["label"].str.upper()).to_csv(tmp_path / "mine.csv",
                                                                                      index=False)
    old = os.environ.get("EMOSWEEP_LOCAL")
    table = main(STUDY, ["--local", "--smoke", "--corpus", f"ravdess={ravdess}", "--corpus", f"mine={tmp_path / 'mine.csv'}",
                         "--arms", "ravdess_to_mine,mine_floor", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                         "--results-out", str(tmp_path / "r.csv")])
    assert os.environ.get("EMOSWEEP_LOCAL") == old
    rows = table.set_index("arm")
    assert set(rows.index) == {"ravdess_to_mine", "mine_floor"} and (rows["status"].str.startswith("OK")).all()
    assert rows.loc["ravdess_to_mine", "n_classes"] == 6
    assert rows.loc["ravdess_to_mine", "classes"] == "neutral,happiness,sadness,anger,fear,disgust"
    assert 0 <= rows.loc["ravdess_to_mine", "test_acc"] <= 1


def test_s2_arms_with_several_corpora(synth):
    from sweeps.hubert_pooling import ARMS, STUDY, reference_of
    from sweeps.study import build_parser, with_corpus_arms

    ravdess, cremad = synth("ravdess", 24, seed=5, faults=False), synth("cremad", 56, seed=1)
    opts = build_parser(STUDY).parse_args(["--corpus", f"ravdess={ravdess}", "--corpus", f"cremad={cremad}"])
    arms = with_corpus_arms(STUDY, opts).arms
    assert set(ARMS) < set(arms) and {"ravdess_to_cremad", "cremad_to_ravdess", "ravdess_to_cremad_probe"} <= set(arms)
    assert arms["masked_mean"]["train_corpus"] == arms["masked_mean"]["test_corpus"] == "ravdess"  # the first named
    # every pooling arm on each corpus, on that corpus's own folds, against that corpus's probe
    assert {f"{a}_on_cremad" for a in ARMS} < set(arms)
    assert arms["masked_mean_on_cremad"]["train_corpus"] == arms["masked_mean_on_cremad"]["test_corpus"] == "cremad"
    assert reference_of("masked_mean_on_cremad", arms) == "probe_on_cremad"
    assert reference_of("probe_on_cremad", arms) == "probe_on_cremad"  # the reference itself
    from mlflow.utils.validation import _validate_param_name

    for arm in arms:  # arm names become MLflow keys (the sweep's optuna_seed.<arm> params): `@` was refused
        _validate_param_name(f"optuna_seed.{arm}")
    assert set(arms["cremad_to_ravdess"]["arm_classes"].split(",")) == {"anger", "disgust", "fear", "happiness",
                                                                        "neutral", "sadness"}
    assert reference_of("cremad_to_ravdess", arms) == "cremad_to_ravdess_probe"
    assert reference_of("masked_mean", arms) == "probe" and reference_of("cremad_to_ravdess_probe", arms) is None
    one = build_parser(STUDY).parse_args(["--corpus", f"mine={cremad}"])
    assert with_corpus_arms(STUDY, one).arms is STUDY.arms  # one corpus: the study's own arms on it


@pytest.mark.slow
def test_s2_cross_corpus_runs_on_the_frozen_encoders_cache(synth, tmp_path, capsys):
    """Two corpora's states in the cache; a cross arm trains on one and tests on all of the
    other (nothing of it is trained on), on the classes they share; its probe is its reference.
    TESS has two speakers, so its own split is by item: the gate checks only what the arms use
    (RAVDESS's train and val, all of TESS as test) and lets it run without --allow-leak."""
    from sweeps.hubert_pooling import STUDY
    from sweeps.runner import main
    from workloads.data.corpora import read_corpus

    ravdess, tess = synth("ravdess", 24, seed=5, faults=False), synth("tess", 28, seed=1, faults=False)
    table = main(STUDY, ["--local", "--smoke", "--corpus", f"ravdess={ravdess}", "--corpus", f"tess={tess}",
                         "--arms", "ravdess_to_tess,ravdess_to_tess_probe", "--tracking-uri",
                         f"sqlite:///{tmp_path / 'm.db'}", "--results-out", str(tmp_path / "r.csv")])
    assert "split gate" in capsys.readouterr().out
    rows = table.set_index("arm")
    assert set(rows.index) == {"ravdess_to_tess", "ravdess_to_tess_probe"}
    assert rows.loc["ravdess_to_tess", "train_corpus"] == "ravdess" and rows.loc["ravdess_to_tess", "test_corpus"] == "tess"
    shared = set(rows.loc["ravdess_to_tess", "arm_classes"].split(","))
    from workloads.data.labels import spelled

    tess_items = read_corpus("tess", tess).items
    every = int(tess_items["label"].map(spelled).isin(shared).sum())
    assert rows.loc["ravdess_to_tess", "n_test"] == every  # all of TESS, not its test part
    arms = pd.read_csv(tmp_path / "r.arms.csv").set_index("arm")
    assert arms.loc["ravdess_to_tess", "reference"] == "ravdess_to_tess_probe"
    assert 0 <= rows.loc["ravdess_to_tess", "test_acc"] <= 1
    # the per-item predictions: every TESS item once per arm, each named by its corpus and uid
    per_item = pd.read_parquet(tmp_path / "r.predictions.parquet")
    test = per_item[per_item["split"] == "test"]
    assert (test["corpus"] == "tess").all() and test.groupby("arm")["uid"].nunique().eq(every).all()
