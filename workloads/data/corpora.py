"""Corpus readers: each corpus in its native layout → Manifest (items + problems).

Media are found through one index of the whole tree (file name → paths), so nested
folders, upper-case extensions and doubled suffixes such as `dia0_utt0.mp4.wav` are found
wherever they sit. Anything that cannot be used goes to the problems table with its path
and reason; nothing is dropped silently.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections import defaultdict
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

import pandas as pd

from .manifest import ITEM_COLUMNS, PROBLEM_COLUMNS, Manifest, field_problem, read_text_records
from ..core.errors import BadInput, InputNotFound

MEDIA_EXTENSIONS = (".wav", ".mp4", ".flac", ".ogg", ".mp3", ".m4a", ".mkv", ".avi", ".webm", ".opus", ".aac")


def media_key(name: str) -> str:
    """`Dia0_Utt0.MP4.wav` → `dia0_utt0`: lower case, every trailing media suffix removed."""
    key = name.lower()
    while True:
        stem, ext = os.path.splitext(key)
        if ext not in MEDIA_EXTENSIONS or not stem:
            return key
        key = stem


FOLLOW_SYMLINKS: ContextVar[bool] = ContextVar("follow_symlinks", default=False)


def unusable_entry(path: str, root: Path) -> str | None:
    """Why a directory entry named like media cannot be read as one, or None. Nothing is
    opened: a FIFO or device would block or stream forever. A name that is not valid UTF-8,
    a dangling link, a link loop, a link leading outside root (unless read_corpus was told
    follow_symlinks) and anything that is not a regular file are each one reason."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    if os.path.islink(path):
        try:
            target = Path(path).resolve(strict=True)
        except RuntimeError:
            return "symlink loop"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "symlink loop"
            return f"dangling symlink (→ {os.readlink(path)})"
        if not FOLLOW_SYMLINKS.get() and not target.is_relative_to(Path(root).resolve()):
            return f"symlink leads outside the corpus folder (→ {target})"
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot stat: {e.strerror}"
    if not stat.S_ISREG(mode):
        kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else
                "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "folder" if stat.S_ISDIR(mode) else "special")
        return f"not a regular file ({kind}); not opened"
    return None


