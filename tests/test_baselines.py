"""S5, the classic audio baselines: the reports' networks as written (the GTZAN CNN's parameter
count, the AudioMNIST MLP's layouts, activation and init), their features, and the three studies
on generated look-alikes: speaker identification as a real Tune sweep of scikit-learn trials
logged to MLflow; AudioMNIST and GTZAN trials in a plain process on the data their driver
prepared (their sweep path is the runner's, tested with every other study)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workloads.models.classic import (GTZAN_KERAS_PARAMS, GTZAN_KERAS_TRAINABLE, MLP, BipolarSigmoid, GenreCNN,
                                      hidden_sizes, keras_parameter_count)


def test_gtzan_cnn_has_the_reports_parameter_count():
    model = GenreCNN(10)
    assert keras_parameter_count(model) == GTZAN_KERAS_PARAMS == 1_230_538
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == GTZAN_KERAS_TRAINABLE == 1_230_474
    assert model(torch.randn(3, 1, 128, 128)).shape == (3, 10)


def test_mlp_layouts_activation_and_xavier_init():
    # AudioMNIST: 101 frames × 36 MFCC + deltas in, 10 digits out: n = (3636 + 10) / 2 = 1823
    assert hidden_sizes("h1", 3636, 10) == [1823]
    assert hidden_sizes("h2", 3636, 10) == [1823, 1823]
    assert hidden_sizes("h2_two_thirds", 3636, 10) == [1215, 1215]
    assert hidden_sizes("h2_third_half", 3636, 10) == [608, 912]
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(BipolarSigmoid()(x), 2 / (1 + torch.exp(-x)) - 1)
    torch.manual_seed(0)
    model = MLP(400, 10, "h2_third_half", "bipolar_sigmoid")
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [68, 102, 10]  # n = 205
    assert isinstance(model.net[1], BipolarSigmoid)
    for m in linears:  # Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); zero bias
        bound = (6 / (m.in_features + m.out_features)) ** 0.5
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
        assert not m.bias.any()
    with pytest.raises(ValueError, match="unknown MLP layout"):
        hidden_sizes("h3", 10, 2)


def test_audiomnist_features():
    from workloads.audiomnist_mlp import features

    rng = np.random.default_rng(0)
    short, long = rng.normal(size=(36, 3)).astype(np.float32), rng.normal(size=(36, 5)).astype(np.float32)
    frames = {"train": ([short], np.array([0])), "test": ([long], np.array([1]))}
    deltas = features(frames, "deltas")
    assert deltas["train"][0].shape == (1, 5 * 36)  # padded to the longest clip of any split
    np.testing.assert_array_equal(deltas["train"][0][0].reshape(5, 36)[:3], short.T)  # time-major
    assert not deltas["train"][0][0].reshape(5, 36)[3:].any()  # zeros after the clip
    np.testing.assert_allclose(features(frames, "mean")["test"][0][0], long[:12].mean(1), rtol=1e-6)
    stats = features(frames, "mean+std")["train"][0][0]
    np.testing.assert_allclose(stats, np.concatenate([short.mean(1), short.std(1)]), rtol=1e-5)


@pytest.fixture(scope="module")
def speaker_sweep(ray_cluster, mlflow_server, tmp_path_factory):
    from sweeps.runner import main
    from sweeps.speaker_id import STUDY

    out = tmp_path_factory.mktemp("speaker-id")
    return main(STUDY, ["--smoke", "--set", "synth_n=60", "--tracking-uri", mlflow_server.uri, "--experiment",
                        "test-speaker-id", "--name", "speaker-id-smoke", "--storage-path", str(out / "ray"),
                        "--results-out", str(out / "speaker.csv"), "--verbose", "0"])


@pytest.mark.slow
def test_speaker_id_estimators_are_logged_trials(speaker_sweep, mlflow_server):
    from mlflow.tracking import MlflowClient

    from mlflow_runs import child_runs

    table = speaker_sweep.set_index("arm")
    assert list(table.index) == ["sgd_spectral", "sag_spectral", "sgd_mfcc", "sag_mfcc", "floor"]
    assert (table["status"] == "OK").all(), table["status"]
    assert str(table.loc["sag_mfcc", "report_test_acc"]) == "0.977"  # the report's number beside each arm
    assert table.loc["sgd_spectral", "total_params"] == (3 + 1) * 5  # 3 statistics → 5 speakers
    assert table.loc["sgd_mfcc", "total_params"] == (13 + 1) * 5
    assert table.loc["floor", "total_params"] == (26 + 1) * 5  # mean and std of 13 MFCC
    assert (table["test_acc"] > 0.4).all(), table["test_acc"]  # five voices; chance is 0.2
    # each solver searches and shows its own knob only
    assert table["alpha"].isna().tolist() == [False, True, False, True, True]
    assert table["C"].isna().tolist() == [True, False, True, False, True]
    client = MlflowClient(mlflow_server.uri)
    runs = {r.data.tags["arm"]: r for r in child_runs(client, "test-speaker-id")}
    assert set(runs) == set(table.index)
    sgd, sag = runs["sgd_mfcc"], runs["sag_mfcc"]
    assert sgd.data.params["alpha"] and sag.data.params["C"] and sgd.data.params["method"] == "sgd"
    assert sgd.data.metrics["test_acc"] == pytest.approx(table.loc["sgd_mfcc", "test_acc"])
    assert sgd.data.metrics["solver_iterations"] >= 1
    names = {a.path for a in client.list_artifacts(sgd.info.run_id)}
    assert {"confusion_matrix.png", "classification_report.txt"} <= names


def _trial(module, arm: str, config: dict, **overrides) -> dict:
    """One arm of a prepared study in a plain process: its best epoch's metrics."""
    import importlib

    from workloads.core.loop import LocalSession

    from workloads.core.session import local_session

    arms = importlib.import_module(f"sweeps.{module.WORKLOAD}").STUDY.arms
    config = {**config, **arms[arm], **overrides, "arm": arm}
    with local_session(LocalSession(quiet=True)) as session:
        module.train(config, None)  # the one trainable contract: train(config, tracking)
    return session.reports[-1]


