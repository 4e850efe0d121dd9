"""One bad file never stops a `data prepare`: a symlink loop, a dangling link, a link out of
the corpus folder, a FIFO named .wav (never opened: it would hang the run), a file name that is
not UTF-8 and an oversized CSV field each become one problems-table row with its reason, and
every good item is prepared. The real command, in a subprocess with a time limit (a FIFO that
is opened blocks for ever)."""
from __future__ import annotations

import csv
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _prepare(corpus: str, root: Path, home: Path, *flags: str) -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
    home.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "data", "prepare", corpus, "--root", str(root),
                          "--features", "mfcc_mean", "--no-progress", *flags], capture_output=True, text=True, timeout=300,
                         cwd=home, env={**os.environ, "EMOSWEEP_HOME": str(home), "PYTHONPATH": str(ROOT),
                                        # decoded in the command's own process: what is checked is the
                                        # reading, which is the same on Ray Data (test_pipeline.py)
                                        "EMOSWEEP_LOCAL": "1"})
    errors = pd.concat([pd.read_csv(p) for p in (home / "cache").glob(f"{corpus}-*/errors.csv")])
    return out, errors


@pytest.mark.slow
def test_bad_entries_are_reported_and_every_good_item_kept(synth, tmp_path):
    root = tmp_path / "ravdess"
    shutil.copytree(synth("ravdess", 24, seed=5, faults=False), root)
    good = sorted(root.rglob("*.wav"))
    actor = good[0].parent
    outside = tmp_path / "elsewhere.wav"
    shutil.copy(good[0], outside)
    planted = {"loop.wav": "symlink loop", "dangling.wav": "dangling symlink",
               "outside.wav": "symlink leads outside the corpus folder", "fifo.wav": "not a regular file (FIFO)"}
    os.symlink("loop.wav", actor / "loop.wav")  # a link to itself
    os.symlink(tmp_path / "gone.wav", actor / "dangling.wav")
    os.symlink(outside, actor / "outside.wav")
    os.mkfifo(actor / "fifo.wav")
    with open(os.fsencode(str(actor)) + b"/name\xff.wav", "wb") as f:
        f.write(good[0].read_bytes())
    names = {p.name for p in good}  # a link inside the folder is followed: an item like any other
    free = next(f"03-01-0{e}-0{i}-0{s}-0{r}-01.wav" for e in range(1, 9) for i in (1, 2) for s in (1, 2) for r in (1, 2)
                if f"03-01-0{e}-0{i}-0{s}-0{r}-01.wav" not in names)
    os.symlink(good[1], actor / free)

    out, errors = _prepare("ravdess", root, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(good) + 1} usable" in out.stdout  # every good clip, and the link inside
    reasons = {Path(p).name: r for p, r in zip(errors["path"], errors["reason"])}
    for name, reason in planted.items():
        assert reason in reasons.get(name, ""), (name, reasons)
    assert reasons["name\\xff.wav"] == "file name is not valid UTF-8"

    from workloads.data.corpora import read_corpus

    followed = read_corpus("ravdess", root, follow_symlinks=True)  # the reader's part; prepare records options
    reasons = {Path(p).name: r for p, r in zip(followed.problems["path"], followed.problems["reason"])}
    assert "outside" not in reasons["outside.wav"], reasons  # followed, as asked (then its name is not RAVDESS's)
    assert "read with follow_symlinks=True" in followed.summary()


def test_an_oversized_csv_field_is_one_row_not_a_crash(synth, tmp_path):
    from workloads.data.corpora import read_meld

    root = tmp_path / "meld"
    shutil.copytree(synth("meld", 24, seed=5, faults=False), root)
    train = next(root.rglob("train_sent_emo.csv"))
    rows = list(csv.reader(train.open(newline="", encoding="utf-8")))
    rows[1][1] = "word " * 40_000  # a 195 KiB utterance: over the csv module's 128 KiB field limit
    with train.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    manifest = read_meld(root)
    hits = manifest.problems[manifest.problems["reason"].str.contains("a field of 195 KiB")]
    assert len(hits) == 1 and int(hits["line"].iloc[0]) == 2
    assert len(manifest.items) == 23  # the other rows of all three files


