"""Each feature stage against a direct librosa / numpy computation written out here, with
the shapes the studies need (S4: 157 × 46 for 5 s; S5 GTZAN: 128 × 128)."""
from __future__ import annotations

import librosa
import numpy as np
import pytest

from workloads.data.features import STAGES, get_stage
from workloads.data.synth import class_voices, speaker_traits, synthesize

SR = 16000


@pytest.fixture(scope="module")
def wave():
    rng = np.random.default_rng(0)
    return synthesize(class_voices(4, 0)[1], speaker_traits(rng), 3.2, SR, rng)


def test_waveform_clips_and_pads(wave):
    np.testing.assert_array_equal(STAGES["waveform"](wave)["waveform"], wave)
    assert STAGES["waveform"](wave, seconds=5.0)["waveform"].shape == (80000,)
    np.testing.assert_array_equal(STAGES["waveform"](wave, seconds=1.0)["waveform"], wave[:16000])


def test_logmel_is_librosa_db_mel_resized_to_128(wave):
    from scipy.ndimage import zoom

    out = STAGES["logmel"](wave)["logmel"]
    db = librosa.power_to_db(librosa.feature.melspectrogram(y=wave, sr=SR, n_fft=2048, hop_length=512, n_mels=128),
                             ref=np.max)
    assert out.shape == (128, 128)
    np.testing.assert_allclose(out, zoom(db, (1, 128 / db.shape[1]), order=1), atol=1e-3)
    assert out.max() <= 1e-4 and out.min() >= -80.001  # dB relative to the peak, top_db 80


def test_mfcc_with_deltas(wave):
    out = STAGES["mfcc"](wave)["mfcc"]
    m = librosa.feature.mfcc(y=wave, sr=SR, n_mfcc=12, n_fft=400, hop_length=160, n_mels=24)  # 25 ms / 10 ms
    assert out.shape == (36, m.shape[1])
    np.testing.assert_allclose(out[:12], m, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[12:24], librosa.feature.delta(m, order=1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[24:], librosa.feature.delta(m, order=2), rtol=1e-4, atol=1e-3)
    short = STAGES["mfcc"](wave[:800])["mfcc"]  # a clip shorter than the delta window still works
    assert short.shape[0] == 36 and np.isfinite(short).all()


def test_mfcc_mean_and_stats(wave):
    out = STAGES["mfcc_mean"](wave, n_mfcc=13)["mfcc_mean"]
    m = librosa.feature.mfcc(y=wave, sr=SR, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40)
    np.testing.assert_allclose(out, m.mean(axis=1), rtol=1e-4, atol=1e-3)
    stats = STAGES["mfcc_stats"](wave)["mfcc_stats"]  # S5 speaker ID: the means, then the deviations
    np.testing.assert_allclose(stats[:13], out, rtol=1e-5)
    np.testing.assert_allclose(stats[13:], m.std(axis=1), rtol=1e-4, atol=1e-3)


def test_frame46_has_157_frames_of_46_features(wave):
    out = STAGES["frame46"](wave)["frame46"]
    assert out.shape == (157, 46)
    y = np.pad(wave, (0, 80000 - len(wave)))  # 5 s, zero-padded
    mfcc = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=20, hop_length=512)
    expected = {
        0: librosa.feature.spectral_centroid(y=y, sr=SR, hop_length=512)[0],
        1: librosa.feature.spectral_contrast(y=y, sr=SR, hop_length=512)[0],
        2: librosa.feature.spectral_bandwidth(y=y, sr=SR, hop_length=512)[0],
        3: librosa.feature.spectral_rolloff(y=y, sr=SR, hop_length=512)[0],
        4: librosa.feature.zero_crossing_rate(y, hop_length=512)[0],
        5: librosa.feature.rms(y=y, hop_length=512)[0],
    }
    for col, ref in expected.items():
        np.testing.assert_allclose(out[:, col], ref, rtol=1e-3, atol=1e-3, err_msg=f"column {col}")
    np.testing.assert_allclose(out[:, 6:26], mfcc.T, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(out[:, 26:46], librosa.feature.delta(mfcc).T, rtol=1e-3, atol=1e-2)
    long = STAGES["frame46"](np.tile(wave, 3))["frame46"]  # longer clips are cut to 5 s
    assert long.shape == (157, 46)


def test_spectral_stats(wave):
    out = STAGES["spectral_stats"](wave)["spectral_stats"]
    centroid = librosa.feature.spectral_centroid(y=wave, sr=SR).mean()
    zcr = np.mean(np.abs(np.diff(np.signbit(wave).astype(int))))  # numpy: sign changes per sample
    rms = np.sqrt(np.mean(wave ** 2))
    assert out.shape == (3,)
    np.testing.assert_allclose(out[0], centroid, rtol=1e-4)
    np.testing.assert_allclose(out[1], zcr, rtol=0.05)  # framing and centring differ slightly
    np.testing.assert_allclose(out[2], librosa.feature.rms(y=wave).mean(), rtol=1e-4)
    np.testing.assert_allclose(out[2], rms, rtol=0.1)


def test_ssl_input_is_zero_mean_unit_variance_and_clipped(wave):
    out = STAGES["ssl_input"](wave, seconds=2.0)["input_values"]
    clipped = wave[:32000]
    assert out.shape == (32000,)
    np.testing.assert_allclose(out, (clipped - clipped.mean()) / np.sqrt(clipped.var() + 1e-7), atol=1e-4)


def test_stage_key_changes_with_params_and_version():
    stage = get_stage("logmel")
    base = stage.key(stage.params(), sr=16000)
    assert stage.key(stage.params({"size": 64}), sr=16000) != base
    assert stage.key(stage.params(), sr=22050) != base
    assert stage.key(stage.params(), sr=16000) == base
    with pytest.raises(ValueError, match="no parameter"):
        stage.params({"colour": 1})
    with pytest.raises(ValueError, match="unknown feature stage"):
        get_stage("mfccs")
