"""Folds: which items a trial trains, validates and tests on, and the gate that checks them.

A sweep with `--folds K` runs every configuration once per fold. Fold k's test set is the
k-th group of speakers (speaker-disjoint, the default whenever the corpus knows its
speakers) or the k-th stratified group of items (`--split-by item`). Validation comes from
the remaining speakers (or items), drawn from the split seed; training is the rest. Every
assignment is a pure function of (items, folds, split_by, split seed, fold): a resumed or
retried trial gets exactly the items it had, on any machine.

With no folds the study's own split stands (the corpus's official one, or the driver's
seeded one). Either way `check_splits` is run by the driver before any trial starts: no
speaker in two of train/val/test, and no identical audio (the hash of the decoded samples)
in two of them.
"""
from __future__ import annotations

from ..core.errors import BadInput
from .manifest import fold_columns

from collections import defaultdict

import numpy as np

SPLITS = ("train", "val", "test")
VAL_SHARE = 0.1  # of the items (or speakers) left once the test fold is out


class FoldError(BadInput):
    """A fold request this corpus cannot satisfy; the message says why, in one line."""


def parse_folds(value) -> int | str:
    """'--folds' as given: 0 (none), K ≥ 2, 'loso' (one fold per speaker) or 'given' (the
    corpus's own folds: EmoBox's fold_K files)."""
    if value in (None, "", 0, "0"):
        return 0
    if str(value).lower() in ("loso", "given"):
        return str(value).lower()
    try:
        k = int(value)
    except ValueError:
        raise FoldError(f"--folds takes a number of folds (2 or more), 'loso' or 'given', not {value!r}") from None
    if k < 2:
        raise FoldError(f"--folds {k}: at least 2 folds, or 'loso'")
    return k


def _corpus(row: dict) -> str:
    return str(row.get("corpus") or "")


def _speakers(items: dict) -> dict:
    """corpus → its sorted speakers."""
    found = defaultdict(set)
    for row in items.values():
        found[_corpus(row)].add(str(row.get("speaker") or ""))
    return {c: sorted(s) for c, s in found.items()}


def given_folds(items: dict) -> int:
    """How many folds the corpus brings (items' fold_1 … fold_K: train or test), 0 if none."""
    keys = fold_columns({k for row in items.values() for k in row})
    return int(keys[-1][5:]) if keys else 0


def resolve_split_by(items: dict, split_by: str | None, speaker_folds: bool = True,
                     folds=None) -> tuple[str, str]:
    """(split_by, why): 'given' for the corpus's own folds, 'speaker' when every item has a
    speaker and the study allows it, else 'item'. An explicit 'speaker' the corpus cannot
    honour is a FoldError."""
    if folds == "given":
        if split_by:
            raise FoldError("--split-by: --folds given uses the corpus's own folds as they are")
        return "given", "the corpus's own folds"
    known = all(str(row.get("speaker") or "") for row in items.values())
    if split_by == "speaker":
        if not speaker_folds:
            raise FoldError("--split-by speaker: this study's labels are the speakers; its folds split items")
        if not known:
            raise FoldError("--split-by speaker: some items of this corpus have no speaker")
        return "speaker", "asked for"
    if split_by == "item":
        return "item", "asked for"
    if not speaker_folds:
        return "item", "the labels are the speakers"
    if not known:
        return "item", "the corpus names no speakers"
    return "speaker", "the corpus names its speakers"


def count_folds(items: dict, folds, split_by: str) -> int:
    """How many folds a fold spec makes on these items (0: none)."""
    folds = parse_folds(folds)
    if not folds:
        return 0
    if folds == "given":
        n = given_folds(items)
        if n < 2:
            raise FoldError("--folds given: the corpus brings no folds of its own (an EmoBox folder does: "
                            "fold_K/<corpus>_{train,test}_fold_K.jsonl)")
        return n
    speakers = _speakers(items)
    if folds == "loso":
        if split_by != "speaker":
            raise FoldError("--folds loso needs speakers: it holds out one speaker per fold")
        counts = {c: len(s) for c, s in speakers.items()}
        if len(set(counts.values())) > 1:
            raise FoldError(f"--folds loso over corpora with different numbers of speakers ({counts}): "
                            f"choose arms of one corpus, or --folds K")
        n = next(iter(counts.values()))
        if n < 3:
            raise FoldError(f"--folds loso needs at least 3 speakers, the corpus has {n}")
        return n
    if split_by == "speaker":
        fewest = min(len(s) for s in speakers.values())
        if fewest < folds + 1:
            raise FoldError(f"--folds {folds}: the corpus has {fewest} speakers, too few for {folds} "
                            f"speaker-disjoint test folds and a validation speaker")
    return int(folds)