def test_an_hour_long_file_is_refused_before_decoding_and_a_huge_one_unread(tmp_path):
    """A one-hour silent WAV is refused from its header (nothing decoded: the reason says so)
    and a file over --max-file-mb is never read; both are report rows, the good clip is kept."""
    import numpy as np
    import soundfile as sf

    from workloads.data.corpora import read_corpus
    from workloads.data.pipeline import prepare

    root = tmp_path / "ravdess" / "Actor_01"
    root.mkdir(parents=True)
    t = np.arange(16000) / 16000
    sf.write(root / "03-01-01-01-01-01-01.wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    sf.write(root / "03-01-02-01-01-01-01.wav", np.zeros(8000 * 3600, np.int16), 8000, subtype="PCM_U8")
    with open(root / "03-01-03-01-01-01-01.wav", "wb") as f:  # 60 MB of nothing (sparse): over a 50 MB limit
        f.truncate(60_000_000)
    old = os.environ.get("EMOSWEEP_LOCAL")
    os.environ["EMOSWEEP_LOCAL"] = "1"
    run = lambda **limits: prepare(read_corpus("ravdess", root.parent), ["mfcc_mean"],  # noqa: E731
                                   cache_dir=str(tmp_path / "cache"), progress=False, **limits)
    try:
        result = run(max_file_mb=50)
        again = run(max_file_mb=50)  # the refusals are kept: nothing is read again
        raised = run(max_file_mb=100)  # a raised limit tries what it refused, and only that
    finally:
        if old is None:
            os.environ.pop("EMOSWEEP_LOCAL")
    reasons = {Path(p).name: (r, d) for p, r, d in zip(result.errors["path"], result.errors["reason"],
                                                        result.errors["detail"])}
    assert reasons["03-01-02-01-01-01-01.wav"][0] == "too long"
    assert "3600 s (the container's metadata; nothing decoded)" in reasons["03-01-02-01-01-01-01.wav"][1]
    assert reasons["03-01-03-01-01-01-01.wav"][0] == "file too large" and "not read" in reasons["03-01-03-01-01-01-01.wav"][1]
    assert result.usable == 1 and len(result.errors) == 2  # the good clip has its features
    assert again.decoded == 0 and len(again.errors) == 2
    assert raised.decoded == 1  # the 60-MB file, read now (60 MB of nothing: unreadable), not the hour-long one
    reasons = dict(zip([Path(p).name for p in raised.errors["path"]], raised.errors["reason"]))
    assert reasons["03-01-02-01-01-01-01.wav"] == "too long" and reasons["03-01-03-01-01-01-01.wav"] != "file too large"


def test_decoding_stops_at_the_limit_when_the_container_does_not_say():
    """A FLAC stream written as a live stream (no seekable output, so no length in its header)
    declares no duration: decoding is stopped as soon as it passes the limit."""
    import io

    import av
    import numpy as np
    import pytest

    from workloads.data.audio import MediaError, decode_audio

    class Live(io.RawIOBase):
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def seekable(self):
            return False

        def write(self, chunk):
            self.data += bytes(chunk)
            return len(chunk)

    sink = Live()
    with av.open(sink, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=16000)
        stream.layout = "mono"
        wave = (0.2 * np.sin(np.arange(16000 * 8) / 5) * 32767).astype(np.int16)
        for i in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, i:i + 1024], format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytes(sink.data)
    with av.open(io.BytesIO(data)) as probe:
        assert probe.duration is None and probe.streams.audio[0].duration is None  # it does not say
    with pytest.raises(MediaError, match="decoding stopped there"):
        decode_audio(data, max_seconds=2)
    assert len(decode_audio(data, max_seconds=60)) == 16000 * 8


PLANTED = "03-01-08-01-01-01-01.wav"


def _planted_run(synth, tmp_path, worker, **actors):
    """Seven good RAVDESS look-alike clips and a planted eighth; → a function that runs the
    mfcc_mean cache over them with `worker` (on actors when `actors` are given)."""
    from workloads.data.corpora import read_corpus
    from workloads.data.features import get_stage
    from workloads.data.pipeline import run_cached

    root = tmp_path / "ravdess" / "Actor_01"
    root.mkdir(parents=True)
    for wav in sorted(synth("ravdess", 24, seed=5, faults=False).rglob("*.wav"))[:7]:  # seven good clips
        shutil.copy(wav, root / wav.name)
    shutil.copy(wav, root / PLANTED)
    manifest = read_corpus("ravdess", tmp_path / "ravdess")
    return manifest, lambda: run_cached("ravdess", manifest.fingerprint(), manifest.items, manifest.problems,
                                        {"mfcc_mean": (get_stage("mfcc_mean"), {})}, worker, {"sr": 16000},
                                        cache_dir=str(tmp_path / "cache"), shard_size=4, progress=False,
                                        actors=actors or None)


