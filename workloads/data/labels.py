"""One name per emotion, whatever a corpus calls it: so that a manifest's labels, EmoBox's
(`Angry`, `Surprised`), CREMA-D's codes (`ANG`), TESS's `ps` and RAVDESS's `fearful` all mean
the same class, and two corpora can be compared on the classes they share."""
from __future__ import annotations

# canonical names: anger, boredom, calm, contempt, disgust, excitement, fear, frustration,
# happiness, neutral, other, sadness, surprise
CANONICAL = {
    "anger": "anger", "angry": "anger", "ang": "anger", "mad": "anger",
    "happiness": "happiness", "happy": "happiness", "hap": "happiness", "joy": "happiness",
    "sadness": "sadness", "sad": "sadness",
    "fear": "fear", "fearful": "fear", "fea": "fear", "afraid": "fear",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise",
    "ps": "surprise", "pleasant_surprise": "surprise", "pleasant surprise": "surprise",
    "pleasant_surprised": "surprise",
    "neutral": "neutral", "neu": "neutral",
    "calm": "calm",
    "boredom": "boredom", "bored": "boredom",
    "contempt": "contempt",
    "excited": "excitement", "excitement": "excitement", "exc": "excitement",
    "frustration": "frustration", "frustrated": "frustration", "fru": "frustration",
    "other": "other", "oth": "other", "xxx": "other",
}
# Corpus-specific codes (single letters mean different things in different corpora: EmoDB's
# A is Angst, fear; SAVEE's a is anger) live in each reader, never here.


def canonical(label) -> str | None:
    """The canonical emotion for a corpus's spelling of it (case, spaces and dashes ignored),
    or None when the spelling is not known."""
    if label is None:
        return None
    key = str(label).strip().lower().replace("-", "_")
    return CANONICAL.get(key) or CANONICAL.get(key.replace("_", " "))


def spelled(label) -> str:
    """A label in the canonical spelling when it names an emotion, else as it is."""
    return canonical(label) or label


def shared_classes(train: list[str], test: list[str]) -> list[str]:
    """The classes a model trained on `train`'s classes and tested on `test`'s can be scored on,
    in `train`'s order."""
    theirs = set(test)
    return [c for c in train if c in theirs]