def _rng(seed: int, *names) -> np.random.Generator:
    from ..core.seeding import derive_seed

    return np.random.default_rng(derive_seed(int(seed), "folds", *names))


def fold_splits(items: dict, n_folds: int, fold: int, split_by: str, seed: int) -> dict:
    """uid → 'train' | 'val' | 'test' for fold `fold` of `n_folds`. items: uid → row with
    label, speaker and (several corpora) corpus. Each corpus is folded on its own."""
    if not 0 <= fold < n_folds:
        raise FoldError(f"fold {fold} does not exist: there are {n_folds}")
    by_corpus = defaultdict(list)
    for uid in sorted(items):
        by_corpus[_corpus(items[uid])].append(uid)
    out = {}
    for corpus, uids in by_corpus.items():
        if split_by == "given":  # the corpus's fold: its test part; a tenth of its train part validates
            key = f"fold_{fold + 1}"
            train = [u for u in uids if items[u].get(key) == "train"]
            val = set()
            if all(str(items[u].get("speaker") or "") for u in train) and len({items[u]["speaker"] for u in train}) > 2:
                # speaker-disjoint, as the corpus's folds are: a tenth of the training speakers
                speakers = sorted({str(items[u]["speaker"]) for u in train})
                order = [speakers[i] for i in _rng(seed, corpus, "given-val", fold).permutation(len(speakers))]
                chosen = set(order[:max(1, int(round(len(order) * VAL_SHARE)))])
                val = {u for u in train if str(items[u]["speaker"]) in chosen}
            else:  # by item, stratified; identical audio stays together
                group = _audio_groups(items, train)
                heads = [u for u in train if group[u] == u]
                for label in sorted({str(items[u]["label"]) for u in heads}):
                    members = [u for u in heads if str(items[u]["label"]) == label]
                    order = [members[i] for i in _rng(seed, corpus, "given-val", label, fold).permutation(len(members))]
                    val |= set(order[:int(round(len(order) * VAL_SHARE))])
                val = {u for u in train if group[u] in val}
            for u in uids:
                side = items[u].get(key)
                out[u] = "test" if side == "test" else "val" if u in val else "train" if side == "train" else "none"
            continue
        if split_by == "speaker":
            speakers = sorted({str(items[u]["speaker"]) for u in uids})
            order = [speakers[i] for i in _rng(seed, corpus, "speakers").permutation(len(speakers))]
            test = set(order[fold::n_folds])
            rest = [s for s in order if s not in test]
            rest = [rest[i] for i in _rng(seed, corpus, "val", fold).permutation(len(rest))]
            val = set(rest[:max(1, int(round(len(rest) * VAL_SHARE)))])
            for u in uids:
                s = str(items[u]["speaker"])
                out[u] = "test" if s in test else "val" if s in val else "train"
            continue
        # items: stratified per class. Each class's items are dealt into the folds in a seeded
        # order (so every fold keeps the class proportions), then a tenth of the rest is validation.
        # Items of identical audio are one unit: dealt as their first, never in two parts.
        group = _audio_groups(items, uids)
        by_label = defaultdict(list)
        for u in uids:
            if group[u] == u:
                by_label[str(items[u]["label"])].append(u)
        offset = 0
        for label in sorted(by_label):
            members = by_label[label]
            order = [members[i] for i in _rng(seed, corpus, "items", label).permutation(len(members))]
            # rotate the deal so small classes do not all land in fold 0
            test = {u for i, u in enumerate(order) if (i + offset) % n_folds == fold}
            offset += len(order)
            rest = [u for u in order if u not in test]
            rest = [rest[i] for i in _rng(seed, corpus, "val", label, fold).permutation(len(rest))]
            val = set(rest[:int(round(len(rest) * VAL_SHARE))])
            for u in members:
                out[u] = "test" if u in test else "val" if u in val else "train"
        for u in uids:
            out[u] = out[group[u]]
    return out


def arm_parts(items: dict, splits: dict, train_corpus: str | None = None, test_corpus: str | None = None) -> dict:
    """uid → train/val/test of what one arm uses of an assignment: all of it for an arm of no
    named corpus; its corpus's parts for a within-corpus arm; for a cross-corpus arm (A → B),
    A's train and val parts and, as its test, all of B (nothing of B is trained on), or B's
    own test set where the corpus names one (its items' `split_given`)."""
    if train_corpus is None:
        return {u: s for u, s in splits.items() if s in SPLITS}
    if train_corpus == test_corpus:
        return {u: s for u, s in splits.items() if s in SPLITS and _corpus(items[u]) == train_corpus}
    given = any(_given(items[u]) for u in splits if _corpus(items[u]) == test_corpus)
    out = {}
    for u, s in splits.items():
        corpus = _corpus(items[u])
        if corpus == train_corpus and s in ("train", "val"):
            out[u] = s
        elif corpus == test_corpus and (s == "test" or (not given and s in SPLITS)):
            out[u] = "test"
    return out


