"""Corpus readers on generated look-alike corpora in their native layouts (and the real MELD
transcripts when ../shared is present), the splits, and that each generated corpus is
learnable by a simple classifier."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workloads.data.audio import decode_audio
from workloads.data.corpora import MELD_LABELS, index_media, media_key, read_corpus, read_meld
from workloads.data.features import STAGES
from workloads.data.manifest import assign_splits
from workloads.data.synth import load_manifest

CORPORA = ["meld", "shemo", "emodb", "audiomnist", "gtzan", "speakers", "ravdess"]
READER_FAULTS = {"unknown label", "not valid UTF-8", "missing media"}  # found before any decoding
REAL_MELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld-text"


@pytest.mark.parametrize("corpus", CORPORA)
def test_reader_keeps_every_good_item_and_reports_reader_faults(synth, corpus):
    root = synth(corpus)
    info = load_manifest(root)
    m = read_corpus(corpus, root)
    assert set(info["good"]) <= set(m.items["uid"]), "a good item is missing from the manifest"
    assert m.items["uid"].is_unique
    assert m.items["label"].isin(m.classes).all()
    assert all(Path(p).is_file() for p in m.items["path"])
    planted = [f for f in info["faults"] if f["kind"] in READER_FAULTS]
    assert planted, "the generator planted no reader-level fault"
    for fault in planted:
        hits = m.problems[(m.problems["path"] == fault["path"]) & (m.problems["line"] == fault["line"])]
        assert len(hits) == 1, f"{fault} not reported; problems:\n{m.problems}"
        keyword = {"unknown label": "label", "not valid UTF-8": "UTF-8", "missing media": "not found"}[fault["kind"]]
        if corpus in ("audiomnist",) and fault["kind"] == "unknown label":
            keyword = "file name"
        if corpus in ("gtzan", "speakers") and fault["kind"] == "unknown label":
            keyword = "folder per class"
        assert keyword in hits.iloc[0]["reason"]
    # decode-level faults are media the reader cannot judge: they stay items (the pipeline reports them)
    for fault in info["faults"]:
        if fault["kind"] not in READER_FAULTS:
            assert fault["path"] in set(m.items["path"])


def test_meld_layout_quirks_and_official_splits(synth):
    root = synth("meld")
    m = read_meld(root)
    assert set(m.items["split"]) == {"train", "val", "test"}
    paths = m.items.set_index("uid")["path"]
    assert any(p.endswith(".mp4.wav") for p in paths), "doubled suffix not found"
    assert any(p.endswith(".MP4") for p in paths), "upper-case extension not found"
    assert any("/nested/" in p for p in paths), "file in a nested folder not found"
    # MELD reuses dia/utt numbers in every split; each split takes the file under its own folder
    for uid, folder in [("train/dia0_utt0", "train_splits"), ("val/dia0_utt0", "dev_splits_complete"),
                        ("test/dia0_utt0", "output_repeated_splits_test")]:
        assert f"/{folder}/" in paths[uid]
    # transcripts carry the class cue words
    joy = m.items[m.items["label"] == "joy"]["text"].str.lower()
    assert joy.str.contains("great|wonderful").all()


def test_media_index_is_tolerant_of_suffixes_and_case(tmp_path):
    for rel in ["a/Dia1_Utt2.MP4", "b/c/dia3_utt4.mp4.wav", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    index = index_media(tmp_path)
    assert set(index) == {"dia1_utt2", "dia3_utt4"}
    assert media_key("x.mp4.wav") == "x" and media_key("jazz.00054.wav") == "jazz.00054"


@pytest.mark.skipif(not REAL_MELD.is_dir(), reason="the real MELD transcripts (../shared/data/meld-text) are not here")
def test_real_meld_csvs_read_cleanly():
    m = read_meld(REAL_MELD, require_media=False)
    assert len(m.problems) == 0, m.problems.head()
    assert m.items["split"].value_counts().to_dict() == {"train": 9989, "test": 2610, "val": 1109}
    train = m.items[m.items["split"] == "train"]["label"].value_counts().to_dict()
    assert train == {"neutral": 4710, "joy": 1743, "surprise": 1205, "anger": 1109, "sadness": 683,
                     "disgust": 271, "fear": 268}
    assert m.items["text"].str.contains("’").any()  # typographic quotes survive


def test_missing_corpus_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ShEMO"):
        read_corpus("shemo", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="dev_sent_emo.csv"):
        read_meld(tmp_path)


def _items(n_per_class=(60, 30, 10), speakers=10):
    rows = []
    for c, n in enumerate(n_per_class):
        rows += [{"uid": f"{c}-{i}", "label": f"c{c}", "split": "", "speaker": f"s{i % speakers}"} for i in range(n)]
    return pd.DataFrame(rows)


def test_stratified_split_is_seeded_and_keeps_class_proportions():
    items = _items()
    a, b, c = (assign_splits(items, seed=s) for s in (7, 7, 8))
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()
    counts = a.groupby(["label", "split"]).size().unstack()
    assert counts.loc["c0"].to_dict() == {"test": 6, "train": 48, "val": 6}
    assert counts.loc["c1"].to_dict() == {"test": 3, "train": 24, "val": 3}
    assert counts.loc["c2"].to_dict() == {"test": 1, "train": 8, "val": 1}
    official = items.assign(split=["test"] * len(items))
    assert (assign_splits(official, seed=0)["split"] == "test").all()  # official splits are kept


def test_speaker_independent_split_never_shares_a_speaker():
    items = _items(speakers=12)
    out = assign_splits(items, seed=3, by_speaker=True)
    speakers = out.groupby("split")["speaker"].apply(set)
    assert not (speakers["train"] & speakers["val"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["val"] & speakers["test"])
    assert 0.65 < (out["split"] == "train").mean() < 0.9
    with pytest.raises(ValueError, match="at least 3 speakers"):
        assign_splits(_items(speakers=2), seed=0, by_speaker=True)


@pytest.mark.slow
@pytest.mark.parametrize("corpus", CORPORA)
def test_generated_corpus_is_learnable(synth, corpus):
    """Mean MFCCs + spectral statistics and a logistic regression beat chance by a wide margin
    (MELD: its transcripts' words, with TF-IDF)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = {"meld": 200, "gtzan": 100, "speakers": 100}.get(corpus, 140)
    m = read_corpus(corpus, synth(corpus, n=n, seed=1, faults=False))
    items = assign_splits(m.items.assign(split=""), seed=0, fractions=(0.7, 0.0, 0.3))
    train = (items["split"] == "train").to_numpy()
    chance = items["label"].value_counts(normalize=True).max()

    def accuracy(model, X):
        model.fit(X[train], items["label"][train])
        return (model.predict(X[~train]) == items["label"][~train]).mean()

    feats = []
    for path in items["path"]:  # mp4 for MELD: the audio track, decoded through FFmpeg
        wave = decode_audio(path)
        feats.append(np.concatenate([STAGES["mfcc_mean"](wave)["mfcc_mean"],
                                     STAGES["spectral_stats"](wave)["spectral_stats"]]))
    acc = accuracy(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), np.stack(feats))
    assert acc > max(1.6 * chance, chance + 0.25) or acc > 0.9, f"{corpus} audio: accuracy {acc:.2f}, majority {chance:.2f}"
    if corpus == "meld":
        from sklearn.feature_extraction.text import TfidfVectorizer

        assert set(items["label"]) == set(MELD_LABELS)
        text_acc = accuracy(make_pipeline(TfidfVectorizer(), LogisticRegression(C=10, max_iter=1000)),
                            items["text"].to_numpy())
        assert text_acc > 0.9, f"meld text: accuracy {text_acc:.2f}, majority {chance:.2f}"


