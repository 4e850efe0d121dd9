"""S2: the pooling registry, the frozen-encoder cache and prefix cache against the live
encoder (the shelf's real whisper-tiny.en, float32 states), cache keys, and a smoke sweep of
all seven arms on a generated RAVDESS look-alike, logged to MLflow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mlflow_runs import sweep_runs
from workloads import speech_pooling
from workloads.data.audio import decode_audio
from workloads.data.encoder_cache import encode_corpus
from workloads.data.corpora import read_corpus
from workloads.models.pooling import POOLINGS, build_pooling
from workloads.speech_pooling import speaker_stats
from workloads.models.shelf import shelf_model_path
from workloads.models.speech import SpeechEncoder, make_tiny_hubert, run_layers

ARMS = ["masked_mean", "masked_max", "mean_std", "attention", "first_frame", "weighted_layers", "layer_mean",
        "layers_mean", "layers_mean_std", "probe"]


@pytest.mark.parametrize("name", sorted(POOLINGS))
def test_poolings_ignore_padded_frames(name):
    torch.manual_seed(0)
    pool = build_pooling(name, dim=8, n_layers=3, layer=1 if name == "layer_mean" else -1)
    states = torch.randn(2, 3, 10, 8)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :6], mask[1, :10] = True, True
    out = pool(states, mask)
    assert out.shape == (2, pool.out_dim)
    garbage = states.clone()
    garbage[0, :, 6:] = 1e3  # what sits in the padding must not matter
    assert torch.allclose(pool(garbage, mask), out, atol=1e-5)
    if name != "first_frame":  # and the real frames do
        changed = states.clone()
        changed[0, :, 3] += 5
        assert not torch.allclose(pool(changed, mask)[0], out[0])


def test_speaker_norm_standardizes_each_speakers_real_frames_and_the_probe_reads_every_layer():
    torch.manual_seed(0)
    lengths = [5, 7, 4, 6]
    speakers = ["a", "a", "b", "b"]
    states = [torch.randn(3, 8, 4) * (1 + 3 * (s == "b")) + 2 * (s == "b") for s in speakers]  # b: louder, shifted
    stats = speaker_stats(states, lengths, speakers)
    assert stats["a"][0].shape == (3, 1, 4)
    batch = [(x, 0, n, stats[s]) for x, n, s in zip(states, lengths, speakers)]
    normed, mask, _ = speech_pooling.collate_cached(batch)
    for who in ("a", "b"):  # over that speaker's real frames: mean 0, std 1, per layer and dimension
        real = torch.cat([normed[i, :, :lengths[i]] for i in range(4) if speakers[i] == who], dim=1)
        assert torch.allclose(real.mean(1), torch.zeros(3, 4), atol=1e-4)
        assert torch.allclose(real.std(1, unbiased=False), torch.ones(3, 4), atol=1e-3)
    plain, mask, _ = speech_pooling.collate_cached([(x, 0, n, None) for x, n in zip(states, lengths)])
    X = build_pooling("layers_mean", 4, 3)(plain, mask)  # the probe's features
    assert X.shape == (4, 3 * 4)
    assert np.allclose(X[1, 4:8].numpy(), states[1][1, :7].mean(0).numpy(), atol=1e-6)  # layer 1, real frames


def test_unknown_pooling_and_layer_are_clear_errors():
    with pytest.raises(ValueError, match="unknown pooling"):
        build_pooling("median", 8, 3)
    with pytest.raises(ValueError, match="does not exist"):
        build_pooling("layer_mean", 8, 3, layer=5)


def test_derived_arrays_kept_on_disk_are_read_back_memory_mapped(tmp_path):
    """kept_on_disk's `mapped` arrays (the pooled vectors) come back from their own .npy as a
    read-only memory map, the same values, with make() not run again (the process that made
    them holds the map too); a missing .npy is made again rather than an error."""
    import warnings

    (tmp_path / "flat").mkdir()
    config = {"states_dir": str(tmp_path), "items_file": "items-0123.parquet"}
    made = []
    vectors = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)

    def make():
        made.append(1)
        return {"uids": np.array([f"clip{i}" for i in range(50)]), "vectors": vectors.copy()}

    def keep():
        return speech_pooling.kept_on_disk(config, ("pooled", "t"), make, lambda v: dict(v), lambda f: f,
                                           mapped=("vectors",))

    first = keep()
    assert made == [1] and isinstance(first["vectors"], np.memmap) and not first["vectors"].flags.writeable
    assert sorted(f.name.split(".", 1)[1] for f in (tmp_path / "flat").iterdir()) == ["npz", "vectors.npy"]
    again = keep()
    assert made == [1], "read back, not made again"
    assert isinstance(again["vectors"], np.memmap) and not again["vectors"].flags.writeable
    np.testing.assert_array_equal(again["vectors"], vectors)
    assert again["uids"].tolist() == [f"clip{i}" for i in range(50)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pooled vectors' own unpack: torch views of the map, quietly
        rows = dict(zip(again["uids"].tolist(), speech_pooling._mapped_rows(again["vectors"])))
    assert torch.equal(rows["clip3"], torch.from_numpy(vectors[3]))
    next((tmp_path / "flat").glob("*.vectors.npy")).unlink()
    assert keep()["vectors"].shape == (50, 7) and made == [1, 1]


@pytest.fixture(scope="module")
def small_ravdess(synth):
    root = synth("ravdess", n=10, seed=3, faults=True)
    return read_corpus("ravdess", root)


def _items(manifest, mask_bad=()):
    y = {c: i for i, c in enumerate(manifest.classes)}
    return {r.uid: {"y": y[r.label], "split": "train", "speaker": r.speaker, "path": r.path}
            for r in manifest.items.itertuples() if r.path not in mask_bad}


@pytest.mark.parametrize("finetune_top", [0, 1])
def test_cached_states_give_the_live_encoders_logits(ray_cluster, small_ravdess, tmp_path, finetune_top):
    """Frozen cache (every layer at real frames) and prefix cache (the state entering the top
    layer, whole window): a trial's logits on cached states equal the live encoder's."""
    path = shelf_model_path("whisper-tiny.en")
    encoder = SpeechEncoder(path, window_seconds=5.0)
    n_layers = encoder.n_states - 1
    result = encode_corpus(small_ravdess, path, window_seconds=5.0, clip_seconds=4.0, dtype="float32",
                           precision="fp32", prefix_layer=n_layers - finetune_top if finetune_top else None,
                           cache_dir=str(tmp_path / "cache"), progress=False)
    bad = set(result.errors["path"])
    planted = {"unreadable", "empty audio", "silent audio", "no audio stream"}
    assert planted <= set(result.errors["reason"])  # every bad file reported, none fatal
    items = _items(small_ravdess, bad)
    assert len(items) == 10
    config = {"seed": 0, "cache_fs": result.fs_uri, "states_dir": result.stages["encoder_states"].dir,
              "items": items, "pooling": "attention", "head_width": 16, "dropout": 0.0,
              "finetune_top": finetune_top}
    data = speech_pooling.load_cached(config)["train"]  # in the cache's order
    cached_states, cached_mask, _ = speech_pooling.collate_cached(list(zip(*data)))
    model = speech_pooling.build_model(config, encoder.n_states, encoder.dim, 8, encoder).eval()
    if finetune_top:  # the top layer trains, though the encoder it was copied from stays frozen
        assert all(p.requires_grad for p in model.top.parameters())
    waves = [decode_audio(items[u]["path"])[:64000] for u in _cache_uids(result) if u in items]
    with torch.no_grad():
        live_states, live_mask = encoder.hidden_states(waves, "fixed", 4.0)
        if finetune_top:  # the cache holds the state entering the top layer, at every frame of the window
            first = n_layers - finetune_top
            assert cached_states.shape[2] == live_states.shape[2] == 250
            live = model(live_states[:, first:first + 1], live_mask)
            top = run_layers(model.top, cached_states[:, 0].float(), model.final_norm)[-1]
            assert (top - live_states[:, -1]).abs().max() <= 1e-4  # the top on the cache = the encoder's output
        else:  # the cache holds every layer at the real frames only
            assert torch.equal(cached_mask, live_mask[:, :cached_mask.shape[1]])
            live = model(live_states, live_mask)
        cached = model(cached_states, cached_mask)
    assert (cached - live).abs().max() <= 1e-4


def _cache_uids(result):
    from workloads.data.pipeline import read_stage

    frame, _ = read_stage(result.fs_uri, result.stages["encoder_states"].dir, "states")
    return list(frame["uid"])


@pytest.mark.slow
def test_cache_key_follows_encoder_corpus_and_clip_policy(ray_cluster, small_ravdess, tmp_path):
    cache = str(tmp_path / "cache")
    tiny = make_tiny_hubert(tmp_path / "hubert", seed=0)
    other = make_tiny_hubert(tmp_path / "hubert-other", seed=1)
    a = encode_corpus(small_ravdess, tiny, clip_seconds=2.0, cache_dir=cache, progress=False)
    again = encode_corpus(small_ravdess, tiny, clip_seconds=2.0, cache_dir=cache, progress=False)
    assert again.stages["encoder_states"].dir == a.stages["encoder_states"].dir
    assert again.decoded == 0 and again.stages["encoder_states"].cached == len(small_ravdess.items)
    dirs = {a.stages["encoder_states"].dir,
            encode_corpus(small_ravdess, tiny, clip_seconds=3.0, cache_dir=cache, progress=False).stages[
                "encoder_states"].dir,
            encode_corpus(small_ravdess, other, clip_seconds=2.0, cache_dir=cache, progress=False).stages[
                "encoder_states"].dir}
    assert len(dirs) == 3  # another clip policy or other weights never read a stale entry


PLAN = """
import json, sys
from workloads.data.encoder_cache import actor_plan
plan = actor_plan()
ray = sys.modules.get("ray")
print(json.dumps({"plan": plan, "ray": bool(ray and ray.is_initialized()),
                  "cpus": int(ray.cluster_resources()["CPU"]) if ray and ray.is_initialized() else None}))
