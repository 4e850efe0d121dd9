"""FFmpeg decoding (PyAV) of real containers written by FFmpeg's own encoders: every
container and layout becomes mono float32 at 16 kHz with the right length and pitch, and
every kind of bad file raises MediaError with a stable reason."""
from __future__ import annotations

import numpy as np
import pytest

from workloads.data.audio import MediaError, decode_audio, fit_length
from workloads.data.synth import encode_media, write_wav

TONE = 440.0


def tone(seconds: float, sr: int) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * TONE * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def dominant_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize("fmt", [
    # name, how to write it, source rate, channels
    ("mp4-h264-aac-stereo-48k", "mp4", "aac", 48000, 2, True),
    ("wav-stereo-44k1", "wav", None, 44100, 2, False),
    ("flac-mono-22k05", "flac", "flac", 22050, 1, False),
    ("ogg-vorbis-stereo-44k1", "ogg", "vorbis", 44100, 2, False),
    ("mp3-mono-24k", "mp3", "libmp3lame", 24000, 1, False),
], ids=lambda f: f[0])
def test_any_container_becomes_mono_float32_at_16k(tmp_path, fmt):
    name, container, codec, sr, channels, video = fmt
    path = tmp_path / f"clip.{container}"
    seconds = 1.5
    if container == "wav":
        write_wav(path, tone(seconds, sr), sr, channels=channels)
    else:
        encode_media(path, tone(seconds, sr), sr, container=container, audio_codec=codec, video=video,
                     channels=channels)
    wave = decode_audio(str(path))
    assert wave.dtype == np.float32 and wave.ndim == 1
    # codecs add priming/padding samples; the length is the clip's within 0.1 s
    assert abs(len(wave) - seconds * 16000) < 0.1 * 16000, len(wave)
    assert abs(dominant_hz(wave, 16000) - TONE) < 5
    assert 0.25 < np.abs(wave).max() < 0.5  # down-mixed to mono, not summed to 0.8
    np.testing.assert_array_equal(decode_audio(path.read_bytes()), wave)  # bytes and path agree


def test_target_rate_is_a_parameter(tmp_path):
    write_wav(tmp_path / "a.wav", tone(1.0, 44100), 44100)
    wave = decode_audio(str(tmp_path / "a.wav"), sr=8000)
    assert abs(len(wave) - 8000) <= 16 and abs(dominant_hz(wave, 8000) - TONE) < 5


def test_bad_files_raise_media_error_with_a_reason(tmp_path):
    rng = np.random.default_rng(0)
    cases = {}
    (tmp_path / "garbage.mp4").write_bytes(rng.bytes(4096))
    cases["garbage.mp4"] = "unreadable"
    (tmp_path / "empty.wav").write_bytes(b"")
    cases["empty.wav"] = "unreadable"
    encode_media(tmp_path / "video_only.mp4", None, 16000, video=True, seconds=1.0)
    cases["video_only.mp4"] = "no audio stream"
    write_wav(tmp_path / "no_frames.wav", np.zeros(0, np.float32), 16000)
    cases["no_frames.wav"] = "empty audio"
    write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    cases["silent.wav"] = "silent audio"
    for name, reason in cases.items():
        with pytest.raises(MediaError) as err:
            decode_audio(str(tmp_path / name))
        assert err.value.reason == reason, (name, err.value)
        assert name in str(err.value)  # the message names the file
    # a silent clip is still decodable when asked for
    assert decode_audio(str(tmp_path / "silent.wav"), reject_silent=False).shape == (16000,)


def test_fit_length_clips_and_pads():
    x = np.arange(10, dtype=np.float32) + 1
    np.testing.assert_array_equal(fit_length(x, 4), x[:4])
    padded = fit_length(x, 15)
    assert padded.shape == (15,) and (padded[10:] == 0).all() and (padded[:10] == x).all()
    assert fit_length(x, None) is x


class CountingFile:
    """A seekable file that counts the bytes read through it."""

    def __init__(self, path):
        self.f, self.read_bytes = open(path, "rb"), 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.read_bytes += len(data)
        return data

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()


