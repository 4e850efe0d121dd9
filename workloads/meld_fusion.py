"""S1: MELD text + audio late fusion, with the report's inference-time ablation, as a Ray Tune
trainable.

Only the last transformer layer of each encoder trains (the report's setup), so the frozen
bottoms run once per corpus, not once per trial and epoch: the driver (`prepare`) caches the
state entering the top layer(s) of the text encoder (data/encoder_cache.encode_texts) and of
the audio encoder (encode_corpus, the pooling study's prefix cache). A trial reads both,
trains copies of the top layers and a fusion head (models/fusion.py), and at every epoch that
improves dev accuracy also scores the test split with each modality zeroed. At its end the
best epoch is logged as an MLflow pyfunc model (workloads/serving.py) that takes a transcript
and an audio file and returns the seven class probabilities: `emosweep demo` serves it.
"""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from .core.graphs import GraphedTrainStep, capturable, rate, round_up, wants_graphs
from .core.loop import EpochShardSampler, TrainSetup, class_weights, fit, pick_device, require_splits
from .core.seeding import seed_everything
from .data.audio import caps_line, media_caps, with_media_caps
from .data.study_items import study_items, write_items
from .models.fusion import FusionModel, build_model, load_encoders, uses
from .core.errors import UserError

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "meld_fusion"
SAMPLE_RATE = 16000


# ----------------------------------------------------------------------------- cached data

def load_cached(config: dict, text: bool, audio: bool) -> dict:
    """split → (token states, frame states, frame counts, labels), each list per item; a
    modality the arm does not use is a list of None."""
    from .data.pipeline import read_stage

    items = study_items(config)
    tokens, frames = {}, {}
    if text:
        frame, arrays = read_stage(config["cache_fs"], config["text_dir"], "states")
        tokens = {uid: torch.from_numpy(np.array(a)) for uid, a in zip(frame["uid"], arrays) if uid in items}
    if audio:
        frame, arrays = read_stage(config["cache_fs"], config["audio_dir"], "states")
        frames = {uid: (torch.from_numpy(np.array(a)), int(n))
                  for uid, a, n in zip(frame["uid"], arrays, frame["frames"]) if uid in items}
    out = {s: ([], [], [], []) for s in ("train", "val", "test")}
    for uid, row in items.items():
        if (text and uid not in tokens) or (audio and uid not in frames):
            continue  # the driver keeps only items both caches hold; a stale cache is no reason to crash
        t, a, n, y = out[row["split"]]
        t.append(tokens.get(uid))
        state, count = frames.get(uid, (None, 0))
        a.append(state)
        n.append(count)
        y.append(row["y"])
    return out


class FusionItems(torch.utils.data.Dataset):
    def __init__(self, tokens, frames, counts, labels):
        self.tokens, self.frames, self.counts, self.labels = tokens, frames, counts, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.tokens[i], self.frames[i], self.counts[i], self.labels[i]