"""


@pytest.mark.slow
def test_encoder_actors_are_planned_on_the_ray_that_will_run_them():
    """A process that calls a workload's prepare before any Ray is up gets one encoder actor a
    core of the Ray it starts, as the sweep's driver does (it got one CPU actor before); in
    `--local` it gets one in-process worker and imports no Ray."""
    import json
    import os
    import subprocess
    import sys

    def plan(**env):
        out = subprocess.run([sys.executable, "-c", PLAN], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **env})
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    started = plan(EMOSWEEP_LOCAL="0")
    assert started["ray"] and started["plan"] == [started["cpus"], 0] and started["cpus"] >= 2
    assert plan(EMOSWEEP_LOCAL="1") == {"plan": [1, 0], "ray": False, "cpus": None}


def test_cross_validation_folds_are_speaker_disjoint():
    items = {f"u{i}": {"y": i % 3, "split": "train", "speaker": f"actor{i % 24:02d}", "path": ""} for i in range(240)}
    seen_test = set()
    for fold in range(4):
        splits = speech_pooling.trial_splits(items, {"seed": 1, "n_folds": 4, "fold": fold, "split_by": "speaker",
                                                     "split_seed": 1})
        by_split = {s: {items[u]["speaker"] for u, v in splits.items() if v == s} for s in ("train", "val", "test")}
        assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
        assert not (by_split["train"] & by_split["val"]) and len(by_split["test"]) == 6
        seen_test |= by_split["test"]
    assert len(seen_test) == 24  # every actor is tested exactly once across the folds


@pytest.mark.slow
def test_pooling_sweep_runs_its_arms_and_logs_to_mlflow(ray_cluster, mlflow_server, tmp_path):
    from sweeps.hubert_pooling import STUDY
    from sweeps.runner import main

    assert list(STUDY.arms) == ARMS
    arms = ["weighted_layers", "layer_mean"]  # every pooling is unit-tested above; these two need the
    # sweep's own handling (every layer cached, a searched layer)
    table = main(STUDY, ["--smoke", "--arms", ",".join(arms), "--tracking-uri", mlflow_server.uri,
                         "--experiment", "test-pooling", "--storage-path", str(tmp_path / "ray"), "--verbose", "0",
                         "--max-concurrent", "2"])
    assert sorted(table["arm"]) == sorted(arms) and (table["status"] == "OK").all()
    assert table["test_acc"].between(0, 1).all() and table["test_uar"].between(0, 1).all()
    assert set(table["model"]) == {"tiny-random-hubert"}
    layer_mean = table[table["arm"] == "layer_mean"].iloc[0]
    assert layer_mean["layer_used"] == 1 and (table[table["arm"] != "layer_mean"]["layer_used"] == 2).all()
    parent, children = sweep_runs(MlflowClient(mlflow_server.uri), "test-pooling")
    assert len(parent) == 1 and len(children) == 2
    assert {c.data.tags["pooling"] for c in children} == set(arms)
    assert all(c.data.tags["random_init"] == "true" for c in children)


def test_a_shemo_folder_is_read_as_shemo(synth):
    config = {"corpus": "ravdess", "data_dir": str(synth("shemo", n=40, seed=2, faults=False)), "seed": 1}
    manifest = speech_pooling.read_manifest(config)
    assert config["corpus"] == "shemo" and len(manifest.items) == 40
    by_split = manifest.items.groupby("split")["speaker"].apply(set)
    assert not (by_split["train"] & by_split["test"])  # speaker-independent


def test_live_encoder_dynamic_padding_pads_less(tmp_path):
    """The padding study's loader: the same clips through the live (frozen) encoder, padded to
    the clip length or to the longest in the batch; dynamic pads less and counts it."""
    encoder = SpeechEncoder(make_tiny_hubert(tmp_path / "hubert", seed=0))
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (1.0, 1.2, 2.5, 3.0)]
    shares = {}
    for padding in ("fixed", "dynamic"):
        loader = speech_pooling.LiveEncoderLoader(encoder, waves, [0, 1, 0, 1], 2,
                                                  torch.utils.data.SequentialSampler(waves), padding, 4.0)
        batches = list(loader)
        assert [b[0].shape[1] for b in batches] == [encoder.n_states] * 2 and loader.clips == 4
        if padding == "dynamic":  # each batch padded to its own longest clip
            assert batches[0][0].shape[2] < batches[1][0].shape[2] == encoder.valid_frames(48000)
        shares[padding] = speech_pooling.live_padding_metrics({"train": loader})["padded_share"]
    assert 0 < shares["dynamic"] < shares["fixed"] < 1