@pytest.mark.slow
def test_a_file_that_kills_its_worker_is_retried_a_few_times_then_reported(ray_cluster, synth, tmp_path, capsys):
    from workloads.data.pipeline import MAX_TASK_RETRIES

    def dies_on_planted(batch, **kwargs):  # defined here: Ray ships it by value to its workers
        """featurize_batch, except that the process exits (as an FFmpeg crash or the OOM killer
        would end it) on the planted file."""
        import os

        from workloads.data.pipeline import featurize_batch

        if any(str(p).endswith(PLANTED) for p in batch["path"]):
            os._exit(1)
        return featurize_batch(batch, **kwargs)

    manifest, run = _planted_run(synth, tmp_path, dies_on_planted)
    result = run()
    err = capsys.readouterr().err
    assert f"died {MAX_TASK_RETRIES + 1} times on one shard" in err
    rows = result.errors[result.errors["reason"] == "worker died"]
    assert [Path(p).name for p in rows["path"]] == [PLANTED]
    assert result.usable == len(manifest.items) - 1 and len(result.errors) == 1  # every other item computed
    again = run()  # the report is kept: the file is never retried for ever
    assert again.decoded == 0 and list(again.errors["reason"]) == ["worker died"]


@pytest.mark.slow
def test_a_file_that_kills_its_encoder_actor_is_reported_and_the_rest_encoded(ray_cluster, synth, tmp_path, capsys):
    """As above, for a worker that is a class on a pool of Ray Data actors (the encoders'
    cache): after the actor's restarts are spent, the items left go one call each to a fresh
    actor; the one that kills it is reported, every other one computed."""
    class DiesOnPlanted:  # defined here: Ray ships it by value to its actors
        """An encoder-like actor worker (built once per actor) whose process exits, as an
        FFmpeg crash or the OOM killer would end it, on the planted file."""

        def __init__(self, marker: str):
            self.marker = marker

        def __call__(self, batch, **kwargs):
            import os

            from workloads.data.pipeline import featurize_batch

            if any(str(p).endswith(self.marker) for p in batch["path"]):
                os._exit(1)
            return featurize_batch(batch, **kwargs)

    manifest, run = _planted_run(synth, tmp_path, DiesOnPlanted, init={"marker": PLANTED}, concurrency=1)
    result = run()
    assert "one per call of a fresh actor" in capsys.readouterr().err
    rows = result.errors[result.errors["reason"] == "worker died"]
    assert [Path(p).name for p in rows["path"]] == [PLANTED]
    assert result.usable == len(manifest.items) - 1 and len(result.errors) == 1
    assert run().decoded == 0  # reported once, never retried for ever



@pytest.mark.slow
def test_a_studys_media_limits_refuse_what_is_over_them_and_its_data_report_says_so(synth, tmp_path):
    """`--max-seconds` on a study (not only `data prepare`): a CREMA-D look-alike of 1.2-2.5 s
    clips at a 1.8-s limit; the longer clips are refused and reported, the others train, and
    the data report states the limits and counts the refusals."""
    from sweeps.audiomnist_mlp import STUDY
    from sweeps.runner import main

    from workloads.data.corpora import read_corpus

    items = read_corpus("cremad", synth("cremad", 56, seed=1, faults=False)).items  # as a manifest: S5 reads any
    items[["path", "label", "speaker"]].to_csv(tmp_path / "clips.csv", index=False)
    table = main(STUDY, ["--local", "--smoke", "--data-dir", str(tmp_path / "clips.csv"), "--max-seconds", "1.8",
                         "--arms", "h1_relu_mean", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                         "--results-out", str(tmp_path / "r.csv")])
    assert (table["status"].str.startswith("OK")).all()
    (report,) = [p.read_text() for p in tmp_path.rglob("dataset_report.md")]
    assert "a clip over 1.8 s or a file over 200 MB is refused" in report
    refused = int(re.search(r"too long ×(\d+)", report).group(1))
    assert 0 < refused < 56, report
