"""S6 (FER2013): the Ray Data reader and its cache on a generated fer2013.csv with malformed
rows, the up-sampling (counts, flags, brightness), the four architectures (shape, parameter
count, a step lowers the loss), and a real smoke sweep of all four logged to MLflow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mlflow_runs import sweep_runs
from workloads.data.fer2013 import LABELS, load_images, parse_row, read_fer2013, read_with_pandas
from workloads.data.synth import load_manifest
from workloads.fer import FerBatches, class_weights, upsample_minorities
from workloads.models.fer_nets import ARCHITECTURES, build_fer_net, count_params

# Written out: a change to an architecture must show up here.
PARAMS = {"basic_cnn": 1_274_375, "enhanced": 1_703_143, "advanced_resnet": 1_241_063, "emotion_se": 1_727_223}


def test_reader_reports_malformed_rows_by_line_and_keeps_every_good_row(ray_cluster, synth, tmp_path):
    root = synth("fer2013", n=300, seed=0, faults=True)
    info = load_manifest(root)
    result = read_fer2013(root, cache_dir=str(tmp_path), shard_size=64, progress=False)
    assert result.decoded == 304 and result.usable == 300
    errors = result.errors
    assert len(errors) == 4
    expected = {"wrong pixel count": "expected 2304 pixels", "non-numeric pixel": "not an integer",
                "unknown label": "unknown label", "unknown usage": "unknown Usage"}
    for fault in info["faults"]:
        row = errors[errors["line"] == fault["line"]]
        assert len(row) == 1 and row.iloc[0]["path"] == fault["path"], fault
        assert expected[fault["kind"]] in row.iloc[0]["reason"]

    items, images = load_images(result)
    assert sorted(items["uid"]) == sorted(info["good"])
    assert images.shape == (300, 48, 48) and images.dtype == np.uint8
    lines = (root / "fer2013.csv").read_text().splitlines()
    for k in (0, 150, 299):  # the cached image and label are the CSV row's
        row = parse_row(lines[int(items["line"][k]) - 1])
        np.testing.assert_array_equal(images[k], row["image"])
        assert items["label"][k] == row["label"] and items["split"][k] == row["split"]
    assert set(items["split"]) == {"train", "val", "test"}
    counts = np.bincount(items["label"], minlength=7)
    assert counts[LABELS.index("disgust")] == counts.min() and counts[LABELS.index("happy")] == counts.max()

    warm = read_fer2013(root, cache_dir=str(tmp_path), progress=False)
    assert warm.decoded == 0 and len(warm.errors) == 4


def test_pandas_parse_of_a_clean_file_matches(ray_cluster, synth, tmp_path):
    root = synth("fer2013", n=120, seed=5, faults=False)
    items, images = load_images(read_fer2013(root, cache_dir=str(tmp_path), progress=False))
    frame, pandas_images = read_with_pandas(root)
    np.testing.assert_array_equal(images, pandas_images)
    assert items["label"].tolist() == frame["emotion"].tolist()


def test_upsampling_counts_flags_and_seed():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 20)
    index, flags = upsample_minorities(labels, seed=3)
    up = labels[index]
    assert np.bincount(up).tolist() == [50, 50, 50]
    assert flags.sum() == (50 - 5) + (50 - 20) and not flags[:75].any()  # originals first, unflagged
    assert (index[:75] == np.arange(75)).all()
    assert set(up[flags]) == {1, 2}  # only minority classes are copied
    index2, _ = upsample_minorities(labels, seed=3)
    assert (index == index2).all() and not (index == upsample_minorities(labels, seed=4)[0]).all()


def test_flagged_images_get_brightness_in_range_and_originals_are_untouched():
    rng = np.random.default_rng(0)
    images = rng.integers(40, 200, size=(6, 48, 48)).astype(np.uint8)  # no clipping at ×1.1
    labels = np.arange(6, dtype=np.int64)
    flags = np.array([False, True, True, True, True, False])
    batches = FerBatches(images, labels, flags, batch_size=4, seed=0, shuffle=True)
    assert len(batches) == 2

    def epoch(n):
        batches.set_epoch(n)
        seen = {}
        for x, y, flag in batches:
            assert x.shape[1:] == (1, 48, 48) and x.dtype == torch.float32
            for xi, yi, fi in zip(x, y.tolist(), flag.tolist()):
                ratio = (xi[0] / (torch.from_numpy(images[yi]).float() / 255)).flatten()
                assert torch.allclose(ratio, ratio[0], atol=1e-5)  # one factor per draw, for the whole image
                assert fi == flags[yi]
                seen[yi] = float(ratio[0])
        assert sorted(seen) == list(range(6))  # every image once per epoch
        return seen

    draws = [epoch(n) for n in range(10)]
    factors = [d[i] for d in draws for i in range(6) if flags[i]]
    assert all(d[0] == pytest.approx(1.0) and d[5] == pytest.approx(1.0) for d in draws)  # originals untouched
    assert 0.9 <= min(factors) and max(factors) <= 1.1 and max(factors) - min(factors) > 0.1
    assert epoch(3) == draws[3]  # seeded by (seed, epoch): the same draws again


def test_class_weights_are_inverse_frequency():
    w = class_weights(np.array([0] * 30 + [1] * 10), 3)
    assert w[1] / w[0] == pytest.approx(3.0) and w[2] == 0
    assert float((w[np.array([0] * 30 + [1] * 10)]).mean()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_shape_params_and_a_step_lowers_the_loss(name):
    torch.manual_seed(0)
    net = build_fer_net(name, dropout=0.0)
    assert count_params(net) == PARAMS[name]
    x, y = torch.rand(16, 1, 48, 48), torch.randint(0, 7, (16,))
    assert net(x).shape == (16, 7)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="unknown architecture"):
        build_fer_net("vgg", 0.0)


@pytest.mark.slow
def test_smoke_sweep_logged_to_mlflow(ray_cluster, mlflow_server, tmp_path):
    from sweeps.fer_architectures import STUDY
    from sweeps.runner import main

    arms = ["basic_cnn", "emotion_se"]  # every architecture's size is checked above; two run the sweep
    table = main(STUDY, ["--smoke", "--arms", ",".join(arms), "--tracking-uri", mlflow_server.uri, "--experiment", "test-fer",
                         "--name", "fer-smoke", "--storage-path", str(tmp_path / "ray"),
                         "--results-out", str(tmp_path / "fer.csv"), "--verbose", "0"])
    assert sorted(table["arm"]) == sorted(arms)
    assert (table["status"] == "OK").all() and (table["epochs_done"] == 2).all()
    assert table.set_index("arm")["total_params"].to_dict() == {a: PARAMS[a] for a in arms}
    assert (table["train_items_per_s"] > 0).all()
    assert all(f"test_f1_{c}" in table.columns for c in LABELS)
    assert table.set_index("arm").loc["basic_cnn", "dropout"] == 0.0  # the arm's own reproduction value

    client = MlflowClient(mlflow_server.uri)
    (parent,), children = sweep_runs(client, "test-fer")
    assert len(children) == 2
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"fer.csv", "fer.arms.csv", "fer.arms.md", "dataset_report.md", "examples.png", "fer.arms.png"} <= parent_files
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_f1_disgust")
        assert [m.step for m in history] == [1, 2]
        for key in ("train_loss", "val_loss", "train_acc", "val_acc", "val_macro_f1", "test_acc"):
            assert key in child.data.metrics
        assert int(child.data.params["upsampled_copies"]) > 0
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"confusion_matrix.png", "classification_report.txt"} <= files