def test_audiomnist_reader_takes_flat_corpora_with_named_speakers(tmp_path):
    """A real flat AudioMNIST-style corpus: every file in one folder, speakers by name, another
    sample rate. The label needs only the first field; nothing else is constrained."""
    from workloads.data.corpora import read_audiomnist
    from workloads.data.synth import write_wav

    wave = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    for name in ("3_jackson_0.wav", "7_nicolas_12.wav", "0_theo_van_gogh_4.WAV", "9_01_49.wav.wav", "x_bob_1.wav"):
        write_wav(tmp_path / name, wave, 8000)
    (tmp_path / "george").mkdir()
    write_wav(tmp_path / "george" / "5_george_3.wav", wave, 8000)
    m = read_audiomnist(tmp_path)
    got = dict(zip(m.items["uid"].map(lambda u: Path(u).name), zip(m.items["label"], m.items["speaker"])))
    assert got == {"3_jackson_0.wav": ("3", "jackson"), "7_nicolas_12.wav": ("7", "nicolas"),
                   "0_theo_van_gogh_4.WAV": ("0", "theo_van_gogh"), "9_01_49.wav.wav": ("9", "01"),
                   "5_george_3.wav": ("5", "george")}
    (bad,) = m.problems.itertuples()
    assert bad.path.endswith("x_bob_1.wav") and "file name" in bad.reason