def _pad(arrays: list[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    width = round_up(max(a.shape[0] for a in arrays), multiple)
    out = torch.zeros((len(arrays), width, arrays[0].shape[-1]), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    lengths = torch.tensor([a.shape[0] for a in arrays])
    return out, torch.arange(width)[None] < lengths[:, None]


# Under CUDA graphs, padded widths round up to these (tokens, frames): few shapes, few captures
GRAPH_PAD = (16, 50)


def collate(batch, pad: tuple[int, int] = (1, 1)):
    """(tokens, token mask, frames, frame mask, labels); None for a modality the arm does not
    use. Token and frame counts are padded to the batch's longest, rounded up to `pad`."""
    tokens = token_mask = frames = frame_mask = None
    if batch[0][0] is not None:
        tokens, token_mask = _pad([b[0] for b in batch], pad[0])
    if batch[0][1] is not None:
        frames, _ = _pad([b[1] for b in batch], pad[1])
        counts = torch.tensor([b[2] for b in batch])
        frame_mask = torch.arange(frames.shape[1])[None] < counts[:, None]
    return tokens, token_mask, frames, frame_mask, torch.tensor([b[3] for b in batch])


# ----------------------------------------------------------------------------- model

def make_optimizer(model: FusionModel, lr: float, head_lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW, the encoder tops at `lr` and the head at `head_lr`; on a GPU fused and
    capturable, with the learning rates as device tensors (a CUDA-graphed step)."""
    head = [p for p in model.head.parameters()]
    tops = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    return torch.optim.AdamW([{"params": tops, "lr": rate(lr, device)}, {"params": head, "lr": rate(head_lr, device)}],
                             weight_decay=weight_decay, **capturable(device))


def make_step(weights: torch.Tensor | None):
    def step(model, batch, device):
        tokens, token_mask, frames, frame_mask, y = (t.to(device, non_blocking=True) if t is not None else None
                                                     for t in batch)
        logits = model(tokens, token_mask, frames, frame_mask)
        w = weights.to(device) if weights is not None else None
        return torch.nn.functional.cross_entropy(logits.float(), y, weight=w), logits, y
    return step


def ablation(model: torch.nn.Module, evaluate) -> dict:
    """The report's inference-time ablation: the best epoch scored again with the audio
    features zeroed (what text alone carries) and with the text features zeroed."""
    core = getattr(model, "module", model)  # the DDP wrapper in a data-parallel trial
    out = {}
    for modality in ("audio", "text"):
        core.ablate = modality
        try:
            test, val = evaluate("test"), evaluate("val")
        finally:
            core.ablate = None
        out.update({f"test_acc_no_{modality}": test["acc"], f"test_weighted_f1_no_{modality}": test["weighted_f1"],
                    f"test_macro_f1_no_{modality}": test["macro_f1"], f"val_acc_no_{modality}": val["acc"]})
    return out


def logs_model(config: dict) -> bool:
    """`log_model`: true (every trial), false, or a list of the arms whose trials log theirs."""
    wanted = config.get("log_model", True)
    return config["arm"] in wanted if isinstance(wanted, (list, tuple)) else bool(wanted)


def run_name(config: dict) -> str:
    return f"{config['arm']} lr={config['lr']:.0e} head_lr={config['head_lr']:.0e} w={config['fusion_width']}"


def spec_of(config: dict) -> dict:
    """What the served model needs to rebuild itself (the MLflow model's spec.json)."""
    keys = ("fusion", "classes", "text_dim", "audio_dim", "fusion_width", "head_hidden", "dropout", "finetune_top",
            "max_length", "clip_seconds", "window_seconds", "seed", "text_model_id", "audio_model_id", "arm")
    return {k: config.get(k) for k in keys}


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    """One trial. Under Tune it reports there and returns nothing; in a plain process pass a
    LocalSession and read the returned state: its "best" holds the best epoch's metrics."""
    from .core.on_ray import configure_threads

    configure_threads()
    seed_everything(int(config["seed"]))
    text, audio = uses(config["fusion"])
    data = require_splits(load_cached(config, text, audio), labels=3)
    text_encoder, speech_encoder = load_encoders(config, text, audio)
    model = build_model(config, text_encoder, speech_encoder)
    del text_encoder, speech_encoder  # the trial trains copies of the top layers; the rest is cached
    labels = data["train"][3]
    weights = class_weights(labels, len(config["classes"]))  # the report's class-weighted cross-entropy
    device = pick_device()
    # On a GPU the training step is a replayed CUDA graph (at the report's batch of 4 it is launch-bound)
    graphs = wants_graphs(config, device)
    pad = GRAPH_PAD if graphs else (1, 1)
    loaders = {}
    for split, (tokens, frames, counts, ys) in data.items():
        sampler = EpochShardSampler(len(ys), int(config["seed"]), shuffle=split == "train")
        loaders[split] = DataLoader(FusionItems(tokens, frames, counts, ys), sampler=sampler,
                                    collate_fn=functools.partial(collate, pad=pad),
                                    batch_size=int(config["batch_size"]) if split == "train" else 64)
    model.to(device)
    optimizer = make_optimizer(model, float(config["lr"]), float(config["head_lr"]), float(config["weight_decay"]),
                               device)
    step = make_step(weights)
    grad_clip = config.get("grad_clip", 1.0)
    info = {"fusion": config["fusion"], "train_items": len(labels), "finetune_top": int(config.get("finetune_top", 1)),
            "text_model": config["text_model_id"] if text else "", "audio_model": config["audio_model_id"] if audio else ""}
    setup = TrainSetup(
        model=model, optimizer=optimizer, loaders=loaders, step=step, class_names=config["classes"],
        epochs=int(config["epochs"]), grad_clip=grad_clip, info={**info, "cuda_graphs": bool(graphs)},
        train_step=GraphedTrainStep(model, optimizer, step, device, grad_clip) if graphs else None,
        tags={"workload": WORKLOAD, "arm": config["arm"], "fusion": config["fusion"],
              "text_model_id": config["text_model_id"] if text else "",
              "audio_model_id": config["audio_model_id"] if audio else "",
              "random_init": str(bool(config.get("random_init"))).lower(),
              "dataset_fingerprint": config["dataset_fingerprint"]},
        best_metrics=ablation if text and audio else None,
        export=(lambda best, run: export_model(config, best, run)) if logs_model(config) else None)
    fit(config, setup, tracking, run_name(config))


def export_model(config: dict, best_weights: dict, run) -> str | None:
    """Log the best epoch as a model (code + spec.json + safetensors weights + the encoder
    folders it runs on), with a signature (text, audio bytes → class probabilities)."""
    from .serving import log_model

    text, audio = uses(config["fusion"])
    encoders = {}
    for used, key in ((text, "text_model_path"), (audio, "audio_model_path")):
        if used:
            path = config[key]
            if not os.path.isdir(path):  # a hub id: the model would not be self-contained
                print(f"[emosweep] not logging a model: {path} is not a local folder", flush=True)
                return None
            encoders[key.replace("_model_path", "_encoder")] = path
    return log_model(run, spec_of(config), best_weights, encoders)


# ----------------------------------------------------------------------------- serving (no Ray, no MLflow)

# ----------------------------------------------------------------------------- driver side

def _resolve(config: dict, requested: str | None, default_key: str, fallback: str, prefix: str) -> None:
    from .models.encoders import resolve_model

    resolved = resolve_model(requested, default=config[default_key], fallback=fallback)
    config.update({f"{prefix}_model_path": resolved.path, f"{prefix}_model_id": resolved.label})
    config["random_init"] = bool(config.get("random_init")) or resolved.random_init


def resolve_encoders(config: dict, texts: list[str], smoke: bool = False, text_model: str | None = None,
                     audio_model: str | None = None) -> dict:
    """Text and audio encoders: --text-model / --audio-model (hub ids, folders, shelf names,
    `offline`), else the report's, else the shelf's stand-ins; --smoke: tiny random models."""
    from .core.paths import emosweep_home
    from .models.encoders import make_tiny_bert
    from .models.speech import make_tiny_hubert

    home = emosweep_home() / "models"
    if smoke and not text_model:
        path = make_tiny_bert(home / f"tiny-bert-meld-s{config['seed']}", texts[:2000], layers=2, hidden=32,
                              heads=2, intermediate=64, seed=int(config["seed"]))
        config.update(text_model_path=path, text_model_id="tiny-random-bert", random_init=True)
    else:
        _resolve(config, text_model, "text_model", "minilm", "text")
    if config.get("audio_missing"):
        config.update(audio_model_path=None, audio_model_id="(no audio)")
    elif smoke and not audio_model:
        path = make_tiny_hubert(home / f"tiny-hubert-s{config['seed']}", seed=int(config["seed"]))
        config.update(audio_model_path=path, audio_model_id="tiny-random-hubert", random_init=True)
    else:
        _resolve(config, audio_model, "audio_model", "whisper-base", "audio")
    config["model_id"] = f"text: {config['text_model_id']}; audio: {config['audio_model_id']}"
    return config


def read_manifest(config: dict):
    """MELD with its media; a folder with the CSVs and no media at all is read as transcripts
    only (config["audio_missing"] says why the audio arms cannot run)."""
    import pandas as pd

    from .data.corpora import read_meld
    from .data.manifest import stratified_subset

    manifest = read_meld(config["data_dir"])
    config["audio_missing"] = ""
    if manifest.items.empty and len(manifest.problems) and \
            manifest.problems["reason"].str.startswith("media not found").all():
        manifest = read_meld(config["data_dir"], require_media=False)
        config["audio_missing"] = (f"{config['data_dir']} holds the MELD transcripts but no media "
                                   f"(dia*_utt*.mp4) at all")
    if manifest.items.empty:
        raise UserError(f"{config['data_dir']}: no usable MELD utterances; the reader said:\n"
                         f"{manifest.problems.head(10).to_string()}")
    limit = config.get("max_items")
    if limit:  # the CPU subset: each split cut to its share of max_items, classes kept in proportion
        share = int(limit) / len(manifest.items)
        parts = [stratified_subset(manifest.split(s), max(1, round(share * len(manifest.split(s)))),
                                   int(config["seed"])) for s in ("train", "val", "test")]
        manifest.items = pd.concat(parts, ignore_index=True)
    return manifest


def prepare(config: dict, *, smoke: bool = False, text_model: str | None = None,
            audio_model: str | None = None, max_seconds: float | None = None, max_file_mb: float | None = None) -> dict:
    """Driver-side, once per sweep: the corpus (or its look-alike), both encoders, and the
    states entering their top layers in the cache."""
    from .data.encoder_cache import actor_plan, encode_corpus, encode_texts
    from .data.synth import study_corpus
    from .models.speech import speech_encoder_facts

    import pandas as pd

    config = with_media_caps(config, max_seconds, max_file_mb)
    uses(config["fusion"])
    study_corpus(config, "meld", "utterances")
    manifest = read_manifest(config)
    resolve_encoders(config, manifest.items["text"].tolist(), smoke, text_model, audio_model)
    if config.get("encode_precision", "auto") != "auto":
        from .models.speech import check_precision

        check_precision(config["encode_precision"])  # before any work: one line and exit 2
    k = int(config.get("finetune_top", 1))
    from transformers import AutoConfig

    text_config = AutoConfig.from_pretrained(config["text_model_path"])
    if not 0 <= k <= text_config.num_hidden_layers:
        raise UserError(f"finetune_top {k}: the text encoder has {text_config.num_hidden_layers} layers")
    config.update(text_dim=text_config.hidden_size, classes=list(manifest.classes),
                  dataset_fingerprint=manifest.fingerprint())
    actors, gpus = actor_plan(config.get("encode_actors"))
    texts = encode_texts(manifest, config["text_model_path"], prefix_layer=text_config.num_hidden_layers - k,
                         max_length=int(config["max_length"]), fingerprint=config["dataset_fingerprint"],
                         precision=config.get("encode_precision", "auto"), actors=actors, num_gpus=gpus, progress=False)
    print(f"[emosweep] text encoder states: {texts.summary()}")
    config["encode_precision"] = texts.stages["text_states"].params["precision"]  # auto, resolved
    config.update(cache_fs=texts.fs_uri, text_dir=texts.stages["text_states"].dir)
    dropped = texts.errors[texts.errors["stage"] != "read"]
    if not config["audio_missing"]:
        try:
            facts = speech_encoder_facts(config["audio_model_path"], config.get("whisper_window"),
                                         float(config["clip_seconds"]))
        except ValueError as e:
            raise UserError(str(e)) from None
        if not 0 <= k <= facts["n_layers"]:
            raise UserError(f"finetune_top {k}: the audio encoder has {facts['n_layers']} layers")
        config.update(audio_dim=facts["dim"], window_seconds=facts["window_seconds"])
        config["audio_model_id"] += facts["label_suffix"]
        audio = encode_corpus(manifest, config["audio_model_path"], fingerprint=config["dataset_fingerprint"],
                              window_seconds=config["window_seconds"], clip_seconds=float(config["clip_seconds"]),
                              prefix_layer=facts["n_layers"] - k, dtype=config.get("cache_dtype", "float16"),
                              batch_size=int(config.get("encode_batch") or 0),
                               precision=config.get("encode_precision", "auto"), actors=actors, num_gpus=gpus,
                              progress=False, caps=media_caps(config))
        print(f"[emosweep] audio encoder states: {audio.summary()}")
        config["audio_dir"] = audio.stages["encoder_states"].dir
        dropped = pd.concat([dropped, audio.errors[audio.errors["stage"] != "read"]], ignore_index=True)
    else:
        config["audio_dim"] = 0
        print(f"[emosweep] {config['audio_missing']}: only the text-only arm can run")
    config["model_id"] = f"text: {config['text_model_id']}; audio: {config['audio_model_id']}"
    bad = set(dropped["path"])
    usable = manifest.items[~manifest.items["path"].isin(bad) | (manifest.items["path"] == "")]
    config["dropped_items"] = int(len(manifest.items) - len(usable))
    config["reader_problems"] = int(len(manifest.problems))
    y = {c: i for i, c in enumerate(manifest.classes)}
    table = usable.assign(y=[y[label] for label in usable["label"]])[["uid", "y", "split", "speaker"]]
    return write_items(config, table, f"{manifest.name}-{config['dataset_fingerprint']}")


def unavailable(config: dict) -> str | None:
    """Why an arm cannot run on this data (None when it can)."""
    text, audio = uses(config["fusion"])
    if audio and config.get("audio_missing"):
        return f"it needs audio, and {config['audio_missing']}"
    return None


def describe(config: dict) -> dict:
    """The data report: utterances per class and split, what was dropped and why."""
    import pandas as pd

    items = study_items(config)
    rows = pd.DataFrame([{"label": config["classes"][v["y"]], "split": v["split"]} for v in items.values()])
    counts = rows.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=["train", "val", "test"])
    text = (f"# MELD as used: {config['data_source']}\n\n{config['model_id']}\n\n"
            f"{len(items)} utterances; {config['reader_problems']} CSV rows the reader could not use and "
            f"{config['dropped_items']} utterances whose media or transcript could not be encoded were dropped "
            f"(listed in the cache's errors.csv).\n\n{caps_line(config)}\n{counts.to_markdown()}\n")
    return {"dataset_report.md": text}
