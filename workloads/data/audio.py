"""Decoding through FFmpeg's libraries (PyAV wheel, no system install): any container
(mp4 with video, wav, flac, ogg, mp3; any channel count and rate) → mono float32 at the
target rate. FFmpeg's swresample converts the sample format and rate; channels are then
averaged (librosa's to_mono convention: a stereo clip with L = R decodes to the same
amplitude as its mono original, where swresample's −3 dB downmix would scale it by √2)."""
from __future__ import annotations

import io

import numpy as np

TARGET_SR = 16000
SILENCE_PEAK = 1e-4  # below this peak amplitude a clip carries no usable signal
MAX_SECONDS = 600.0  # an item longer than this is refused (`data prepare --max-seconds`)
MAX_FILE_MB = 200.0  # a file larger than this is refused before it is read (`--max-file-mb`)


class MediaError(ValueError):
    """A file that cannot be used; `reason` is short and stable so errors group by it."""

    def __init__(self, path: str, reason: str, detail: str = "", limit: tuple | None = None):
        """`limit`: (which limit, its value) for a file refused by --max-seconds or
        --max-file-mb, so the cache can retry it once that limit is raised."""
        self.path, self.reason, self.detail, self.limit = path, reason, detail, limit
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def with_media_caps(config: dict, max_seconds: float | None, max_file_mb: float | None) -> dict:
    """The study's config with its media limits (a study's --max-seconds / --max-file-mb, else
    the defaults), which its decoding uses and its data report states."""
    return {**config, "max_seconds": float(MAX_SECONDS if max_seconds is None else max_seconds),
            "max_file_mb": float(MAX_FILE_MB if max_file_mb is None else max_file_mb)}


def media_caps(config: dict) -> dict:
    """read_and_decode's limits from a study's config."""
    return {"max_seconds": float(config.get("max_seconds", MAX_SECONDS)),
            "max_file_mb": float(config.get("max_file_mb", MAX_FILE_MB))}


def caps_line(config: dict) -> str:
    """The data report's line on the limits."""
    caps = media_caps(config)
    return (f"Media limits: a clip over {caps['max_seconds']:g} s or a file over {caps['max_file_mb']:g} MB is "
            f"refused and reported, not decoded (--max-seconds, --max-file-mb).\n")


def too_long(name: str, seconds: float, max_seconds: float, how: str) -> MediaError:
    return MediaError(name, "too long", f"{seconds:.0f} s ({how}), over the {max_seconds:g} s limit (--max-seconds)",
                      limit=("max_seconds", float(max_seconds)))


