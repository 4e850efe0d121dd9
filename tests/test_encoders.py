import time

import pytest
import torch

from workloads.models.encoders import ModelUnavailable, load_sequence_classifier, load_tokenizer, resolve_model

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_shelf_minilm_is_a_real_pretrained_bert():
    resolved = resolve_model("minilm", default="unused")
    assert resolved.source == "shelf" and resolved.model_id == MINILM and not resolved.random_init
    model = load_sequence_classifier(resolved.path, num_labels=3).eval()
    tok = load_tokenizer(resolved.path)
    assert model.config.num_hidden_layers == 6
    with torch.no_grad():
        out = model.bert(**tok(["a happy day", "a joyful day", "tax law"], padding=True, return_tensors="pt"))
    emb = torch.nn.functional.normalize(out.last_hidden_state.mean(1), dim=-1)
    # pretrained weights know that these two sentences are closer than the third
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.1


def test_default_model_falls_back_offline_in_seconds(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    resolved = resolve_model(None, default="HooshvareLab/bert-base-parsbert-uncased")
    assert time.monotonic() - start < 5
    assert resolved.source == "shelf" and resolved.requested == "HooshvareLab/bert-base-parsbert-uncased"
    assert resolved.model_id == MINILM and resolved.stand_in_for == "HooshvareLab/bert-base-parsbert-uncased"
    assert "in its place" in caplog.text


def test_explicit_unreachable_model_fails_at_once_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match=r"--model"):
        resolve_model("someone/not-cached-model", default="x")
    with pytest.raises(ModelUnavailable, match="not found"):
        resolve_model("./no/such/folder", default="x")


def test_local_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelUnavailable, match="no config.json"):
        resolve_model(str(tmp_path), default="x")


def test_tiny_random_model_is_marked_and_loads_through_the_same_code(tiny_bert_12):
    resolved = resolve_model(tiny_bert_12, default="x")
    assert resolved.source == "local" and resolved.random_init
    model = load_sequence_classifier(resolved.path, num_labels=3)
    assert model.config.num_hidden_layers == 12
