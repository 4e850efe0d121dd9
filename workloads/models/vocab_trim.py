"""Vocabulary trimming: keep only the embedding rows of the pieces a corpus uses.

multilingual-e5-small spends 96M of its 117.5M parameters on 250k word pieces; FarsTail uses
about 6k of them. `trim_vocabulary` tokenizes the corpus, keeps the pieces it uses plus the
special tokens, and writes an ordinary Hugging Face folder whose tokenizer emits the new ids
directly and whose embedding matrix holds only the kept rows, in the original order.

Why it is exact on the corpus: a Unigram tokenizer picks the best-scoring segmentation from
its vocabulary; the corpus's own segmentation uses kept pieces only, so it is still available
and still the best in any subset. WordPiece's greedy longest match likewise never needed a
removed piece. Other text (outside the corpus) may fall back to shorter pieces or `<unk>`.
BPE merges are not a vocabulary subset problem, so BPE tokenizers are refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

TRIM_MARKER = "emosweep_trim.json"


def _used_ids(tokenizer, texts: Iterable[str]) -> set[int]:
    backend = tokenizer.backend_tokenizer
    used: set[int] = set()
    batch: list[str] = []

    def flush():
        for enc in backend.encode_batch(batch, add_special_tokens=False):
            used.update(enc.ids)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= 4096:
            flush()
    flush()
    return used


def _remap_tokenizer_json(spec: dict, kept: list[int]) -> dict:
    """The tokenizer.json of the trimmed model: vocabulary subset, every id renumbered."""
    new_id = {old: new for new, old in enumerate(kept)}
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [model["vocab"][i] for i in kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    elif model["type"] == "WordPiece":
        by_id = {i: piece for piece, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for new, old in enumerate(kept)}
    else:
        raise ValueError(f"vocabulary trimming supports Unigram and WordPiece tokenizers, not {model['type']}")
    for tok in spec.get("added_tokens") or []:
        tok["id"] = new_id[tok["id"]]

    def walk(node):  # post-processor templates name special tokens by id
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "ids" and isinstance(value, list):
                    node[key] = [new_id[i] for i in value]
                elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                    node[key] = [value[0], new_id[value[1]]]
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(spec.get("post_processor"))
    return spec


def trim_vocabulary(model_dir: str | os.PathLike, texts: Iterable[str], out_root: str | os.PathLike | None = None) -> dict:
    """Write (once) a copy of the encoder in `model_dir` that knows only the pieces of `texts`.
    Returns {"path", "pieces_kept", "pieces_before", "params_before", "params_after"}; the same
    model and corpus find the same folder again without tokenizing anything (an index keyed by
    the tokenizer, the config and the texts)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from ..core.paths import publish_folder

    model_dir = Path(model_dir)
    root = Path(out_root or model_dir.parent)
    texts = list(dict.fromkeys(texts))  # each distinct text once (FarsTail repeats its premises)
    # The same model and corpus again: the folder is found without tokenizing the corpus
    corpus = hashlib.sha256()
    for name in ("tokenizer.json", "config.json"):
        corpus.update((model_dir / name).read_bytes() if (model_dir / name).exists() else b"")
    for text in texts:
        corpus.update(text.encode("utf-8", "surrogatepass") + b"\0")
    index = root / f"{model_dir.name}-trim-index" / f"{corpus.hexdigest()[:20]}.json"
    if index.exists():
        found = Path(json.loads(index.read_text())["path"])
        if (found / TRIM_MARKER).exists():
            return {**json.loads((found / TRIM_MARKER).read_text()), "path": str(found)}

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model_dir}: vocabulary trimming needs a fast tokenizer (tokenizer.json)")
    kept = sorted(_used_ids(tokenizer, texts) | set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder))
    digest = hashlib.sha256(json.dumps([model_dir.name, kept]).encode()).hexdigest()[:12]
    out = root / f"{model_dir.name}-trim{len(kept)}-{digest}"

    def remember() -> None:
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(out)}))
        os.replace(tmp, index)

    if (out / TRIM_MARKER).exists():
        remember()
        return {**json.loads((out / TRIM_MARKER).read_text()), "path": str(out)}

    # Work on the checkpoint's tensors, not on a model object: a model class would add what the
    # checkpoint lacks (e5 has no pooler) and save it as if it were pretrained.
    config = json.loads((model_dir / "config.json").read_text())
    tensors = load_file(model_dir / "model.safetensors")
    vocab = config["vocab_size"]
    before = sum(t.numel() for t in tensors.values())
    rows = torch.tensor(kept)
    if kept[-1] >= vocab:
        raise ValueError(f"{model_dir}: tokenizer id {kept[-1]} is beyond the {vocab} embedding rows")
    sliced = [k for k, t in tensors.items() if t.shape[:1] == (vocab,) and ("word_embeddings" in k or "predictions" in k)]
    if not sliced:
        raise ValueError(f"{model_dir}: no word-embedding tensor of {vocab} rows in model.safetensors")
    for key in sliced:
        tensors[key] = tensors[key][rows].contiguous()
    config["vocab_size"] = len(kept)
    new_id = {o: n for n, o in enumerate(kept)}
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if config.get(key) is not None:
            config[key] = new_id.get(config[key])

    facts = {"source": str(model_dir.name), "pieces_before": len(tokenizer), "pieces_kept": len(kept),
             "params_before": before, "params_after": sum(t.numel() for t in tensors.values())}

    def build(tmp: Path) -> None:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        (tmp / "tokenizer.json").write_text(json.dumps(_remap_tokenizer_json(spec, kept), ensure_ascii=False),
                                            encoding="utf-8")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, tmp / name)
        if len(AutoTokenizer.from_pretrained(tmp, local_files_only=True)) != len(kept):
            raise RuntimeError(f"the trimmed tokenizer does not have the {len(kept)} pieces kept")
        for name in os.listdir(model_dir):  # provenance markers travel with the model
            if name.startswith("emosweep_") and name != TRIM_MARKER and name.endswith(".json"):
                shutil.copy2(model_dir / name, tmp / name)
        (tmp / TRIM_MARKER).write_text(json.dumps(facts, indent=2) + "\n")

    publish_folder(out, build, TRIM_MARKER)
    remember()
    return {**facts, "path": str(out)}