def shown(path: str) -> str:
    """A path as text, whatever bytes its name holds (undecodable ones as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def index_media(root: Path, problems: list | None = None) -> dict[str, list[str]]:
    """Every usable media file under root by media_key, in a stable order. Entries named like
    media that cannot be used (unusable_entry) go to `problems`, one row each, and are left
    out; symlinked folders are not entered."""
    index = defaultdict(list)
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name.lower())[1] not in MEDIA_EXTENSIONS:
                continue
            path = os.path.join(folder, name)
            reason = unusable_entry(path, root)
            if reason is not None:
                if problems is not None:
                    problems.append({"path": shown(path), "line": 0, "reason": reason})
                continue
            index[media_key(name)].append(path)
    return index


DISPLAY_NAMES = {"meld": "MELD", "shemo": "ShEMO", "emodb": "EmoDB", "audiomnist": "AudioMNIST",
                 "gtzan": "GTZAN", "speakers": "speaker folders", "ravdess": "RAVDESS", "tess": "TESS",
                 "cremad": "CREMA-D", "savee": "SAVEE", "iemocap": "IEMOCAP", "folders": "folder-per-class"}


def _require_dir(root, corpus: str, expected: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputNotFound(f"{DISPLAY_NAMES.get(corpus, corpus)}: folder not found: {root} (expected {expected})")
    return root


def _manifest(name, items, problems, classes, sources=()) -> Manifest:
    columns = ITEM_COLUMNS + sorted({k for row in items for k in row} - set(ITEM_COLUMNS))
    return Manifest(name=name, items=pd.DataFrame(items, columns=columns),
                    problems=pd.DataFrame(problems, columns=PROBLEM_COLUMNS),
                    sources=[str(s) for s in sources], classes=list(classes))


# --- MELD -----------------------------------------------------------------------------
MELD_LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
MELD_SPLITS = {"train": "train", "dev": "val", "test": "test"}  # CSV prefix → split
MELD_COLUMNS = ["Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"]


def _find_meld_csvs(root: Path) -> dict:
    found = {}
    for path in sorted(root.rglob("*.csv"), key=lambda p: (len(p.parts), str(p))):
        for prefix in MELD_SPLITS:
            if path.name.lower() == f"{prefix}_sent_emo.csv" and prefix not in found:
                found[prefix] = path
    return found


def _pick_media(candidates: list[str], hint: str, root: Path) -> str | None:
    """One file among same-named candidates: MELD reuses dia/utt ids across splits, so
    prefer the one under a folder named for the split (train_splits, dev_splits_complete,
    output_repeated_splits_test)."""
    if len(candidates) == 1:
        return candidates[0]
    matching = [c for c in candidates
                if any(hint in part.lower() for part in Path(c).relative_to(root).parts[:-1])]
    return matching[0] if len(matching) == 1 else None


def read_meld(root, media_root=None, require_media: bool = True) -> Manifest:
    """MELD: `{train,dev,test}_sent_emo.csv` anywhere under root, media
    `dia{D}_utt{U}.mp4` anywhere under media_root (default: root). Official splits
    (dev → val). require_media=False reads the transcripts alone (path left empty)."""
    root = _require_dir(root, "MELD", "train/dev/test_sent_emo.csv and the mp4 folders")
    csvs = _find_meld_csvs(root)
    missing = [p for p in MELD_SPLITS if p not in csvs]
    if missing:
        raise InputNotFound(f"MELD: no {', '.join(f'{m}_sent_emo.csv' for m in missing)} under {root}")
    media_root = Path(media_root) if media_root else root
    items, problems = [], []
    index = index_media(media_root, problems) if require_media else {}
    for prefix, split in MELD_SPLITS.items():
        path, hint = csvs[prefix], prefix  # the split's media folder carries the CSV's prefix
        records = read_text_records(path, delimiter=",")
        _, header = next(records, (0, []))
        header = [h.strip() for h in header]
        absent = [c for c in MELD_COLUMNS if c not in header]
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent}; header is {header}")
        col = {c: header.index(c) for c in MELD_COLUMNS}
        for line, row in records:
            if not any(f.strip() for f in row):
                continue
            reason, media = None, ""
            if len(row) != len(header):
                reason = f"expected {len(header)} fields, got {len(row)}"
            elif field_problem(row):
                reason = field_problem(row)
            elif row[col["Emotion"]].strip().lower() not in MELD_LABELS:
                reason = f"unknown label {row[col['Emotion']].strip()!r} (expected one of {MELD_LABELS})"
            elif not (row[col["Dialogue_ID"]].strip().isdigit() and row[col["Utterance_ID"]].strip().isdigit()):
                reason = "Dialogue_ID / Utterance_ID not integers"
            name = f"dia{row[col['Dialogue_ID']].strip()}_utt{row[col['Utterance_ID']].strip()}" if len(row) == len(header) else ""
            if reason is None and require_media:
                candidates = index.get(name.lower(), [])
                media = _pick_media(candidates, hint, media_root) if candidates else None
                if not candidates:
                    reason = f"media not found: {name}.mp4 (no file of that name under {media_root})"
                elif media is None:
                    reason = f"ambiguous media for {name}: {len(candidates)} files, none under a '{hint}' folder"
            if reason:
                problems.append({"path": str(path), "line": line, "reason": reason})
                continue
            items.append({"uid": f"{split}/{name}", "path": media, "label": row[col["Emotion"]].strip().lower(),
                          "split": split, "speaker": row[col["Speaker"]].strip(),
                          "text": row[col["Utterance"]].strip(), "csv_line": line})
    return _manifest("meld", items, problems, MELD_LABELS, sources=csvs.values())


# --- corpora labelled by file or folder name -------------------------------------------
def _read_named(corpus: str, root, expected: str, classes, parse: Callable[[Path, Path], dict]) -> Manifest:
    """Every media file under root; parse(path, root) → {label, speaker, ...} or raises
    ValueError(reason) for a file that is not an item of this corpus."""
    root = _require_dir(root, corpus, expected)
    items, problems = [], []
    for key, paths in sorted(index_media(root, problems).items()):
        for path in paths:
            try:
                fields = parse(Path(path), root)
            except ValueError as e:
                problems.append({"path": path, "line": 0, "reason": str(e)})
                continue
            uid = os.path.relpath(path, root)
            items.append({"uid": uid, "path": path, "split": "", "text": "", **fields})
    if not items and not problems:
        raise InputNotFound(f"{DISPLAY_NAMES.get(corpus, corpus)}: no media files under {root} (expected {expected})")
    return _manifest(corpus, items, problems, classes)


SHEMO_LABELS = {"A": "anger", "H": "happiness", "N": "neutral", "S": "sadness", "W": "surprise", "F": "fear"}
EMODB_LABELS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
                "N": "neutral"}
GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def _letter_label(stem: str, position: int, table: dict, corpus: str) -> str:
    if len(stem) <= position or stem[position].upper() not in table:
        got = stem[position] if len(stem) > position else "nothing"
        raise ValueError(f"unknown label {got!r} at character {position + 1} of the {corpus} file name "
                         f"(expected one of {''.join(table)})")
    return table[stem[position].upper()]


def read_shemo(root) -> Manifest:
    """ShEMO: `F01A01.wav` = gender, speaker number, emotion letter (4th character), index."""
    def parse(path, root):
        stem = media_key(path.name)
        return {"label": _letter_label(stem.upper(), 3, SHEMO_LABELS, "ShEMO"), "speaker": stem[:3].upper()}
    return _read_named("shemo", root, "files like F01A01.wav", list(SHEMO_LABELS.values()), parse)


def read_emodb(root) -> Manifest:
    """EmoDB (Berlin): `03a01Fa.wav` = speaker, text, version; emotion letter is the 6th character."""
    def parse(path, root):
        stem = media_key(path.name)
        return {"label": _letter_label(stem.upper(), 5, EMODB_LABELS, "EmoDB"), "speaker": stem[:2]}
    return _read_named("emodb", root, "files like 03a01Fa.wav", list(EMODB_LABELS.values()), parse)


def read_audiomnist(root) -> Manifest:
    """AudioMNIST: `{digit}_{speaker}_{index}.wav`, in one folder per speaker or all in one
    folder, any sample rate, anywhere under root. Only the label is required of a name: its
    first field is one digit. The speaker is the field(s) between the first and the last (a
    number or a name), else the file's folder."""
    def parse(path, root):
        fields = media_key(path.name).split("_")
        if len(fields[0]) != 1 or not fields[0].isdigit():
            raise ValueError(f"file name does not start with a digit 0-9 and '_' "
                             f"({{digit}}_{{speaker}}_{{index}}.wav); its first field is {fields[0]!r}")
        speaker = "_".join(fields[1:-1]) if len(fields) >= 3 else (path.parent.name if path.parent != root else "")
        return {"label": fields[0], "speaker": speaker}
    return _read_named("audiomnist", root, "{digit}_{speaker}_{index}.wav files, in speaker folders or not",
                       [str(d) for d in range(10)], parse)


