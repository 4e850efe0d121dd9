"""S1, MELD fusion: the text prefix cache is exact, the ablation silences one modality, a
transcripts-only folder runs the text arm and names why the others cannot, and a smoke sweep
logs every arm with its ablation and a servable MLflow model."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workloads.models.fusion import FUSIONS, FusionHead, FusionModel


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from workloads.models.encoders import make_tiny_bert
    from workloads.models.text import TextEncoder

    texts = ["Great, I know.", "Oh my God, he is lost.", "What?", "so we should just go and talk about it"]
    path = make_tiny_bert(tmp_path_factory.mktemp("fusion-models") / "bert3", texts, layers=3, hidden=32, heads=2,
                          intermediate=64, seed=1)
    return TextEncoder(path, max_length=32), texts


def test_text_prefix_cache_reproduces_the_encoder(tiny_text):
    """The state entering the top layer plus that layer, run with the key-padding mask, gives
    the encoder's own last hidden state at every real token (texts of different lengths)."""
    from workloads.models.text import run_text_layers

    encoder, texts = tiny_text
    states, mask = encoder.hidden_states(texts)
    assert states.shape[:2] == (len(texts), encoder.n_states) and mask.sum(1).unique().numel() > 1
    out = run_text_layers(encoder.layers[-1:], states[:, -2], mask)
    real = mask.unsqueeze(-1)
    torch.testing.assert_close(out * real, states[:, -1] * real, atol=1e-5, rtol=1e-5)
    # the same from a cache that held each text alone, unpadded, then padded in a batch
    alone = [encoder.hidden_states([t])[0][0, -2] for t in texts]
    from workloads.meld_fusion import _pad

    padded, pad_mask = _pad(alone)
    torch.testing.assert_close(run_text_layers(encoder.layers[-1:], padded, pad_mask) * real, states[:, -1] * real,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f not in ("text", "audio")])
def test_ablation_silences_one_modality(fusion):
    """With the audio zeroed, the output no longer depends on the audio, and likewise for
    text; without ablation it depends on both."""
    torch.manual_seed(0)
    head = FusionHead(fusion, 16, 12, 7, width=8, hidden=8, dropout=0.0).eval()
    model = FusionModel(head)
    tokens, frames = torch.randn(3, 5, 16), torch.randn(3, 9, 12)
    token_mask = torch.ones(3, 5, dtype=torch.bool)
    frame_mask = torch.arange(9)[None] < torch.tensor([9, 4, 6])[:, None]

    def out(t, f):
        return model(t, token_mask, f, frame_mask)

    assert not torch.allclose(out(tokens, frames), out(tokens, torch.randn(3, 9, 12)))
    assert not torch.allclose(out(tokens, frames), out(torch.randn(3, 5, 16), frames))
    model.ablate = "audio"
    torch.testing.assert_close(out(tokens, frames), out(tokens, torch.randn(3, 9, 12)))
    model.ablate = "text"
    torch.testing.assert_close(out(tokens, frames), out(torch.randn(3, 5, 16), frames))


def test_transcripts_only_folder_runs_the_text_arm_alone(synth, tmp_path):
    """A folder with the MELD CSVs and no media (like ../shared/data/meld-text) is read as
    transcripts; the arms that need audio say why they cannot run."""
    from workloads import meld_fusion

    src = synth("meld", 40, 3, False)
    for name in ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"):
        shutil.copy(src / name, tmp_path / name)
    config = {"data_dir": str(tmp_path), "seed": 0}
    manifest = meld_fusion.read_manifest(config)
    assert len(manifest.items) == 40 and set(manifest.items["path"]) == {""}
    assert "no media" in config["audio_missing"]
    assert meld_fusion.unavailable({**config, "fusion": "text"}) is None
    for fusion in ("concat", "audio", "gated", "cross_attention"):
        assert "needs audio" in meld_fusion.unavailable({**config, "fusion": fusion})
    # with media, nothing is missing
    config = {"data_dir": str(src), "seed": 0}
    meld_fusion.read_manifest(config)
    assert config["audio_missing"] == "" and meld_fusion.unavailable({**config, "fusion": "concat"}) is None