def declared_seconds(container, stream) -> float | None:
    """The audio's length as the container declares it (header or index), before decoding;
    None where it does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


SEEK_PREROLL = 1.0  # seconds decoded before a segment's start after a seek: codecs whose frames lean on
#                    the previous ones (MP3's bit reservoir, AAC's overlap) are settled by then


def _seek(container, stream, start: float) -> float:
    """Move `container` to SEEK_PREROLL seconds before `start` (at or before: FFmpeg lands on a
    packet that begins there or earlier). Returns the time decoding will resume from as far
    as is known now (the first frame decoded tells it exactly), or 0.0 where the container
    cannot seek, in which case decoding runs from the beginning as before."""
    target = start - SEEK_PREROLL
    if target <= 0 or stream.time_base is None:
        return 0.0
    import av

    try:
        container.seek(int(target / stream.time_base), stream=stream, backward=True)
    except (av.error.FFmpegError, OverflowError, ValueError):
        return 0.0
    return target


def _on_grid(frame, origin: float, sr: int):
    """The first frame after a seek, trimmed to start on an instant where the source's and the
    target's sample clocks meet (every 1/gcd(rates) s: 10 ms for 44.1 → 16 kHz), as they do
    at time 0. The resampler then computes the same output samples as a decode from the start
    (up to its settling, which the pre-roll absorbs) instead of ones shifted by a fraction of
    a sample. Returns (frame, its new start time)."""
    import math

    import av

    rate = int(frame.sample_rate)
    step = rate // math.gcd(rate, sr)
    drop = (-int(round(origin * rate))) % step
    if drop == 0:
        return frame, origin
    if drop >= frame.samples:
        return frame, origin  # a tiny frame: resample it as it is (a sub-sample offset at most)
    data = frame.to_ndarray()
    data = data[:, drop:] if frame.format.is_planar else data[:, drop * len(frame.layout.channels):]
    trimmed = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name,
                                         layout=frame.layout.name)
    trimmed.sample_rate = rate
    return trimmed, origin + drop / rate


class _Untimed(Exception):
    """After a seek, a frame without a timestamp: where decoding resumed is unknown."""


def decode_audio(source, sr: int = TARGET_SR, name: str | None = None,
                 reject_silent: bool = True, max_seconds: float | None = MAX_SECONDS,
                 segment: tuple[float, float] | None = None, info: dict | None = None) -> np.ndarray:
    """The first audio stream of `source` (file bytes, a path or a seekable file object) as mono
    float32 at `sr`. Raises MediaError with reason unreadable / no audio stream / corrupt audio /
    empty audio / silent audio / too long. Length: a container that declares more than
    `max_seconds` is refused before a frame is decoded; one that does not say is stopped as soon
    as decoding passes the limit (memory stays bounded either way). `segment` = (start, end)
    seconds: only that part. Decoding seeks to just before its start (SEEK_PREROLL) and goes no
    further than its end, so a segment costs its own length wherever it lies in the file (a
    container that cannot seek is decoded from its start); the limit applies to its length.
    `info`, when given, receives the source's sample rate (`source_sr`) and the clip's length
    (`seconds`)."""
    name = name or (source if isinstance(source, str) else "<bytes>")
    if segment is None:
        with _open(source, name) as container:
            return _decode_open(container, sr, name, reject_silent, max_seconds, None, info, seek=False)

    def opener():  # the same source again (Recording reopens it when a seek leaves no timestamps)
        if hasattr(source, "seek"):
            source.seek(0)
        return source

    with Recording(close_files=False) as recording:  # the caller's file object stays the caller's
        return recording.read(name, opener, sr, max_seconds, segment, info, reject_silent)


class Recording:
    """A long recording kept open while a worker reads its segments, one after another. FFmpeg
    indexes the packets it passes while seeking, so on an open container the second and later
    segments seek through that index instead of scanning the file again (an MP3 without a
    seek table has nothing else: a fresh open pays a scan up to each segment). Holds one file;
    `read` of another closes it first. Use as a context manager, or call close()."""

    def __init__(self, close_files: bool = True):
        self.close_files = close_files  # close what opener() gave, with the container
        self.key, self.container, self.handle, self.used = None, None, None, False

    def read(self, key: str, opener, sr: int = TARGET_SR, max_seconds: float | None = MAX_SECONDS,
             segment: tuple[float, float] = (0.0, 0.0), info: dict | None = None,
             reject_silent: bool = True) -> np.ndarray:
        """Segment (start, end) of the file `key`; `opener()` gives its source (a seekable file
        object, a path or bytes), called when the file is not the one open. Samples and errors
        as decode_audio's."""
        if key != self.key or (self.used and segment[0] - SEEK_PREROLL <= 0):  # the start: from a fresh open
            self._reopen(key, opener)
        try:
            try:
                wave = _decode_open(self.container, sr, key, reject_silent, max_seconds, segment, info, seek=True)
            except _Untimed:
                self._reopen(key, opener)
                wave = _decode_open(self.container, sr, key, reject_silent, max_seconds, segment, info, seek=False)
        except BaseException:
            self.close()  # where a failed decode left the container is unknown
            raise
        self.used = True
        return wave

    def _reopen(self, key, opener) -> None:
        self.close()
        self.handle = opener()
        self.container = _open(self.handle, key)
        self.key = key

    def close(self) -> None:
        for thing in (self.container, self.handle if self.close_files else None):
            if thing is not None and hasattr(thing, "close"):
                try:
                    thing.close()
                except Exception:
                    pass
        self.key, self.container, self.handle, self.used = None, None, None, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open(source, name: str):
    """An FFmpeg container on `source` (bytes, a path or a file object), or MediaError."""
    import av  # PyAV, FFmpeg's libraries: imported where media is decoded, not by training code

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaError(name, "unreadable", "empty file (0 bytes)")
        source = io.BytesIO(source)
    try:
        return av.open(source, mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError(name, "unreadable", str(e)) from None


def _decode_open(container, sr, name, reject_silent, max_seconds, segment, info, seek: bool) -> np.ndarray:
    """decode_audio's work on an open container (a segment: from wherever it was left)."""
    import av

    if not container.streams.audio:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise MediaError(name, "no audio stream", f"streams: {kinds}")
    stream = container.streams.audio[0]
    if info is not None:
        info["source_sr"] = int(stream.rate or stream.codec_context.sample_rate or 0)
    declared = declared_seconds(container, stream)
    if segment is not None:
        if max_seconds is not None and segment[1] - segment[0] > max_seconds:
            raise too_long(name, segment[1] - segment[0], max_seconds, "the segment's start and end")
        if declared is not None and segment[0] >= declared:
            raise MediaError(name, "segment outside the file", f"starts at {segment[0]:g} s; the file lasts "
                                                               f"{declared:.1f} s")
    elif max_seconds is not None and declared is not None and declared > max_seconds:
        raise too_long(name, declared, max_seconds, "the container's metadata; nothing decoded")
    limit = int(max_seconds * sr) if max_seconds is not None and segment is None else None
    origin = _seek(container, stream, segment[0]) if segment is not None and seek else 0.0
    stop = int((segment[1] - origin) * sr) if segment is not None else None
    resampler = av.AudioResampler(format="fltp", rate=sr)  # planar: one row per channel
    chunks, samples = [], 0
    try:
        for frame in container.decode(stream):
            if not chunks and origin:
                if frame.time is None:
                    raise _Untimed
                # where decoding resumed after the seek (a packet's edge), on the clock of a
                # decode from the start, whose first sample is the stream's start time (MP3:
                # its encoder delay, which only a decode from the start skips)
                origin = float(frame.time) - float((stream.start_time or 0) * stream.time_base)
                frame, origin = _on_grid(frame, origin, sr)
                stop = int((segment[1] - origin) * sr)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().mean(axis=0))
                samples += chunks[-1].size
            if limit is not None and samples > limit:
                raise too_long(name, samples / sr, max_seconds, "decoding stopped there")
            if stop is not None and samples >= stop:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().mean(axis=0))
    except av.error.FFmpegError as e:
        raise MediaError(name, "corrupt audio", str(e)) from None
    wave = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if segment is not None:
        first = max(0, int(segment[0] * sr) - int(round(origin * sr)))
        wave = wave[first:first + int(segment[1] * sr) - int(segment[0] * sr)]
    if info is not None:
        info["seconds"] = wave.size / sr
    if wave.size == 0:
        raise MediaError(name, "empty audio", "0 samples decoded")
    if reject_silent and float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise MediaError(name, "silent audio", f"peak amplitude < {SILENCE_PEAK:g}")
    return wave


def fit_length(wave: np.ndarray, n: int | None) -> np.ndarray:
    """Clip to the first n samples, or zero-pad at the end to n (S1 and S4: 5 s)."""
    if n is None:
        return wave
    if len(wave) >= n:
        return wave[:n]
    return np.pad(wave, (0, n - len(wave)))