def _folder_label(path: Path, root: Path) -> str:
    if path.parent == root:
        raise ValueError("file at the corpus root; expected one folder per class")
    return path.parent.name


def read_gtzan(root) -> Manifest:
    """GTZAN: one folder per genre (`genres_original/jazz/jazz.00054.wav`); root may be the
    release's top folder (holding `genres_original/`) or the genre folders' parent."""
    if (Path(root) / "genres_original").is_dir():
        root = Path(root) / "genres_original"

    def parse(path, root):
        return {"label": _folder_label(path, root), "speaker": ""}
    m = _read_named("gtzan", root, "one folder per genre", [], parse)
    found = sorted(m.items["label"].unique())
    m.classes = [g for g in GTZAN_GENRES if g in found] + [g for g in found if g not in GTZAN_GENRES]
    return m


def read_speakers(root) -> Manifest:
    """Speaker identification: one folder per speaker of short clips; label = speaker."""
    def parse(path, root):
        name = _folder_label(path, root)
        return {"label": name, "speaker": name}
    m = _read_named("speakers", root, "one folder per speaker", [], parse)
    m.classes = sorted(m.items["label"].unique())
    return m


RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                    "07": "disgust", "08": "surprised"}
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def read_ravdess(root) -> Manifest:
    """RAVDESS: `03-01-05-01-02-01-12.wav` = modality, vocal channel, emotion (3rd), intensity,
    statement, repetition, actor (7th; odd male, even female), usually in `Actor_NN/` folders
    but found anywhere under root, in any audio container. Speaker = actor, so splits by
    speaker keep every actor in one split. Video-only files (modality 02) have no audio."""
    def parse(path, root):
        m = RAVDESS_NAME.match(media_key(path.name))
        if not m:
            raise ValueError("file name is not seven two-digit fields like 03-01-05-01-02-01-12")
        modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
        if emotion not in RAVDESS_EMOTIONS:
            raise ValueError(f"unknown label: emotion code {emotion!r} in the 3rd field (expected 01-08)")
        if modality == "02":
            raise ValueError("video-only RAVDESS file (modality 02): no audio")
        return {"label": RAVDESS_EMOTIONS[emotion], "speaker": f"actor{actor}",
                "gender": "male" if int(actor) % 2 else "female", "intensity": "strong" if intensity == "02" else "normal",
                "vocal_channel": "song" if channel == "02" else "speech", "statement": statement}
    return _read_named("ravdess", root, "files like Actor_12/03-01-05-01-02-01-12.wav",
                       list(RAVDESS_EMOTIONS.values()), parse)


