"""S4, the Attention_BLSTM study: the report's parameter count, the cross-corpus class map,
early stopping, and a smoke sweep whose model predicts the top emotions of a file."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from workloads.models.blstm import KERAS_PARAMS_6, TORCH_EXTRA_BIAS, AttentionBLSTM, keras_parameter_count


def test_parameter_count_is_the_reports():
    model = AttentionBLSTM(46, 6)
    assert keras_parameter_count(model) == KERAS_PARAMS_6 == 758_022
    assert sum(p.numel() for p in model.parameters()) == 758_022 + TORCH_EXTRA_BIAS == 760_070
    assert model(torch.randn(2, 157, 46)).shape == (2, 6)


def test_cross_corpus_class_map():
    from sweeps.blstm_attention import ARMS
    from workloads.blstm_attention import CLASS_MAP, CORPUS_CLASSES, arm_classes
    from workloads.data.corpora import EMODB_LABELS, RAVDESS_EMOTIONS, SHEMO_LABELS

    # every reader's labels map onto the canonical names, in the reader's order
    from workloads.blstm_attention import CANONICAL

    assert [CANONICAL[v] for v in RAVDESS_EMOTIONS.values()] == CORPUS_CLASSES["ravdess"]
    assert [CANONICAL[v] for v in SHEMO_LABELS.values()] == CORPUS_CLASSES["shemo"]
    assert [CANONICAL[v] for v in EMODB_LABELS.values()] == CORPUS_CLASSES["emodb"]
    assert set(CLASS_MAP[("emodb", "ravdess")]) == {"anger", "disgust", "fear", "happiness", "sadness", "neutral"}
    assert set(CLASS_MAP[("shemo", "ravdess")]) == {"anger", "fear", "happiness", "neutral", "sadness", "surprise"}
    assert set(CLASS_MAP[("shemo", "emodb")]) == {"anger", "fear", "happiness", "neutral", "sadness"}
    assert "calm" not in CLASS_MAP[("ravdess", "emodb")] and "boredom" not in CLASS_MAP[("emodb", "ravdess")]
    # within a corpus: all its classes; across: the shared ones, listed on the arm for the table
    assert arm_classes(ARMS["ravdess"]) == CORPUS_CLASSES["ravdess"]
    assert ARMS["emodb_to_ravdess"]["classes"].split(",") == CLASS_MAP[("emodb", "ravdess")]
    assert all(ARMS[f"{c}_floor"]["method"] == "floor" for c in ("ravdess", "shemo", "emodb"))


def test_early_stopping_on_validation_loss():
    """fit ends a trial once validation loss has not improved for `patience` epochs."""
    from torch.utils.data import DataLoader, TensorDataset

    from workloads.core.loop import LocalSession, TrainSetup, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)  # nothing to learn
    vx, vy = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    loaders = {"train": DataLoader(TensorDataset(x, y), batch_size=8), "val": DataLoader(TensorDataset(vx, vy), batch_size=64),
               "test": DataLoader(TensorDataset(vx, vy), batch_size=64)}

    def step(model, batch, device):
        logits = model(batch[0])
        return torch.nn.functional.cross_entropy(logits, batch[1]), logits, batch[1]

    setup = TrainSetup(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), loaders=loaders,
                       step=step, class_names=["a", "b", "c"], epochs=30, patience=2)
    session = LocalSession(quiet=True)
    state = fit({"seed": 0}, setup, None, "early", session)
    losses = [r["val_loss"] for r in session.reports]
    assert state["epoch"] < 30 and session.reports[-1]["early_stopped"] == 1
    best = int(np.argmin(losses))
    assert len(losses) == best + 1 + 2  # stopped `patience` epochs after the best validation loss


@pytest.fixture(scope="module")
def blstm_sweep(ray_cluster, mlflow_server, tmp_path_factory):
    from sweeps.blstm_attention import STUDY
    from sweeps.runner import main

    out = tmp_path_factory.mktemp("blstm")
    # two folds of speakers: every arm runs twice, and the table pairs the BLSTM with its floor
    return main(STUDY, ["--smoke", "--set", "synth_n=64", "--arms", "ravdess,emodb_to_ravdess,ravdess_floor", "--tracking-uri",
                        mlflow_server.uri, "--experiment", "test-blstm", "--name", "blstm-smoke", "--folds", "2",
                        "--storage-path", str(out / "ray"), "--results-out", str(out / "blstm.csv"), "--verbose", "0"])


@pytest.mark.slow
def test_smoke_sweep_within_across_and_floor(blstm_sweep):
    assert sorted(blstm_sweep.groupby("arm")["fold"].apply(sorted).to_dict().items()) == [
        ("emodb_to_ravdess", [0, 1]), ("ravdess", [0, 1]), ("ravdess_floor", [0, 1])]
    table = blstm_sweep.drop_duplicates("arm").set_index("arm")
    assert sorted(table.index) == ["emodb_to_ravdess", "ravdess", "ravdess_floor"]
    assert (table["status"].str.startswith("OK")).all(), table["status"]
    assert table.loc["ravdess", "n_classes"] == 8 and table.loc["emodb_to_ravdess", "n_classes"] == 6
    assert table.loc["emodb_to_ravdess", "classes"] == "anger,disgust,fear,happiness,sadness,neutral"
    # logistic regression on mean + std: (2·46 + 1) per class its fold's training speakers show
    floor = blstm_sweep.loc[blstm_sweep["arm"] == "ravdess_floor", "total_params"]
    assert set(floor) <= {(2 * 46 + 1) * k for k in range(2, 9)}, set(floor)
    assert table.loc["ravdess", "total_params"] == sum(p.numel() for p in AttentionBLSTM(46, 8, hidden=64).parameters())


@pytest.mark.slow
def test_predict_prints_the_top_two_of_any_audio_file(blstm_sweep, mlflow_server, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from mlflow_runs import child_runs
    from workloads import predict
    from workloads.data.synth import class_voices, encode_media, speaker_traits, synthesize

    runs = {r.data.tags["arm"]: r for r in child_runs(MlflowClient(mlflow_server.uri), "test-blstm")}
    rng = np.random.default_rng(0)
    clip = tmp_path / "clip.mp4"  # any container FFmpeg reads
    encode_media(clip, synthesize(class_voices(8, 1)[4], speaker_traits(rng), 2.0, 48000, rng), 48000)

    def run(path, arm="ravdess"):
        args = argparse.Namespace(file=str(path), run_id=runs[arm].info.run_id, text=None, top=2,
                                  tracking_uri=mlflow_server.uri)
        return predict.main(args), capsys.readouterr()

    code, out = run(clip)
    assert code == 0, out.err
    lines = out.out.strip().splitlines()[1:]
    assert len(lines) == 2
    probs = [float(line.split()[-1]) for line in lines]
    assert probs[0] >= probs[1] > 0 and lines[0].split()[0] in ("neutral", "calm", "happiness", "sadness", "anger",
                                                                 "fear", "disgust", "surprise")
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVE nothing here")
    code, out = run(bad)
    assert code == 2 and "broken.wav" in out.err and "Traceback" not in out.err
    code, out = run(clip, arm="ravdess_floor")
    assert code == 2 and "logged no model" in out.err


@pytest.mark.slow
def test_two_fold_sweep_writes_the_arm_table_and_nests_its_runs_in_mlflow(blstm_sweep, mlflow_server):
    from pathlib import Path

    import pandas as pd
    from mlflow.tracking import MlflowClient

    from mlflow_runs import arm_runs, sweep_runs

    arms = pd.read_csv(blstm_sweep.attrs["arms_csv"]).set_index("arm")
    assert Path(blstm_sweep.attrs["arms_csv"]).name == "blstm.arms.csv"
    assert sorted(arms.index) == ["emodb_to_ravdess", "ravdess", "ravdess_floor"]
    for column in ("test_acc_mean", "test_acc_std", "test_acc_ci95", "test_uar_mean", "test_macro_f1_ci95", "n_runs"):
        assert column in arms.columns, column
    assert (arms["n_runs"] == 2).all()
    trials = blstm_sweep[blstm_sweep["arm"] == "ravdess"]["test_acc"]
    assert arms.loc["ravdess", "test_acc_mean"] == pytest.approx(trials.mean())
    # the BLSTM is paired with its corpus's floor over the same two folds; a cross-corpus arm has no floor
    assert arms.loc["ravdess", "reference"] == "ravdess_floor" and arms.loc["ravdess", "n_pairs"] == 2
    floor = blstm_sweep[blstm_sweep["arm"] == "ravdess_floor"].sort_values("fold")["test_acc"].to_numpy()
    mine = blstm_sweep[blstm_sweep["arm"] == "ravdess"].sort_values("fold")["test_acc"].to_numpy()
    assert arms.loc["ravdess", "test_acc_diff"] == pytest.approx((mine - floor).mean())
    assert arms.loc["ravdess", "verdict"] in ("better", "worse", "equivalent", "undecided")
    assert arms.loc["ravdess", "test"] == "bayes"  # over 2 folds: the Bayesian correlated t-test
    probs = arms.loc["ravdess", ["p_better", "p_equivalent", "p_worse"]]
    assert probs.sum() == pytest.approx(1.0)
    assert pd.isna(arms.loc["emodb_to_ravdess", "reference"])
    assert Path(blstm_sweep.attrs["arms_csv"]).with_suffix(".png").exists()

    client = MlflowClient(mlflow_server.uri)
    (parent,), trials_runs = sweep_runs(client, "test-blstm")
    rows = arm_runs(client, "test-blstm")
    assert {r.data.tags["arm"] for r in rows} == set(arms.index) and len(rows) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in rows)
    by_id = {r.info.run_id: r for r in rows}
    assert len(trials_runs) == 6
    for run in trials_runs:  # each fold run sits under its (arm, configuration) run, tagged with its place
        holder = by_id[run.data.tags["mlflow.parentRunId"]]
        assert holder.data.tags["arm"] == run.data.tags["arm"] and run.data.tags["fold"] in ("0", "1")
        assert run.data.tags["seed"] == "42"
    row = next(r for r in rows if r.data.tags["arm"] == "ravdess")
    assert row.data.tags["selected"] == "true" and row.data.metrics["n_runs"] == 2
    assert row.data.metrics["test_acc_mean"] == pytest.approx(arms.loc["ravdess", "test_acc_mean"])
    assert "test_acc_ci95" in row.data.metrics and "p_value" in row.data.metrics and "p_better" in row.data.metrics
    assert "clean" in parent.data.tags["split_gate"]


@pytest.mark.slow
def test_a_planted_leak_is_refused_by_name(ray_cluster, synth, tmp_path, capsys):
    """The same recording under two actors' names: the gate finds identical audio in two parts
    and refuses before any trial starts, naming both files."""
    import shutil

    from sweeps.blstm_attention import STUDY
    from sweeps.runner import main

    root = tmp_path / "ravdess"
    shutil.copytree(synth("ravdess", 48, seed=3, faults=False), root)
    clips = sorted(root.rglob("*.wav"))
    src = next(c for c in clips if c.parent.name == "Actor_01")
    fields = src.stem.split("-")
    other = next(c.parent for c in clips if c.parent.name not in ("Actor_01",))
    twin = other / ("-".join(fields[:-1] + [other.name.split("_")[1]]) + src.suffix)
    shutil.copy(src, twin)
    with pytest.raises(SystemExit) as refused:  # one actor per test fold: the twins always land apart
        main(STUDY, ["--smoke", "--ravdess", str(root), "--arms", "ravdess_floor", "--folds", "loso",
                     "--storage-path", str(tmp_path / "ray"), "--verbose", "0"])
    message = capsys.readouterr().err
    assert refused.value.code == 2
    assert "identical audio" in message and src.name in message and twin.name in message


def test_speaker_normalization_uses_each_speakers_own_frames():
    import pandas as pd

    from workloads.data.study_items import speaker_standardized

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"uid": ["a1", "a2", "b1"]})
    items = {"x/a1": {"speaker": "A"}, "x/a2": {"speaker": "A"}, "x/b1": {"speaker": "B"}}
    arrays = [rng.normal(5, 2, (10, 3)), rng.normal(5, 2, (6, 3)), rng.normal(-1, 9, (8, 3))]
    _, normed = speaker_standardized(frame, arrays, "x", items)
    a = np.concatenate(normed[:2])
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(normed[2].mean(0), 0, atol=1e-5)
    both = np.concatenate(arrays[:2])  # speaker A's statistics, from both of A's clips
    np.testing.assert_allclose(normed[1], (arrays[1] - both.mean(0)) / (both.std(0) + 1e-6), rtol=1e-5)
