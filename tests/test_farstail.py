from pathlib import Path

import pytest

from workloads.data.farstail import LABELS, read_farstail
from workloads.data.manifest import ITEM_COLUMNS, stratified_subset

HEADER = "premise\thypothesis\tlabel\thard(hypothesis)\thard(overlap)\n"


def test_embedded_farstail_reads_cleanly(farstail):
    assert farstail.items["split"].value_counts().to_dict() == {"train": 7266, "val": 1537, "test": 1564}
    assert set(farstail.items["label"]) == set(LABELS)
    assert len(farstail.problems) == 0
    assert set(ITEM_COLUMNS) <= set(farstail.items.columns)
    assert farstail.items["text"].str.len().min() > 0 and farstail.items["text_b"].str.len().min() > 0
    assert len(farstail.fingerprint()) == 12


def _write(root: Path, name: str, body: bytes) -> None:
    (root / name).write_bytes(HEADER.encode() + body)


def test_bad_rows_are_reported_by_line_and_good_rows_kept(tmp_path):
    train = (
        "a premise\ta hypothesis\te\t0\t0\n"                      # line 2: good
        '"quoted ""inner"" text\twith tab"\thyp\tc\t0\t0\n'       # line 3: good, quotes + tab inside
        '"spans\ntwo lines"\thyp\tn\t0\t0\n'                      # lines 4-5: good, multi-line field
        "prem\thyp\tx\t0\t0\n"                                    # line 6: unknown label
        "only two\tfields\n"                                      # line 7: too few fields
    ).encode() + "bad \xff bytes\thyp\te\t0\t0\n".encode("latin-1") + (  # line 8: invalid UTF-8
        "\thyp\te\t0\t0\n"                                        # line 9: empty premise
        "last good\thyp\tn\t0\t0\n"                               # line 10: good
    ).encode()
    _write(tmp_path, "Train-word.csv", train)
    _write(tmp_path, "Val-word.csv", b"p\th\te\t0\t0\n")
    _write(tmp_path, "Test-word.csv", b"p\th\tc\t0\t0\n")
    m = read_farstail(tmp_path)

    train_items = m.split("train")
    assert list(train_items["text"]) == ['a premise', 'quoted "inner" text\twith tab', "spans\ntwo lines", "last good"]
    assert list(train_items["line"]) == [2, 3, 4, 10]
    problems = {(Path(p).name, line): reason for p, line, reason in m.problems.itertuples(index=False)}
    assert set(problems) == {("Train-word.csv", 6), ("Train-word.csv", 7), ("Train-word.csv", 8), ("Train-word.csv", 9)}
    assert "unknown label 'x'" in problems[("Train-word.csv", 6)]
    assert "got 2" in problems[("Train-word.csv", 7)]
    assert problems[("Train-word.csv", 8)] == "not valid UTF-8"
    assert "empty" in problems[("Train-word.csv", 9)]
    assert len(m.split("val")) == 1 and len(m.split("test")) == 1


def test_missing_split_names_folder_and_file(tmp_path):
    _write(tmp_path, "Train-word.csv", b"p\th\te\t0\t0\n")
    with pytest.raises(FileNotFoundError, match=r"val.*Val-word.csv"):
        read_farstail(tmp_path)


def test_stratified_subset_keeps_proportions_and_is_seeded(farstail):
    train = farstail.split("train")
    a = stratified_subset(train, 300, seed=1)
    b = stratified_subset(train, 300, seed=1)
    c = stratified_subset(train, 300, seed=2)
    assert len(a) == 300 and list(a["uid"]) == list(b["uid"]) and list(a["uid"]) != list(c["uid"])
    full = train["label"].value_counts(normalize=True)
    sub = a["label"].value_counts(normalize=True)
    assert (abs(full - sub) < 0.01).all()
    assert len(stratified_subset(train, None, seed=1)) == len(train)