@pytest.mark.slow
def test_lookalike_splits_the_signal_between_modalities(fusion_sweep):
    """The hard look-alike the sweep ran on: some transcripts lack a cue word, and the twin
    classes share cue words (text) or voices (audio)."""
    from workloads.core.paths import emosweep_home
    from workloads.data.corpora import read_meld
    from workloads.data.synth import MELD_CUES, ensure_generated

    root = ensure_generated(emosweep_home() / "data", "meld", LOOKALIKE["n"], LOOKALIKE["seed"],
                            difficulty=LOOKALIKE["difficulty"])  # the sweep's: generated once
    items = read_meld(root).items
    cue_words = {w for words in MELD_CUES.values() for w in words}
    has_cue = items["text"].str.lower().str.replace(".", "", regex=False).str.split().map(
        lambda ws: bool(set(ws) & cue_words))
    assert 0.35 < has_cue.mean() < 0.65  # about 1 − d of them
    disgust = items[(items["label"] == "disgust") & has_cue]
    assert len(disgust) and disgust["text"].str.lower().str.contains("|".join(MELD_CUES["anger"])).all()


# ----------------------------------------------------------------------------- one sweep, served and browsed

EXPERIMENT = "test-fusion"


ARMS = ["late_concat", "text_only", "audio_only"]  # the other fusions: the unit tests above and the study's own runs
LOOKALIKE = {"n": 320, "seed": 42, "difficulty": 0.5}


@pytest.fixture(scope="module")
def fusion_sweep(ray_cluster, mlflow_server, tmp_path_factory):
    """One sweep serves every test below: the hard MELD look-alike, real pretrained encoders
    from the shelf (MiniLM, whisper-tiny.en), frozen (finetune_top=0: the cache holds their
    last states and only the heads train), each trial's model logged to MLflow."""
    from sweeps.meld_fusion import STUDY
    from sweeps.runner import main

    out = tmp_path_factory.mktemp("fusion")
    return main(STUDY, ["--arms", ",".join(ARMS), "--text-model", "minilm", "--audio-model", "whisper-tiny.en",
                        "--set", f"synth_n={LOOKALIKE['n']}", "--set", f"synth_difficulty={LOOKALIKE['difficulty']}",
                        "--set", "finetune_top=0", "--set", "epochs=10", "--set", "batch_size=8",
                        "--set", 'log_model=["late_concat"]',
                        "--seed", str(LOOKALIKE["seed"]), "--tracking-uri", mlflow_server.uri,
                        "--experiment", EXPERIMENT, "--name", "fusion-lookalike", "--storage-path", str(out / "ray"),
                        "--results-out", str(out / "fusion.csv"), "--verbose", "0"])


def exp_tags(client, experiment_id: str) -> dict:
    return client.get_experiment(experiment_id).tags


def _runs_by_arm(client):
    from mlflow_runs import sweep_runs

    (parent,), children = sweep_runs(client, EXPERIMENT)
    return parent, {r.data.tags["arm"]: r for r in children}


@pytest.mark.slow
def test_sweep_logs_every_arm_its_ablation_and_a_model(fusion_sweep, mlflow_server):
    from mlflow.tracking import MlflowClient

    table = fusion_sweep.set_index("arm")
    assert sorted(table.index) == sorted(ARMS)
    assert (table["status"] == "OK").all() and (table["epochs_done"] == 10).all()
    fused = ["late_concat"]
    assert table.loc[fused, ["test_acc_no_audio", "test_acc_no_text"]].notna().all().all()
    assert table.loc[["text_only", "audio_only"], "test_acc_no_audio"].isna().all()
    assert table.loc["text_only", "trainable_params"] < table.loc["late_concat", "trainable_params"]
    assert set(table["model"]) == {"text: sentence-transformers/all-MiniLM-L6-v2; audio: openai/whisper-tiny.en "
                                   "(encoder) [5-s window]"}

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent, runs = _runs_by_arm(client)
    assert any(k.startswith("mlflow.sharedViewState.") for k in exp.tags)
    for arm, run in runs.items():  # log_model names the arms whose trials log their model
        assert run.data.tags.get("model_uri", "").startswith("models:/") == (arm == "late_concat"), arm
        if arm in fused:
            assert "test_acc_no_audio" in run.data.metrics and "val_acc_no_text" in run.data.metrics


@pytest.mark.slow
def test_fusion_beats_each_modality_on_the_hard_lookalike(fusion_sweep):
    """On the look-alike at difficulty 0.5, with real pretrained encoders, text alone and audio
    alone each fall well short, and the report's late fusion beats both on the test split; its
    ablation says the same from the other side."""
    acc = fusion_sweep.set_index("arm")["test_acc"]
    late = fusion_sweep.set_index("arm").loc["late_concat"]
    assert acc["text_only"] < 0.8 and acc["audio_only"] < 0.8, acc.to_dict()
    assert acc["late_concat"] > max(acc["text_only"], acc["audio_only"]) + 0.03, acc.to_dict()
    assert late["test_acc_no_audio"] < late["test_acc"] and late["test_acc_no_text"] < late["test_acc"], late