# --- the common SER corpora: TESS, CREMA-D, SAVEE, IEMOCAP ----------------------------
TESS_EMOTIONS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                 "neutral": "neutral", "ps": "surprise", "sad": "sadness"}
CREMAD_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral",
                   "SAD": "sadness"}
SAVEE_EMOTIONS = {"a": "anger", "d": "disgust", "f": "fear", "h": "happiness", "n": "neutral", "sa": "sadness",
                  "su": "surprise"}
SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")


def read_tess(root) -> Manifest:
    """TESS (Toronto emotional speech set): `{OAF|YAF}_{word}_{emotion}.wav`, emotions angry,
    disgust, fear, happy, neutral, ps (pleasant surprise), sad; two speakers. Folder names
    vary in case and spelling between copies, so the emotion comes from the file name alone;
    the speaker too, unless the name misspells it (the real set ships OA_bite_neutral.wav in
    OAF_neutral): then the folder's.
    A file whose extension lies about its container still decodes (FFmpeg probes the bytes)."""
    def parse(path, root):
        fields = media_key(path.name).split("_")
        speaker = fields[0].upper()
        if speaker not in ("OAF", "YAF"):  # the real set's one typo, OAF_neutral/OA_bite_neutral.wav: its folder says
            folder = path.parent.name.upper().split("_")[0]
            speaker = folder if folder in ("OAF", "YAF") and len(fields) >= 3 else None
        if len(fields) < 3 or speaker is None:
            raise ValueError("file name is not {OAF|YAF}_{word}_{emotion}")
        emotion = fields[-1].lower()
        if emotion not in TESS_EMOTIONS:
            raise ValueError(f"unknown label {fields[-1]!r} (expected one of {', '.join(TESS_EMOTIONS)})")
        return {"label": TESS_EMOTIONS[emotion], "speaker": speaker, "word": "_".join(fields[1:-1])}
    return _read_named("tess", root, "files like OAF_back_angry.wav", list(dict.fromkeys(TESS_EMOTIONS.values())),
                       parse)


def read_cremad(root) -> Manifest:
    """CREMA-D: `{actor}_{sentence}_{emotion}_{level}.wav` (`1001_DFA_ANG_XX.wav`), emotions
    ANG, DIS, FEA, HAP, NEU, SAD; 91 actors; anywhere under root, any audio container."""
    def parse(path, root):
        fields = media_key(path.name).upper().split("_")
        if len(fields) != 4 or not fields[0].isdigit():
            raise ValueError("file name is not {actor}_{sentence}_{emotion}_{level} like 1001_DFA_ANG_XX")
        if fields[2] not in CREMAD_EMOTIONS:
            raise ValueError(f"unknown label {fields[2]!r} (expected one of {', '.join(CREMAD_EMOTIONS)})")
        return {"label": CREMAD_EMOTIONS[fields[2]], "speaker": fields[0], "sentence": fields[1],
                "level": fields[3]}
    return _read_named("cremad", root, "files like 1001_DFA_ANG_XX.wav", list(CREMAD_EMOTIONS.values()), parse)


def read_savee(root) -> Manifest:
    """SAVEE: `{speaker}_{code}{nn}.wav` (`DC_a01.wav`) or `{speaker}/{code}{nn}.wav`
    (`DC/a01.wav`), codes a, d, f, h, n, sa, su; speakers DC, JE, JK, KL."""
    def parse(path, root):
        stem = path.name.rsplit(".", 1)[0] if "." in path.name else path.name
        speaker, _, rest = stem.partition("_") if "_" in stem else (path.parent.name, "", stem)
        code = rest.rstrip("0123456789").lower()
        if speaker.upper() not in SAVEE_SPEAKERS:
            raise ValueError(f"no SAVEE speaker ({'/'.join(SAVEE_SPEAKERS)}) in the name or folder")
        if code not in SAVEE_EMOTIONS or code == rest.lower():
            raise ValueError(f"unknown label code {code!r} (expected one of {', '.join(SAVEE_EMOTIONS)} and a number)")
        return {"label": SAVEE_EMOTIONS[code], "speaker": speaker.upper()}
    return _read_named("savee", root, "files like DC_a01.wav or DC/a01.wav", list(SAVEE_EMOTIONS.values()), parse)