@pytest.mark.slow
def test_audiomnist_mlp_and_its_references_learn(ray_cluster, capsys):
    from sweeps.audiomnist_mlp import STUDY
    from workloads import audiomnist_mlp

    config = audiomnist_mlp.prepare({**STUDY.defaults, "synth_n": 120, "seed": 0, "data_dir": None})
    assert config["classes"] == [str(d) for d in range(10)]
    mlp = _trial(audiomnist_mlp, "h1_relu_deltas", config, epochs=12, patience=None)
    ref = _trial(audiomnist_mlp, "sklearn_mlp", config)
    floor = _trial(audiomnist_mlp, "floor", config)
    mean = _trial(audiomnist_mlp, "h2_bipolar_mean", config, epochs=30, patience=None, batch_size=16, lr=3e-3)
    for name, best in {"mlp": mlp, "sklearn": ref, "floor": floor, "mean": mean}.items():
        assert best["test_acc"] > 0.3, (name, best["test_acc"])  # ten digits: chance is 0.1


def test_gtzan_reports_the_corrupt_file_and_trains(ray_cluster, capsys):
    from sweeps.gtzan_cnn import STUDY
    from workloads import gtzan_cnn
    from workloads.data.study_items import study_items

    config = gtzan_cnn.prepare({**STUDY.defaults, "synth_n": 60, "seed": 0, "data_dir": None})
    out = capsys.readouterr().out
    assert "1 errors" in out and "jazz.00054.wav" in out  # the real archive's corrupt file, named
    uids = set(study_items(config))
    assert not any(u.endswith("jazz.00054.wav") for u in uids) and len(uids) == 60
    cnn = _trial(gtzan_cnn, "cnn", config, epochs=3, lr=1e-3)
    floor = _trial(gtzan_cnn, "floor", config)
    assert cnn["test_acc"] > 0.2 and floor["test_acc"] > 0.2, (cnn, floor)  # ten genres: chance is 0.1