def _wav(path, seconds=1.5, seed=0):
    import soundfile as sf

    from workloads.data.synth import class_voices, speaker_traits, synthesize

    rng = np.random.default_rng(seed)
    sf.write(path, synthesize(class_voices(7, 1)[3], speaker_traits(rng), seconds, 16000, rng), 16000)
    return str(path)


@pytest.mark.slow
def test_served_model_reads_text_and_audio_bytes(fusion_sweep, mlflow_server, tmp_path):
    """The logged pyfunc, loaded back from MLflow, takes a transcript and any audio file's
    bytes and returns seven probabilities; a file that is not audio is a clear MediaError."""
    from mlflow.tracking import MlflowClient

    from workloads import demo
    from workloads.data.audio import MediaError

    _, runs = _runs_by_arm(MlflowClient(mlflow_server.uri))
    model, run = demo.load(mlflow_server.uri, EXPERIMENT, runs["late_concat"].info.run_id)
    wav = open(_wav(tmp_path / "a.wav"), "rb").read()
    out = model.predict(pd.DataFrame({"text": ["Wow, that is great!", ""], "audio": [wav, wav]}))
    assert list(out.columns) == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(MediaError, match="unreadable"):
        model.predict(pd.DataFrame({"text": ["x"], "audio": [b"not audio at all"]}))