IEMOCAP_LINE = re.compile(r"^\[(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\]\s+(Ses\d\d[FM]_\S+)\s+(\w+)\s+\[")
IEMOCAP_FOUR = {"ang": "anger", "hap": "happiness", "exc": "happiness", "sad": "sadness", "neu": "neutral"}
IEMOCAP_ALL = {"ang": "anger", "hap": "happiness", "exc": "excitement", "sad": "sadness", "neu": "neutral",
               "fru": "frustration", "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other"}


def read_iemocap(root, four_class: bool = False) -> Manifest:
    """IEMOCAP: the labels of `Session{1-5}/dialog/EmoEvaluation/*.txt` (one line per
    utterance: `[start - end]  Ses01F_impro01_F000  neu  [v, a, d]`), the audio of
    `Session*/sentences/wav/**/<utterance>.wav` (found anywhere under root). The speaker is
    the session and the utterance's own gender (`Ses01F_impro01_M003` → Ses01M), so a
    speaker split keeps each actor whole. `four_class` is the usual 4-class map (excited
    merged into happy; the other labels are listed as outside it); otherwise every label but
    `xxx` (no majority) is a class."""
    root = _require_dir(root, "iemocap", "Session1..5 with dialog/EmoEvaluation/*.txt and sentences/wav/")
    table = IEMOCAP_FOUR if four_class else IEMOCAP_ALL
    problems, items = [], []
    index = index_media(root, problems)
    evaluations = sorted(p for p in root.rglob("*.txt") if p.parent.name == "EmoEvaluation")
    if not evaluations:
        raise InputNotFound(f"IEMOCAP: no Session*/dialog/EmoEvaluation/*.txt under {root}")
    seen = set()
    for txt in evaluations:
        for line_no, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            m = IEMOCAP_LINE.match(line.strip())
            if not m:
                continue
            _, _, utt, code = m.groups()
            if utt in seen:
                continue
            seen.add(utt)
            code = code.lower()
            if code not in table:
                why = ("no majority label (xxx)" if code == "xxx" else
                       f"label {code!r} is outside the 4-class map" if four_class else f"unknown label {code!r}")
                problems.append({"path": str(txt), "line": line_no, "reason": why})
                continue
            found = index.get(utt.lower(), [])
            wav = next((p for p in found if "sentences" in Path(p).parts), found[0] if found else None)
            if wav is None:
                problems.append({"path": str(txt), "line": line_no, "reason": f"media not found: {utt}.wav"})
                continue
            gender = utt.rsplit("_", 1)[-1][:1].upper()
            items.append({"uid": utt, "path": wav, "label": table[code], "split": "", "text": "",
                          "speaker": f"{utt[:5]}{gender}", "session": utt[:5]})
    classes = list(dict.fromkeys(table.values()))
    return _manifest("iemocap", items, problems, classes, sources=evaluations)


def read_folders(root) -> Manifest:
    """One folder per class (`root/<label>/**/*.wav`): the label is the first folder under root,
    spelled as the canonical emotion when it names one (`Angry/` → anger), else as it is."""
    from .labels import canonical

    root = _require_dir(root, "folders", "one folder per class")

    def parse(path, root):
        top = path.relative_to(root).parts
        if len(top) < 2:
            raise ValueError("file at the corpus root; expected one folder per class")
        return {"label": canonical(top[0]) or top[0], "speaker": ""}
    m = _read_named("folders", root, "one folder per class", [], parse)
    m.classes = sorted(m.items["label"].unique()) if len(m.items) else []
    return m


READERS: dict[str, Callable[..., Manifest]] = {
    "meld": read_meld, "shemo": read_shemo, "emodb": read_emodb, "ravdess": read_ravdess,
    "audiomnist": read_audiomnist, "gtzan": read_gtzan, "speakers": read_speakers,
    "tess": read_tess, "cremad": read_cremad, "savee": read_savee, "iemocap": read_iemocap,
    "iemocap4": lambda root: read_iemocap(root, four_class=True), "folders": read_folders,
}


def read_corpus(corpus: str, root, follow_symlinks: bool = False, **kwargs) -> Manifest:
    """The corpus at root through its reader. Symlinks are followed inside root only, unless
    `follow_symlinks` (`data prepare --follow-symlinks`), which the manifest then records."""
    if corpus not in READERS:
        raise BadInput(f"unknown corpus {corpus!r}; choose from {', '.join(READERS)}")
    token = FOLLOW_SYMLINKS.set(follow_symlinks)
    try:
        manifest = READERS[corpus](root, **kwargs)
    finally:
        FOLLOW_SYMLINKS.reset(token)
    if follow_symlinks:
        manifest.options["follow_symlinks"] = True
    return manifest
