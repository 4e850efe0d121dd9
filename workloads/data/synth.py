"""Look-alike corpus generators: each corpus in its exact native layout, deterministic from
a seed, with class-dependent signal a simple classifier can learn, and `--with-faults` to
plant every kind of bad input the pipeline must report.

    python -m workloads.data.synth <corpus> --out DIR --n N --seed S [--with-faults]

Audio is a voiced, speech-like signal synthesized in numpy: a glottal harmonic series whose
pitch level and range, syllable rate, loudness and spectral tilt depend on the class, and
whose pitch, formant and loudness vary by speaker. Every generated folder holds
`_synth.json`: the uids of the good items and each planted fault (kind, path, line), so
tests can check that every good item is kept and every fault reported.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpora import (CREMAD_EMOTIONS, EMODB_LABELS, GTZAN_GENRES, MELD_LABELS, MELD_SPLITS, RAVDESS_EMOTIONS,
                      SAVEE_EMOTIONS, SAVEE_SPEAKERS, SHEMO_LABELS, TESS_EMOTIONS)

MANIFEST_NAME = "_synth.json"


# --- the voice ---------------------------------------------------------------------------
@dataclass
class Voice:
    f0: float  # Hz
    f0_range: float  # relative pitch excursion
    rate: float  # syllables per second
    loudness: float  # peak amplitude
    tilt: float  # harmonic k has amplitude k^-tilt
    formant: float = 600.0  # Hz, the speaker's first resonance


def class_voices(n_classes: int, seed: int) -> list[Voice]:
    """One prosodic profile per class, spread evenly over each dimension in a seeded order so
    every pair of classes differs in several dimensions at once."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, n_classes) if n_classes > 1 else np.array([0.5])
    p = [rng.permutation(grid) for _ in range(5)]
    return [Voice(f0=100 + 160 * p[0][c], f0_range=0.05 + 0.35 * p[1][c], rate=2.0 + 5.0 * p[2][c],
                  loudness=0.15 + 0.45 * p[3][c], tilt=0.6 + 1.6 * p[4][c]) for c in range(n_classes)]


def speaker_traits(rng: np.random.Generator) -> dict:
    return {"f0_scale": float(rng.lognormal(0, 0.08)), "formant": float(rng.uniform(450, 850)),
            "gain": float(rng.lognormal(0, 0.1))}


def synthesize(voice: Voice, speaker: dict, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import lfilter

    n = max(1, int(seconds * sr))
    t = np.arange(n) / sr
    f0 = voice.f0 * speaker["f0_scale"] * rng.lognormal(0, 0.04)
    contour = f0 * (1 + voice.f0_range * np.sin(2 * np.pi * rng.uniform(0.3, 0.9) * t + rng.uniform(0, 6.3)))
    contour *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n)  # slow jitter
    phase = 2 * np.pi * np.cumsum(contour) / sr
    harmonics = np.arange(1, int(min(0.45 * sr, 5000) / contour.max()) + 1)  # voice energy lies below 5 kHz
    wave = (harmonics[:, None] ** -voice.tilt * np.sin(harmonics[:, None] * phase[None, :])).sum(0)
    # a two-pole resonance at the speaker's first formant
    r, theta = 0.97, 2 * np.pi * speaker["formant"] / sr
    wave = 0.5 * wave + 0.5 * lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], wave)
    syllables = 0.5 * (1 - np.cos(2 * np.pi * voice.rate * rng.uniform(0.9, 1.1) * t + rng.uniform(0, 6.3)))
    wave = wave * syllables ** 1.5 + 0.01 * rng.standard_normal(n)
    wave = wave / (np.abs(wave).max() + 1e-9) * voice.loudness * speaker["gain"]
    return np.clip(wave, -0.99, 0.99).astype(np.float32)


# --- writers -----------------------------------------------------------------------------
def write_wav(path: Path, wave: np.ndarray, sr: int, channels: int = 1) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data, sr, subtype="PCM_16", format="WAV")