def _given(row: dict) -> bool:
    value = row.get("split_given")
    return bool(value) and str(value).lower() not in ("false", "0", "nan", "none")


def _audio_groups(items: dict, uids: list) -> dict:
    """uid → the first (sorted) uid of its identical-audio group (items' content_hash; itself
    where the hash is unknown or unique): splits treat a group as one item."""
    first: dict = {}
    out = {}
    for u in sorted(uids):
        h = items[u].get("content_hash") or ""
        out[u] = first.setdefault(h, u) if h else u
    return out


def trial_splits(items: dict, config: dict) -> dict:
    """uid → split for one trial: fold config["fold"] when the sweep has folds, else the split
    the driver wrote into the items table."""
    n = int(config.get("n_folds") or 0)
    if not n:
        return {uid: row["split"] for uid, row in items.items()}
    return fold_splits(items, n, int(config.get("fold") or 0), config.get("split_by", "speaker"),
                       int(config.get("split_seed", config["seed"])))


# ----------------------------------------------------------------------------- the gate

def check_splits(items: dict, splits: dict, check_speakers: bool) -> list[str]:
    """Leaks of one split: speakers in two parts (when the split claims to be speaker-disjoint)
    and identical decoded audio (items' `content_hash`, where known) in two parts. Returns
    one line per leak, naming the speakers or files; empty when the split is clean."""
    leaks = []
    groups = []
    if check_speakers:
        groups.append(("speaker", lambda row: str(row.get("speaker") or "")))
    if any(row.get("content_hash") for row in items.values()):
        groups.append(("identical audio", lambda row: row.get("content_hash") or ""))
    for what, key_of in groups:
        parts = defaultdict(lambda: defaultdict(list))  # (corpus, key) → split → uids
        for uid, split in splits.items():
            row = items[uid]
            key = key_of(row)
            if key:
                parts[(_corpus(row), key)][split].append(uid)
        for (corpus, key), where in sorted(parts.items()):
            if len(where) < 2:
                continue
            name = f"{corpus}/{key}" if corpus else key
            if what == "speaker":
                leaks.append(f"speaker {name} is in {' and '.join(s for s in SPLITS if s in where)}")
            else:
                files = [items[u].get("path") or u for s in SPLITS for u in where.get(s, [])]
                leaks.append(f"identical audio in {' and '.join(s for s in SPLITS if s in where)}: "
                             f"{', '.join(str(f) for f in files[:4])}")
    return leaks


def assignments(items: dict, n_folds: int, split_by: str, seed: int) -> list[tuple[str, dict]]:
    """[(name, uid → split)] of every fold, or of the driver's one split when there are none."""
    if not n_folds:
        return [("split", {uid: row["split"] for uid, row in items.items()})]
    return [(f"fold {k}", fold_splits(items, n_folds, k, split_by, seed)) for k in range(n_folds)]


def gate(items: dict, checks: list[tuple[str, dict]], split_by: str, uses=None) -> tuple[dict, list[str]]:
    """Check every assignment (see `assignments`), as the arms use it: `uses`, the arms'
    (train corpus, test corpus) pairs (see arm_parts; default: all of every assignment).
    Returns ({its name: number of leaks}, the leaks, each prefixed with its name)."""
    per, leaks = {}, []
    uses = sorted(set(uses or [(None, None)]), key=str)
    for name, splits in checks:
        found = []
        for train, test in uses:
            for line in check_splits(items, arm_parts(items, splits, train, test), check_speakers=split_by == "speaker"):
                if line not in found:
                    found.append(line)
        per[name] = len(found)
        leaks += [f"{name}: {line}" for line in found]
    return per, leaks


def split_sizes(items: dict, splits: dict) -> dict:
    """split → (items, speakers) of one assignment, for the data report."""
    out = {}
    for s in SPLITS:
        uids = [u for u, v in splits.items() if v == s]
        out[s] = (len(uids), len({(_corpus(items[u]), str(items[u].get("speaker") or "")) for u in uids}))
    return out


def content_hashes(fs_uri: str, stage_dir: str) -> dict:
    """uid → hex digest of its decoded samples, from a prepared `content_hash` stage."""
    from .pipeline import read_stage

    frame, arrays = read_stage(fs_uri, stage_dir, "content_hash")
    return {uid: bytes(np.asarray(a, np.uint8)).hex() for uid, a in zip(frame["uid"], arrays)}