@pytest.mark.parametrize("fmt", [("wav", None, 16000, 1), ("wav", None, 44100, 2), ("mp3", "libmp3lame", 44100, 1)],
                         ids=lambda f: f"{f[0]}-{f[2]}-{f[3]}ch")
def test_a_segment_late_in_a_long_recording_seeks_and_matches_a_decode_from_the_start(tmp_path, fmt):
    """A manifest segment (start, end) of a long recording: decoding seeks to it, so it reads a
    small part of the file however late the segment lies, and its samples are exactly those of
    the whole file decoded from the start (MP3's encoder delay and the resampler's phase
    included)."""
    container, codec, sr, channels = fmt
    rng = np.random.default_rng(0)
    seconds = 120
    t = np.arange(seconds * sr) / sr
    wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 3)) * t) + 0.05 * rng.standard_normal(t.size)
            ).astype(np.float32)
    path = tmp_path / f"long.{container}"
    if codec is None:
        write_wav(path, wave, sr, channels=channels)
    else:
        encode_media(path, wave, sr, container=container, audio_codec=codec, video=False, channels=channels)
    whole = decode_audio(str(path), max_seconds=None)
    size = path.stat().st_size
    for start, end in [(0.0, 1.5), (3.0, 5.5), (61.25, 63.0), (117.0, 119.0)]:
        f = CountingFile(path)
        part = decode_audio(f, name=str(path), segment=(start, end))
        np.testing.assert_array_equal(part, whole[int(start * 16000):int(end * 16000)])
        if start > 60 and container == "wav":  # it sought; it did not read up to the segment
            assert f.read_bytes < 0.2 * size, (start, f.read_bytes, size)
        # (an MP3 without a seek index is sought by reading its packets up to the segment, not
        # decoding them: its Xing table of contents would jump there, but misplaces the samples)


def test_a_segment_of_a_file_over_the_size_cap_is_read_by_seeking(tmp_path):
    """The size cap guards against reading a whole large file into memory; a segment reads
    only its own bytes, so a long recording over the cap still serves its segments."""
    from workloads.data.pipeline import read_and_decode

    path = tmp_path / "long.wav"
    write_wav(path, tone(40.0, 16000), 16000)  # 1.28 MB
    with pytest.raises(MediaError, match="file too large"):
        read_and_decode(str(path), 16000, max_file_mb=1.0)
    part = read_and_decode(str(path), 16000, max_file_mb=1.0, segment=(30.0, 32.0))
    assert part.size == 32000 and abs(dominant_hz(part, 16000) - TONE) < 5


def test_a_recordings_segments_read_through_one_open_file_match_fresh_decodes(tmp_path):
    """A worker reads a long recording's segments through one open file (Recording): FFmpeg
    indexes the packets its first seek passed, so the next segments of an MP3 without a seek
    table do not scan the file again. In order, backwards, at the very start after a late one:
    the samples are decode_audio's, and a later segment reads few bytes."""
    from workloads.data.audio import Recording

    sr = 44100
    rng = np.random.default_rng(1)
    t = np.arange(90 * sr) / sr
    wave = (0.3 * np.sin(2 * np.pi * (220 + 40 * np.sin(t / 2)) * t) + 0.05 * rng.standard_normal(t.size)
            ).astype(np.float32)
    path = tmp_path / "long.mp3"
    encode_media(path, wave, sr, container="mp3", audio_codec="libmp3lame", video=False, channels=1)
    opened = []

    def opener():
        opened.append(CountingFile(path))
        return opened[-1]

    with Recording() as recording:
        for segment in [(80.0, 82.0), (84.5, 86.0), (60.0, 61.5), (0.2, 1.0), (85.0, 88.0)]:
            before = sum(f.read_bytes for f in opened)
            part = recording.read(str(path), opener, segment=segment)
            np.testing.assert_array_equal(part, decode_audio(str(path), segment=segment))
            if segment[0] == 84.5:  # right after (80, 82): through the index, not a new scan from the start
                assert sum(f.read_bytes for f in opened) - before < 0.2 * path.stat().st_size
    assert len(opened) == 2  # reopened once: for the segment at the file's start