@pytest.mark.slow
def test_demo_page_in_a_real_browser(fusion_sweep, mlflow_server, tmp_path):
    """Chromium types a transcript, uploads a wav, submits, and reads seven probabilities that
    sum to 1; a broken file gets a message on the page."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    from browser import chromium, screenshot, wait_for
    from workloads import demo
    from workloads.core.mlflow_server import free_port

    _, runs = _runs_by_arm(MlflowClient(mlflow_server.uri))
    model, run = demo.load(mlflow_server.uri, EXPERIMENT, runs["late_concat"].info.run_id)
    app = demo.build_app(model, run)
    port = free_port()
    demo.launch(app, "127.0.0.1", port, max_file_mb=1, prevent_thread_lock=True, quiet=True)
    driver = None
    try:
        driver = chromium()
        driver.get(f"http://127.0.0.1:{port}/")
        box = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#transcript textarea"), what="the transcript box")
        box.send_keys("Wow, that is unbelievable!")
        upload = driver.find_element(By.CSS_SELECTOR, "#audio input[type=file]")
        upload.send_keys(_wav(tmp_path / "clip.wav"))
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#audio audio, #audio .waveform-container, #audio "
                                                             "button[aria-label*='Play' i]"), what="the upload")
        driver.find_element(By.CSS_SELECTOR, "#predict").click()
        text = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#probabilities textarea").get_attribute("value"),
                        what="the probabilities")
        screenshot(driver, "demo-prediction")
        probs = dict(line.split(": ") for line in text.strip().splitlines())
        assert list(probs) == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
        assert abs(sum(float(v) for v in probs.values()) - 1) < 1e-3
        assert "Most likely" in driver.find_element(By.CSS_SELECTOR, "#status").text
        assert driver.find_elements(By.CSS_SELECTOR, "#chart canvas, #chart svg"), "no bar chart drawn"

        bad = tmp_path / "broken.wav"
        bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
        driver.find_element(By.CSS_SELECTOR, "#audio button[aria-label*='Clear' i]").click()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#audio input[type=file]"), what="an empty upload")
        driver.find_element(By.CSS_SELECTOR, "#audio input[type=file]").send_keys(str(bad))
        time.sleep(1.0)
        driver.find_element(By.CSS_SELECTOR, "#predict").click()
        message = wait_for(lambda: "broken.wav" in driver.find_element(By.CSS_SELECTOR, "body").text
                           and driver.find_element(By.CSS_SELECTOR, "body").text, what="the bad-audio message")
        screenshot(driver, "demo-bad-audio")
        assert "Traceback" not in message

        # over the cap (1 MB here; `emosweep demo --max-file-mb`): refused with a reason, not stored
        big = _wav(tmp_path / "long.wav", seconds=40)  # 1.3 MB
        assert Path(big).stat().st_size > 1e6
        driver.find_element(By.CSS_SELECTOR, "#audio button[aria-label*='Clear' i]").click()
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#audio input[type=file]"), what="an empty upload")
        driver.find_element(By.CSS_SELECTOR, "#audio input[type=file]").send_keys(big)
        refusal = wait_for(lambda: next((line for line in driver.find_element(By.CSS_SELECTOR, "body").text.splitlines()
                                         if "size" in line.lower() or "large" in line.lower()), None),
                           what="the upload-size refusal")
        screenshot(driver, "demo-too-large")
        assert "long.wav" in refusal and "1.0 Mb" in refusal, refusal  # Gradio's: names the file and the cap
        uploads = [p for p in Path(tempfile.gettempdir(), "gradio").rglob("long.wav")] if Path(
            tempfile.gettempdir(), "gradio").exists() else []
        assert not uploads, f"the refused file was stored: {uploads}"
    finally:
        if driver is not None:
            driver.quit()
        app.close()


@pytest.mark.slow
def test_emosweep_ui_opens_one_row_per_arm_and_the_trials_compare(fusion_sweep, mlflow_server, tmp_path):
    """`emosweep ui` opens the sweep's own MLflow view, which lists one row per arm with its
    mean and 95% CI at first sight; the compare page of three trial runs draws its charts."""
    import json
    import os
    import subprocess
    import sys
    from urllib.parse import quote

    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    from browser import chromium, screenshot, wait_for
    from mlflow_runs import arm_runs

    client = MlflowClient(mlflow_server.uri)
    parent, runs = _runs_by_arm(client)
    exp = client.get_experiment_by_name(EXPERIMENT)
    rows = {r.data.tags["arm"]: r for r in arm_runs(client, EXPERIMENT)}
    assert set(rows) == set(runs) and all(r.data.tags["selected"] == "true" for r in rows.values())
    # `emosweep ui SWEEP` opens the sweep's shared view (saved again once the arm rows exist) in
    # the user's browser: here a BROWSER command that writes down the address it is handed
    opened = tmp_path / "opened.txt"
    recorder = tmp_path / "browser.py"
    recorder.write_text(f"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])\n")
    ui = subprocess.run(["emosweep", "ui", "fusion-lookalike", "--tracking-uri", mlflow_server.uri],
                        env={**os.environ, "BROWSER": f"{sys.executable} {recorder} %s"}, capture_output=True,
                        text=True, timeout=120)
    assert ui.returncode == 0, ui.stderr
    url = opened.read_text()
    assert url == (f"{mlflow_server.uri}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                   f"&viewStateShareKey=sweep-{parent.info.run_id[:12]}") and url in ui.stdout
    driver = chromium()
    try:
        driver.get(url)
        # the rows first, then their metric columns: what the user sees at first sight, unscrolled
        body = wait_for(lambda: all(rows[a].info.run_name in driver.find_element(By.TAG_NAME, "body").text
                                    for a in rows) and driver.find_element(By.TAG_NAME, "body").text,
                        timeout=60, what="the arm rows")
        body = wait_for(lambda: "test_acc_mean" in (text := driver.find_element(By.TAG_NAME, "body").text) and text,
                        timeout=20, what="the test_acc_mean column in view")
        screenshot(driver, "mlflow-arms")
        assert "test_acc_mean" in body and "val_acc_mean" in body and "test_acc_diff" in body
        # the interval's column is chosen too (this sweep's arms ran once each, so none has one to show)
        view = json.loads(exp_tags(client, exp.experiment_id)[f"mlflow.sharedViewState.sweep-{parent.info.run_id[:12]}"])
        assert "metrics.`test_acc_ci95`" in view["selectedColumns"] and "tags.selected = 'true'" in view["searchFilter"]
        assert f"{rows['late_concat'].data.metrics['test_acc_mean']:.4f}"[:5] in body
        assert not any(r.info.run_name in body for r in runs.values())  # the trials sit under their arm rows
        three = [runs[a].info.run_id for a in ("late_concat", "text_only", "audio_only")]
        driver.get(f"{mlflow_server.uri}/#/compare-runs?runs={quote(json.dumps(three))}"
                   f"&experiments={quote(json.dumps([exp.experiment_id]))}&workflowType=machine_learning")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot, svg.main-svg")) > 0,
                 timeout=60, what="the compare charts")
        text = driver.find_element(By.TAG_NAME, "body").text
        screenshot(driver, "mlflow-compare")
        assert all(runs[a].info.run_name in text for a in ("late_concat", "text_only", "audio_only"))
    finally:
        driver.quit()