def encode_media(path: Path, wave: np.ndarray | None, sr: int, container: str = "mp4",
                 audio_codec: str = "aac", video: bool = True, channels: int = 2, seconds: float | None = None) -> None:
    """A real container through FFmpeg (PyAV): optional small H.264 video track and an audio
    track (AAC in mp4 by default; any codec the container takes)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = seconds if seconds is not None else len(wave) / sr
    with av.open(str(path), mode="w", format=container) as out:
        vstream = astream = None
        if video:
            vstream = out.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        if wave is not None:
            # the native vorbis encoder is flagged experimental by FFmpeg
            astream = out.add_stream(audio_codec, rate=sr, options={"strict": "experimental"})
            astream.layout = "stereo" if channels == 2 else "mono"
        if vstream is not None:
            for i in range(max(1, int(seconds * 10))):
                img = np.full((48, 64, 3), (i * 7) % 255, dtype=np.uint8)
                for packet in vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        if astream is not None:
            fmt = astream.codec_context.format.name
            frame_size = astream.codec_context.frame_size or 1024
            layout = astream.layout.name
            dtype, scale = _SAMPLE_FORMATS[fmt.rstrip("p")]
            pcm = (np.repeat(wave[None, :], channels, axis=0) * scale).astype(dtype)
            for start in range(0, pcm.shape[1], frame_size):
                chunk = np.ascontiguousarray(pcm[:, start:start + frame_size])
                if not fmt.endswith("p"):  # packed: channels interleaved in one plane
                    chunk = chunk.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout=layout)
                frame.sample_rate = sr
                frame.pts = start
                for packet in astream.encode(frame):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)


_SAMPLE_FORMATS = {"flt": (np.float32, 1.0), "dbl": (np.float64, 1.0), "s16": (np.int16, 32767.0),
                   "s32": (np.int32, 2147483647.0)}


# --- faults ------------------------------------------------------------------------------
class Faults:
    """Plants bad inputs and records each one for the tests."""

    def __init__(self, out: Path):
        self.out, self.planted = out, []

    def add(self, kind: str, path: Path, line: int = 0):
        self.planted.append({"kind": kind, "path": str(path), "line": line})

    def unreadable(self, path: Path, rng):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(2048))
        self.add("unreadable", path)

    def zero_bytes(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        self.add("unreadable", path)

    def no_audio_stream(self, path: Path):
        encode_media(path, None, 16000, video=True, seconds=1.0)
        self.add("no audio stream", path)

    def empty_audio(self, path: Path):
        write_wav(path, np.zeros(0, np.float32), 16000)
        self.add("empty audio", path)

    def silent(self, path: Path, sr: int):
        write_wav(path, np.zeros(sr, np.float32), sr)
        self.add("silent audio", path)


def _write_manifest(out: Path, corpus: str, seed: int, good: list, faults: Faults, **extra):
    (out / MANIFEST_NAME).write_text(json.dumps(
        {"corpus": corpus, "seed": seed, "good": sorted(good), "faults": faults.planted, **extra}, indent=1))


def _class_sizes(n: int, weights) -> list[int]:
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    sizes = np.maximum(1, np.floor(w * n)).astype(int)
    for i in np.argsort(-(w * n - np.floor(w * n)))[: max(0, n - sizes.sum())]:
        sizes[i] += 1
    return sizes.tolist()


def _uttered(rng, classes, weights, n):
    labels = np.repeat(np.arange(len(classes)), _class_sizes(n, weights))[:n]
    return rng.permutation(labels)


# --- corpora -----------------------------------------------------------------------------
def _file_corpus(out: Path, corpus: str, seed: int, n: int, with_faults: bool, classes, weights, n_speakers: int,
                 sr: int, seconds, name_of, misnamed: str, uid_root: str = "", corrupt: tuple = ()) -> None:
    """The body of every corpus labelled by file or folder name: name_of(label index,
    speaker, counter) → relative path. With faults, plants the five bad media under names
    of the corpus and one good clip under `misnamed`, a name the reader cannot label.
    `corrupt`: relative paths that are always written unreadable, as in the real release
    (GTZAN's jazz.00054.wav). Uids are paths relative to `uid_root` (the folder the reader
    takes as the root)."""
    rng = np.random.default_rng(seed)
    voices = class_voices(len(classes), seed + 1)
    speakers = [speaker_traits(rng) for _ in range(n_speakers)]
    good, counters = [], {}
    for i, c in enumerate(_uttered(rng, classes, weights, n)):
        spk = i % n_speakers
        k = counters[(c, spk)] = counters.get((c, spk), 0) + 1
        rel = name_of(int(c), spk, k)
        dur = rng.uniform(*seconds) if isinstance(seconds, tuple) else seconds
        write_wav(out / rel, synthesize(voices[c], speakers[spk], dur, sr, rng), sr)
        good.append(os.path.relpath(rel, uid_root) if uid_root else rel)
    faults = Faults(out)
    for rel in corrupt:
        faults.unreadable(out / rel, rng)
        uid = os.path.relpath(rel, uid_root) if uid_root else rel
        good = [g for g in good if g != uid]
    if with_faults:
        def spare() -> Path:
            return out / name_of(0, 0, 900 + len(faults.planted))
        faults.unreadable(spare(), rng)
        faults.zero_bytes(spare())
        faults.no_audio_stream(spare())
        faults.empty_audio(spare())
        faults.silent(spare(), sr)
        write_wav(out / misnamed, synthesize(voices[0], speakers[0], 1.0, sr, rng), sr)
        faults.add("unknown label", out / misnamed)
    _write_manifest(out, corpus, seed, good, faults)


def gen_shemo(out: Path, n: int, seed: int, with_faults: bool):
    letters = list(SHEMO_LABELS)
    # ShEMO is dominated by anger and neutral; fear is rare
    weights = {"A": 1059, "H": 201, "N": 1028, "S": 449, "W": 225, "F": 38}
    n_spk = max(4, min(87, n // 12))
    genders = ["F" if s % 2 else "M" for s in range(n_spk)]

    def name(c, spk, k):
        g = genders[spk]
        return f"{'female' if g == 'F' else 'male'}/{g}{spk + 1:02d}{letters[c]}{k:02d}.wav"
    _file_corpus(out, "shemo", seed, n, with_faults, letters, [weights[x] for x in letters], n_spk, 44100,
                 (0.8, 2.0), name, misnamed="female/F01X01.wav")


def gen_emodb(out: Path, n: int, seed: int, with_faults: bool):
    letters = list(EMODB_LABELS)
    weights = [127, 81, 46, 69, 71, 62, 79]  # W L E A F T N, as in EmoDB's 535 files
    speakers = ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
    texts = ["a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10"]

    def name(c, spk, k):
        version = "abcdefghijklmnopqrstuvwxyz"[(k - 1) // len(texts) % 26]
        return f"wav/{speakers[spk]}{texts[(k - 1) % len(texts)]}{letters[c]}{version}.wav" if k < 900 else \
            f"wav/{speakers[spk]}x{k % 100:02d}{letters[c]}a.wav"  # planted faults: the label letter stays 6th
    _file_corpus(out, "emodb", seed, n, with_faults, letters, weights, len(speakers), 16000, (1.0, 2.5), name,
                 misnamed="wav/03a01Qa.wav")


def gen_audiomnist(out: Path, n: int, seed: int, with_faults: bool):
    def name(c, spk, k):
        return f"data/{spk + 1:02d}/{c}_{spk + 1:02d}_{k - 1}.wav"
    _file_corpus(out, "audiomnist", seed, n, with_faults, list(range(10)), [1] * 10, max(3, min(60, n // 50)),
                 48000, (0.4, 0.8), name, misnamed="data/01/one_01_0.wav")


def gen_gtzan(out: Path, n: int, seed: int, with_faults: bool, seconds: float = 3.0, corrupt_file: bool = False):
    """GTZAN's layout; with corrupt_file, its one corrupt file (jazz.00054.wav) in place, as in
    the real archive."""
    def name(c, spk, k):
        return f"genres_original/{GTZAN_GENRES[c]}/{GTZAN_GENRES[c]}.{k - 1:05d}.wav"
    _file_corpus(out, "gtzan", seed, n, with_faults, GTZAN_GENRES, [1] * 10, 1, 22050, seconds, name,
                 misnamed="genres_original/stray.wav", uid_root="genres_original",
                 corrupt=("genres_original/jazz/jazz.00054.wav",) if corrupt_file else ())


def gen_speakers(out: Path, n: int, seed: int, with_faults: bool, n_speakers: int = 5):
    names = [f"speaker_{i + 1}" for i in range(n_speakers)]

    def name(c, spk, k):
        return f"{names[c]}/{k - 1:04d}.wav"
    # the label is the speaker: the class profile is the person's voice
    _file_corpus(out, "speakers", seed, n, with_faults, names, [1] * n_speakers, 1, 16000, 1.0, name,
                 misnamed="stray.wav")


def gen_ravdess(out: Path, n: int, seed: int, with_faults: bool, difficulty: float = 0.5):
    """RAVDESS speech: `Actor_NN/03-01-EE-II-SS-RR-NN.wav`, 8 emotions (neutral half as often).

    `difficulty` in [0, 1] decides how much of a clip carries its class: at 0 the whole clip
    is spoken in the class's voice; at d the class voice is a burst covering (1 - d) of the
    clip (at least 0.3 s), at a random place, inside speech in a voice shared by all classes,
    and the class voices are pulled d/2 of the way towards each other. So mean pooling dilutes
    the cue as d grows while max or attention pooling can find it, and poolings differ."""
    if not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    codes = list(RAVDESS_EMOTIONS)
    weights = [1 if c == "01" else 2 for c in codes]
    n_actors = max(4, min(24, n // 16))
    rng = np.random.default_rng(seed)
    voices = class_voices(len(codes), seed + 1)
    shared = Voice(f0=180, f0_range=0.2, rate=4.5, loudness=0.35, tilt=1.4)
    pull = difficulty / 2
    voices = [Voice(**{f: getattr(v, f) + pull * (getattr(shared, f) - getattr(v, f))
                       for f in ("f0", "f0_range", "rate", "loudness", "tilt", "formant")}) for v in voices]
    actors = [speaker_traits(rng) for _ in range(n_actors)]
    sr, good, counters = 16000, [], {}
    for i, c in enumerate(_uttered(rng, codes, weights, n)):
        actor = i % n_actors
        k = counters[(c, actor)] = counters.get((c, actor), 0)
        counters[(c, actor)] += 1
        fields = ["03", "01", codes[c], f"{k % 2 + 1:02d}", f"{k // 2 % 2 + 1:02d}", f"{k // 4 % 2 + 1:02d}",
                  f"{actor + 1:02d}"]
        if k >= 8:  # more clips per actor and class than RAVDESS has: extend the repetition field
            fields[5] = f"{k // 4 + 1:02d}"
        rel = f"Actor_{actor + 1:02d}/{'-'.join(fields)}.wav"
        dur = rng.uniform(2.5, 4.0)
        burst = dur if difficulty == 0 else max(0.3, (1 - difficulty) * dur)
        wave = synthesize(shared, actors[actor], dur, sr, rng) if burst < dur else np.zeros(int(dur * sr), np.float32)
        cue = synthesize(voices[c], actors[actor], burst, sr, rng)
        start = int(rng.uniform(0, dur - burst) * sr) if burst < dur else 0
        ramp = np.minimum(1, np.minimum(np.arange(len(cue)), np.arange(len(cue))[::-1]) / (0.02 * sr))
        seg = wave[start:start + len(cue)]
        wave[start:start + len(cue)] = seg * (1 - ramp[:len(seg)]) + cue[:len(seg)] * ramp[:len(seg)]
        write_wav(out / rel, wave, sr)
        good.append(rel)
    faults = Faults(out)
    if with_faults:
        def spare(j: int) -> Path:
            return out / f"Actor_01/03-01-01-01-01-{90 + j:02d}-01.wav"
        faults.unreadable(spare(0), rng)
        faults.zero_bytes(spare(1))
        faults.no_audio_stream(spare(2))
        faults.empty_audio(spare(3))
        faults.silent(spare(4), sr)
        write_wav(out / "Actor_01/03-01-09-01-01-01-01.wav", synthesize(shared, actors[0], 1.0, sr, rng), sr)
        faults.add("unknown label", out / "Actor_01/03-01-09-01-01-01-01.wav")
    _write_manifest(out, "ravdess", seed, good, faults, difficulty=difficulty)


MELD_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_CUES = {
    "anger": ["furious", "angry"], "disgust": ["gross", "disgusting"], "fear": ["scared", "afraid"],
    "joy": ["great", "wonderful"], "neutral": ["okay", "fine"], "sadness": ["sad", "lonely"],
    "surprise": ["wow", "unbelievable"],
}
MELD_FILLER = "so I think we should just go to the coffee place and talk about it with Ross later today".split()
MELD_SPEAKERS = ["Chandler", "Joey", "Monica", "Phoebe", "Rachel", "Ross"]
MELD_WEIGHTS = [1109, 271, 268, 1743, 4710, 683, 1205]  # real train distribution
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
               "Season", "Episode", "StartTime", "EndTime"]


# Pairs one modality cannot tell apart, in the look-alike's hard setting: the other one can.
MELD_TEXT_TWINS = [("anger", "disgust"), ("fear", "sadness")]  # share their cue words
MELD_AUDIO_TWINS = [("fear", "surprise"), ("joy", "neutral")]  # share their voice


def _twin_map(classes: list, twins) -> list[int]:
    """Class index → the index whose cue it uses (the first of its twin pair, else itself)."""
    first = {b: a for a, b in twins}
    return [classes.index(first.get(c, c)) for c in classes]


def gen_meld(out: Path, n: int, seed: int, with_faults: bool, difficulty: float = 0.0):
    """MELD.Raw look-alike: the three CSVs and real mp4s (H.264 video + AAC stereo 48 kHz) in
    the official split folders, with the layout's quirks: nested folders, upper-case
    extensions and doubled suffixes (`.mp4.wav`).

    `difficulty` d in [0, 1] splits the class signal between the modalities. At 0 every
    transcript carries a cue word of its class and every clip is spoken in its class's voice.
    At d > 0 a transcript has its cue word with probability 1 − d and a clip its class voice
    with probability 1 − d/2 (else a voice shared by all classes), the class voices are pulled
    d/2 of the way towards the shared one, and two pairs of classes share their cue words
    (MELD_TEXT_TWINS) while two other pairs share their voice (MELD_AUDIO_TWINS). So text
    alone and audio alone each fall well short, and a fusion that reads both does better."""
    if not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    rng = np.random.default_rng(seed)
    voices = class_voices(len(MELD_LABELS), seed + 1)
    shared = Voice(f0=180, f0_range=0.2, rate=4.5, loudness=0.35, tilt=1.4)
    text_cue = list(range(len(MELD_LABELS)))
    audio_cue = list(range(len(MELD_LABELS)))
    if difficulty > 0:
        pull = difficulty / 2
        voices = [Voice(**{f: getattr(v, f) + pull * (getattr(shared, f) - getattr(v, f))
                           for f in ("f0", "f0_range", "rate", "loudness", "tilt", "formant")}) for v in voices]
        text_cue, audio_cue = _twin_map(MELD_LABELS, MELD_TEXT_TWINS), _twin_map(MELD_LABELS, MELD_AUDIO_TWINS)
    speakers = {s: speaker_traits(rng) for s in MELD_SPEAKERS}
    sizes = dict(zip(MELD_SPLITS, _class_sizes(n, [0.72, 0.09, 0.19])))
    good, faults, serial = [], Faults(out), 0
    for split, size in sizes.items():
        split_name = MELD_SPLITS[split]
        rows, labels = [], _uttered(rng, MELD_LABELS, MELD_WEIGHTS, size)
        for i, c in enumerate(labels):
            label, dia, utt = MELD_LABELS[c], i // 4, i % 4
            speaker = MELD_SPEAKERS[int(rng.integers(len(MELD_SPEAKERS)))]
            words = list(rng.choice(MELD_FILLER, size=int(rng.integers(3, 9))))
            if rng.uniform() >= difficulty:
                words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(MELD_CUES[MELD_LABELS[text_cue[c]]])))
            serial += 1
            rows.append([serial, " ".join(words).capitalize() + ".", speaker, label, "neutral", dia, utt, 1, 1,
                         "00:00:01,000", "00:00:03,000"])
            base = f"dia{dia}_utt{utt}"
            folder = out / MELD_FOLDERS[split]
            quirk = i % 20
            voice = voices[audio_cue[c]] if rng.uniform() >= difficulty / 2 else shared
            wave = synthesize(voice, speakers[speaker], rng.uniform(1.0, 2.5), 48000, rng)
            if quirk == 7:  # doubled suffix, audio already extracted to wav
                write_wav(folder / f"{base}.mp4.wav", wave, 48000, channels=2)
            else:
                name = f"{base}.MP4" if quirk == 11 else f"{base}.mp4"
                target = folder / "nested" / name if quirk == 13 else folder / name
                encode_media(target, wave, 48000)
            good.append(f"{split_name}/{base}")
        first_fault_row = len(rows)
        if with_faults and split == "train":
            dia = len(rows) // 4 + 1
            plant = [("unreadable", 0), ("unreadable0", 1), ("no audio stream", 2), ("empty audio", 3),
                     ("silent audio", 4), ("unknown label", 5), ("not valid UTF-8", 6), ("missing media", 7)]
            for kind, utt in plant:
                serial += 1
                label = "confused" if kind == "unknown label" else "joy"
                text = "Great, I know" if kind != "not valid UTF-8" else "Great \udcff\udcfe here"
                rows.append([serial, text, "Ross", label, "positive", dia, utt, 1, 1, "00:00:01,000", "00:00:02,000"])
                path = out / MELD_FOLDERS[split] / f"dia{dia}_utt{utt}.mp4"
                if kind == "unreadable":
                    faults.unreadable(path, rng)
                elif kind == "unreadable0":
                    faults.zero_bytes(path)
                elif kind == "no audio stream":
                    faults.no_audio_stream(path)
                elif kind == "empty audio":
                    faults.empty_audio(path.with_suffix(".mp4.wav"))
                elif kind == "silent audio":
                    faults.silent(path.with_suffix(".mp4.wav"), 48000)
                else:  # problems found by the reader in the CSV: the row's first line (header = line 1)
                    if kind in ("unknown label", "not valid UTF-8"):
                        encode_media(path, synthesize(voices[0], speakers["Ross"], 1.0, 48000, rng), 48000)
                    faults.add(kind, out / f"{split}_sent_emo.csv", line=first_fault_row + utt + 2)
        _write_meld_csv(out / f"{split}_sent_emo.csv", rows)
    _write_manifest(out, "meld", seed, good, faults, difficulty=difficulty)


def _write_meld_csv(path: Path, rows: list) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(MELD_HEADER)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode("utf-8", errors="surrogateescape"))


# --- FER2013 ----------------------------------------------------------------------------
FER_TRAIN_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]  # the real training set: disgust is rare
# per class: mouth curve (+ smile, − frown), mouth openness, brow tilt (+ inner ends down,
# as in anger), brow height, eye openness
FER_EXPRESSIONS = [
    (-0.25, 0.10, 0.9, -0.10, 0.65),  # angry
    (-0.55, 0.05, 0.4, -0.05, 0.45),  # disgust
    (-0.05, 0.55, -0.7, 0.30, 1.45),  # fear
    (0.85, 0.25, 0.0, 0.05, 0.85),  # happy
    (-0.75, 0.00, -0.8, 0.10, 0.75),  # sad
    (0.00, 0.95, 0.0, 0.55, 1.60),  # surprise
    (0.00, 0.00, 0.0, 0.00, 1.00),  # neutral
]


def draw_face(expression: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A 48×48 grey face: the expression sets mouth curve and openness, brow angle and eye
    openness; identity (face shape, skin tone, feature spacing), pose (tilt, shift, scale),
    lighting (a gradient) and noise vary per image."""
    curve, open_, brow_tilt, brow_up, eye_open = (v + rng.normal(0, 0.12) for v in FER_EXPRESSIONS[expression])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.normal(0, 2), size / 2 + rng.normal(0, 2)
    scale = rng.uniform(0.85, 1.1)
    angle = rng.normal(0, 0.12)
    x = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / scale  # face coordinates
    y = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / scale
    background = rng.uniform(20, 120)
    skin = rng.uniform(120, 220)
    img = np.full((size, size), background, np.float32)
    face_w, face_h = rng.uniform(15, 19), rng.uniform(19, 23)
    img[(x / face_w) ** 2 + (y / face_h) ** 2 <= 1] = skin
    dark = skin * rng.uniform(0.2, 0.45)
    eye_dx, eye_y = rng.uniform(6, 8), rng.uniform(-6, -4)
    eye_h = 1.6 * max(eye_open, 0.2)
    for side in (-1, 1):
        img[((x - side * eye_dx) / 2.8) ** 2 + ((y - eye_y) / eye_h) ** 2 <= 1] = dark
        # brow: a thick segment above the eye; tilt lowers its inner end
        t = (x - side * eye_dx) * side / 8 + 0.5  # 0 at the inner end, 1 at the outer end
        by = eye_y - 4.5 - 2.5 * brow_up + brow_tilt * 3.0 * (0.5 - t)
        img[(t >= 0) & (t <= 1) & (np.abs(y - by) < 0.9)] = dark
    mouth_y, mouth_w = rng.uniform(8, 10), rng.uniform(5, 7)
    u = x / mouth_w
    centre = mouth_y - curve * 3.0 * (u ** 2 - 0.5)
    inside = np.abs(u) <= 1
    img[inside & (np.abs(y - centre) < 0.9)] = dark
    if open_ > 0.15:  # an open mouth: a dark ellipse under the lip line
        img[(u ** 2 + ((y - centre - open_ * 2.2) / (open_ * 2.6)) ** 2) <= 1] = dark * 0.6
    img *= 1 + rng.uniform(-0.25, 0.25) * (xx - size / 2) / size  # light from one side
    img += rng.normal(0, rng.uniform(3, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def gen_fer2013(out: Path, n: int, seed: int, with_faults: bool):
    """`fer2013.csv` with the real class imbalance and the real Usage proportions
    (Training 80%, PublicTest 10%, PrivateTest 10%)."""
    rng = np.random.default_rng(seed)
    labels = _uttered(rng, range(7), FER_TRAIN_COUNTS, n)
    usage = rng.permutation(np.repeat(["Training", "PublicTest", "PrivateTest"], _class_sizes(n, [0.8, 0.1, 0.1])))
    lines = ["emotion,pixels,Usage"]
    for c, u in zip(labels, usage):
        lines.append(f"{c},{' '.join(map(str, draw_face(int(c), rng).ravel()))},{u}")
    good = [f"L{i + 2}" for i in range(n)]
    faults = Faults(out)
    if with_faults:
        pixels = " ".join(map(str, draw_face(3, rng).ravel()))
        bad_rows = [
            ("wrong pixel count", f"3,{' '.join(pixels.split()[:2000])},Training"),
            ("non-numeric pixel", f"3,{pixels.replace(' ', ' x', 1)},Training"),
            ("unknown label", f"9,{pixels},Training"),
            ("unknown usage", f"3,{pixels},Validation"),
        ]
        for kind, row in bad_rows:
            at = int(rng.integers(1, len(lines)))  # anywhere among the good rows
            lines.insert(at, row)
        # line numbers after all insertions: find each bad row again
        good_lines, bad = [], {row: kind for kind, row in bad_rows}
        for i, line in enumerate(lines[1:], start=2):
            if line in bad:
                faults.add(bad[line], out / "fer2013.csv", line=i)
            else:
                good_lines.append(f"L{i}")
        good = good_lines
    (out / "fer2013.csv").write_text("\n".join(lines) + "\n")
    _write_manifest(out, "fer2013", seed, good, faults)

def gen_tess(out: Path, n: int, seed: int, with_faults: bool):
    """TESS: two speakers (OAF, YAF), 7 emotions in equal numbers, `OAF_back_angry.wav`. The
    real release's folder names vary in case and spelling (`OAF_Pleasant_surprise`,
    `YAF_pleasant_surprised`); so do these, and one file is an AIFF named `.wav`."""
    emotions = list(TESS_EMOTIONS)
    words = ["back", "bar", "base", "bath", "bean", "beg", "bite", "boat", "bone", "book", "bought", "burn"]
    folders = {"ps": ["Pleasant_surprise", "pleasant_surprised"], "angry": ["angry", "Angry"]}
    speakers = ["OAF", "YAF"]

    def name(c, spk, k):
        e = emotions[c]
        folder = folders.get(e, [e, e.capitalize()])[spk]
        word = words[(k - 1) % len(words)] + ("" if k <= len(words) else str((k - 1) // len(words)))
        return f"TESS Toronto emotional speech set data/{speakers[spk]}_{folder}/{speakers[spk]}_{word}_{e}.wav"
    _file_corpus(out, "tess", seed, n, with_faults, emotions, [1] * len(emotions), 2, 24414, (1.0, 2.0), name,
                 misnamed="TESS Toronto emotional speech set data/OAF_angry/OAF_back_furious.wav")
    import soundfile as sf

    first = out / sorted(load_manifest(out)["good"])[0]  # an AIFF under a .wav name: FFmpeg probes the bytes
    wave, sr = sf.read(first, dtype="float32")
    sf.write(first, wave, sr, format="AIFF")


def gen_cremad(out: Path, n: int, seed: int, with_faults: bool, seconds: tuple = (1.2, 2.5)):
    """CREMA-D: `AudioWAV/1001_DFA_ANG_XX.wav`, 6 emotions (neutral a little rarer), 91 actors
    at most, four intensity levels; a layout that grows to any size (bench/scale.py).
    `seconds`: the clips' range of lengths."""
    codes = list(CREMAD_EMOTIONS)
    sentences = ["IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"]
    levels = ["LO", "MD", "HI", "XX"]
    n_actors = max(4, min(91, n // 12))

    def name(c, spk, k):
        return (f"AudioWAV/{1001 + spk}_{sentences[(k - 1) % len(sentences)]}_{codes[c]}_"
                f"{levels[(k - 1) // len(sentences) % 4]}{'' if k <= 48 else k}.wav")
    _file_corpus(out, "cremad", seed, n, with_faults, codes, [1271, 1271, 1271, 1271, 1087, 1271], n_actors, 16000,
                 tuple(seconds), name, misnamed="AudioWAV/1001_DFA_XYZ_XX.wav")


def gen_savee(out: Path, n: int, seed: int, with_faults: bool):
    """SAVEE: four male speakers (DC, JE, JK, KL), codes a d f h n sa su (neutral twice as
    often), half in `AudioData/DC/a01.wav` folders and half flat as `ALL/DC_a01.wav`, as the
    two common copies ship it."""
    codes = list(SAVEE_EMOTIONS)
    speakers = list(SAVEE_SPEAKERS)

    def name(c, spk, k):
        if k % 2:
            return f"AudioData/{speakers[spk]}/{codes[c]}{k:02d}.wav"
        return f"ALL/{speakers[spk]}_{codes[c]}{k:02d}.wav"
    _file_corpus(out, "savee", seed, n, with_faults, codes, [1, 1, 1, 1, 2, 1, 1], 4, 44100, (1.5, 3.0), name,
                 misnamed="ALL/DC_x01.wav")


def gen_iemocap(out: Path, n: int, seed: int, with_faults: bool):
    """IEMOCAP: `Session{1-5}/dialog/EmoEvaluation/Ses0NX_{impro|script}NN.txt` (one line per
    utterance with its majority label, including xxx and the labels outside the 4-class map)
    and `Session{1-5}/sentences/wav/<dialog>/<utterance>.wav`. Each session has two actors, F
    and M; an utterance's last part says who speaks."""
    codes = ["neu", "fru", "ang", "sad", "hap", "exc", "sur", "fea", "xxx"]
    weights = [1708, 1849, 1103, 1084, 595, 1041, 107, 40, 2507]
    rng = np.random.default_rng(seed)
    voices = class_voices(len(codes), seed + 1)
    actors = {(s, g): speaker_traits(rng) for s in range(1, 6) for g in "FM"}
    sr, good, lines, counters = 16000, [], {}, {}
    for i, c in enumerate(_uttered(rng, codes, weights, n)):
        session, gender = i % 5 + 1, "FM"[i // 5 % 2]
        dialog = f"Ses{session:02d}{'FM'[i // 10 % 2]}_{'impro' if i % 3 else 'script'}{i // 30 % 4 + 1:02d}"
        k = counters[(dialog, gender)] = counters.get((dialog, gender), -1) + 1
        utt = f"{dialog}_{gender}{k:03d}"
        dur = rng.uniform(1.0, 3.0)
        write_wav(out / f"Session{session}/sentences/wav/{dialog}/{utt}.wav",
                  synthesize(voices[c], actors[(session, gender)], dur, sr, rng), sr)
        start = 0.5 + 4 * k
        lines.setdefault((session, dialog), []).append(
            f"[{start:.4f} - {start + dur:.4f}]\t{utt}\t{codes[c]}\t[2.5000, 2.5000, 2.5000]")
        if codes[c] != "xxx":
            good.append(utt)
    faults = Faults(out)
    for (session, dialog), rows in lines.items():
        path = out / f"Session{session}/dialog/EmoEvaluation/{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        path.write_text(body + "".join(f"{r}\nC-E1:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom 2;\t()\n\n"
                                       for r in rows))
    if with_faults:  # a labelled utterance whose audio is missing
        path = out / "Session1/dialog/EmoEvaluation/Ses01F_impro99.txt"
        path.write_text("[1.0000 - 2.0000]\tSes01F_impro99_F000\tneu\t[2.5000, 2.5000, 2.5000]\n")
        faults.add("missing media", path)
    _write_manifest(out, "iemocap", seed, good, faults)


GENERATORS = {"meld": gen_meld, "shemo": gen_shemo, "emodb": gen_emodb, "audiomnist": gen_audiomnist,
              "gtzan": gen_gtzan, "speakers": gen_speakers, "fer2013": gen_fer2013, "ravdess": gen_ravdess,
              "tess": gen_tess, "cremad": gen_cremad, "savee": gen_savee, "iemocap": gen_iemocap}


def generate(corpus: str, out, n: int, seed: int = 0, with_faults: bool = False, **options) -> Path:
    """Write a look-alike of `corpus` into the new folder `out`. `options` go to the
    generator (ravdess and meld: difficulty)."""
    if corpus not in GENERATORS:
        raise ValueError(f"unknown corpus {corpus!r}; choose from {', '.join(GENERATORS)}")
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; generate into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    GENERATORS[corpus](out, n, seed, with_faults, **options)
    return out


def ensure_generated(root: Path, corpus: str, n: int, seed: int, **options) -> Path:
    """The look-alike of `corpus` for (n, seed, options) under root, generated once: into a
    temporary folder renamed when complete, so a run cut short never leaves half a corpus."""
    from ..core.paths import publish_folder

    suffix = "".join(f"-{k[0]}{v}" for k, v in sorted(options.items()))
    target = Path(root) / f"{corpus}-synth-n{n}-s{seed}{suffix}"

    def build(tmp: Path) -> None:
        print(f"[emosweep] generating a {corpus} look-alike ({n} items, seed {seed}"
              + "".join(f", {k} {v}" for k, v in options.items()) + f") in {target}", flush=True)
        generate(corpus, tmp, n, seed, **options)

    return publish_folder(target, build, MANIFEST_NAME)


def corpus_source(config: dict, corpus: str, given: str | None, unit: str = "clips", **options) -> tuple[str, str]:
    """A study's corpus as (folder, the source line its reports print): `given` when set, else
    the look-alike of (synth_n, seed, the generator's options) under $EMOSWEEP_HOME/data,
    generated once."""
    from ..core.paths import emosweep_home
    from .corpora import DISPLAY_NAMES

    if given:
        return os.path.abspath(given), os.path.abspath(given)
    n, seed = int(config["synth_n"]), int(config["seed"])
    root = ensure_generated(emosweep_home() / "data", corpus, n, seed, **options)
    knobs = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in options.items())
    return str(root), f"generated {DISPLAY_NAMES.get(corpus, corpus)} look-alike, {n} {unit}{knobs}, seed {seed}"


def study_corpus(config: dict, corpus: str, unit: str) -> dict:
    """S1's and S2's corpus: config["data_dir"], else the look-alike of synth_difficulty. Sets
    data_dir and data_source."""
    config["data_dir"], config["data_source"] = corpus_source(config, corpus, config.get("data_dir"), unit,
                                                              difficulty=float(config["synth_difficulty"]))
    return config


def load_manifest(out) -> dict:
    return json.loads((Path(out) / MANIFEST_NAME).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workloads.data.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", choices=sorted(GENERATORS))
    parser.add_argument("--out", required=True, help="new folder for the corpus")
    parser.add_argument("--n", type=int, default=200, help="number of good items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-faults", action="store_true", help="also plant each kind of bad input")
    parser.add_argument("--difficulty", type=float,
                        help="ravdess, meld: how much of the class signal is withheld, 0-1 (see the generator)")
    args = parser.parse_args(argv)
    options = {} if args.difficulty is None else {"difficulty": args.difficulty}
    try:
        out = generate(args.corpus, args.out, args.n, args.seed, args.with_faults, **options)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    info = load_manifest(out)
    print(f"{args.corpus}: {len(info['good'])} items and {len(info['faults'])} planted faults in {out} "
          f"(seed {args.seed}; list in {os.path.join(str(out), MANIFEST_NAME)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
