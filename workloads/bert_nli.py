"""S3: BERT fine-tuning strategies on NLI (FarsTail) as a Ray Tune trainable.

`train(config)` reads FarsTail, tokenizes premise/hypothesis pairs, loads the encoder, applies
one strategy (full, freeze_first, freeze_all_but_last, keep_first, prune_heads) and hands the
rest to the shared epoch loop.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from .core.loop import EpochShardSampler, TrainSetup, fit, pick_device
from .core.on_ray import TrainSession, distributed_rank, run_data_parallel
from .core.graphs import GraphedTrainStep, capturable, rate, round_up, wants_graphs
from .core.seeding import derive_seed, seed_everything
from .data.farstail import LABEL_NAMES, LABELS, read_farstail
from .data.manifest import split_subset
from .models.encoders import load_sequence_classifier, load_tokenizer
from .models.strategies import apply_strategy

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "bert_nli"


@lru_cache(maxsize=4)
def _manifest(data_dir: str | None):
    return read_farstail(data_dir)


def dataset_fingerprint(config: dict) -> str:
    """Corpus content hash plus the subset drawn from it: equal fingerprints, equal data."""
    sizes = "-".join(str(config.get(f"{s}_size") or "all") for s in ("train", "val", "test"))
    return f"{_manifest(config.get('data_dir')).fingerprint()}:{sizes}:s{config['seed']}"


def _encode(tokenizer, frame, max_length: int) -> list[dict]:
    enc = tokenizer(list(frame["text"]), list(frame["text_b"]), truncation=True, max_length=max_length)
    labels = [LABELS.index(x) for x in frame["label"]]
    return [{"input_ids": ids, "attention_mask": am, "labels": y}
            for ids, am, y in zip(enc["input_ids"], enc["attention_mask"], labels)]


def build_loaders(config: dict, tokenizer, rank: int = 0, world: int = 1, pad_multiple: int = 1) -> dict:
    """Loaders over this rank's shard; a data-parallel rank takes batch_size / world items.
    Batches are padded to their longest pair, rounded up to `pad_multiple` pieces (32 under
    CUDA graphs: few distinct shapes, so few captures)."""
    manifest = _manifest(config.get("data_dir"))
    if config["batch_size"] % world:
        raise ValueError(f"batch_size {config['batch_size']} is not divisible by {world} workers")
    pad_id = tokenizer.pad_token_id or 0

    def collate(items):  # dynamic padding: pad to the longest pair in the batch
        width = round_up(max(len(it["input_ids"]) for it in items), pad_multiple)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[i, : len(it["attention_mask"])] = torch.tensor(it["attention_mask"])
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([it["labels"] for it in items])}

    loaders = {}
    for split in ("train", "val", "test"):
        frame = split_subset(manifest.items, split, config)
        items = _encode(tokenizer, frame, config["max_length"])
        if split == "train" and config.get("length_buckets") and world == 1:
            batches = LengthBucketSampler([len(it["input_ids"]) for it in items], config["batch_size"], config["seed"])
            loaders[split] = DataLoader(items, batch_sampler=batches, collate_fn=collate)
            continue
        sampler = EpochShardSampler(len(items), config["seed"], rank, world, shuffle=split == "train")
        # evaluation needs no gradients: larger batches, fewer launches
        bs = config["batch_size"] // world if split == "train" else max(config["batch_size"], 64) // world
        loaders[split] = DataLoader(items, batch_size=bs, sampler=sampler, collate_fn=collate)
    return loaders


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar length, so dynamic padding pads little: each epoch (seeded) shuffles,
    sorts windows of 50 batches by length, cuts them into batches and shuffles the batches.
    Every item is seen once per epoch, as with plain shuffling; only the grouping changes,
    and per-pair losses do not depend on it (tests/test_bert_learns.py)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, "buckets", self.epoch))
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return iter([batches[i] for i in torch.randperm(len(batches), generator=g).tolist()])

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


def build_model(config: dict):
    """Encoder + fresh 3-way head, then the arm's strategy. Deterministic from the config, so
    a resumed trial rebuilds the same structure (same pruned heads) before loading weights."""
    seed_everything(config["seed"])
    dropout = config.get("dropout")  # None: the model's own
    overrides = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    model = load_sequence_classifier(config["model_path"], num_labels=len(LABELS), **overrides)
    info = apply_strategy(model, config["strategy"], layers=config.get("layers", 9),
                          prune_fraction=config.get("prune_fraction", 0.5), seed=config["seed"])
    return model, info


def _step(model, batch, device):
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    logits = model(**batch).logits
    return torch.nn.functional.cross_entropy(logits, labels), logits, labels


def run_name(config: dict) -> str:
    return f"{config['arm']} lr={config['lr']:.0e} bs={config['batch_size']}"


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    """The Tune trainable. With workers_per_trial > 1 the trial runs data-parallel on Ray Train."""
    if int(config.get("workers_per_trial", 1)) > 1:
        run_data_parallel(_train_rank, config, tracking)
    else:
        _train(config, tracking)


def _train_rank(loop_config: dict) -> None:
    _train(loop_config["config"], loop_config["tracking"], TrainSession(loop_config["trial_id"]))


def _train(config: dict, tracking: TrackingContext | None, session=None) -> None:
    from transformers import get_linear_schedule_with_warmup

    rank, world = distributed_rank()
    device = pick_device()
    # On one GPU the whole step is a replayed CUDA graph: the loop is launch-bound at batch 16-32
    graphs = wants_graphs(config, device, world)
    tokenizer = load_tokenizer(config["model_path"])
    loaders = build_loaders(config, tokenizer, rank, world, pad_multiple=32 if graphs else 1)
    model, info = build_model(config)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # one fused kernel per step on a GPU; foreach on the CPU
    optimizer = torch.optim.AdamW(params, lr=rate(config["lr"], device), weight_decay=config["weight_decay"],
                                  **(capturable(device) or {"foreach": True}))
    total_steps = config["epochs"] * len(loaders["train"])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config["warmup_ratio"] * total_steps), total_steps)
    grad_clip = config.get("grad_clip", 1.0)
    setup = TrainSetup(
        model=model, optimizer=optimizer, scheduler=scheduler, loaders=loaders, step=_step,
        class_names=LABEL_NAMES, epochs=config["epochs"], grad_clip=grad_clip,
        train_step=GraphedTrainStep(model, optimizer, _step, device, grad_clip) if graphs else None,
        info={**info, "cuda_graphs": bool(graphs)},
        tags={"workload": WORKLOAD, "arm": config["arm"], "model_id": config["model_id"],
              "random_init": str(bool(config.get("random_init"))).lower(),
              "dataset_fingerprint": dataset_fingerprint(config)},
    )
    fit(config, setup, tracking, run_name(config), session)  # returns nothing: Tune would read it as a result


def describe(config: dict) -> dict:
    """S3 asks for the class distribution and the sentence lengths in tokens (of this model's
    tokenizer), per split, for the data the trials actually use."""
    import numpy as np

    manifest = _manifest(config.get("data_dir"))
    tokenizer = load_tokenizer(config["model_path"])
    lines = [f"# FarsTail as used: {dataset_fingerprint(config)}, tokenizer of {config['model_id']}", "",
             "| split | pairs | e | c | n | premise tokens (median / p95) | hypothesis tokens (median / p95) "
             f"| pairs longer than max_length={config['max_length']} |", "|---|---|---|---|---|---|---|---|"]
    for split in ("train", "val", "test"):
        frame = split_subset(manifest.items, split, config)
        counts = frame["label"].value_counts()
        premise = np.array([len(x) for x in tokenizer(list(frame["text"]), add_special_tokens=False)["input_ids"]])
        hypo = np.array([len(x) for x in tokenizer(list(frame["text_b"]), add_special_tokens=False)["input_ids"]])
        over = float(np.mean(premise + hypo + 3 > config["max_length"]))
        lines.append(f"| {split} | {len(frame)} | {counts.get('e', 0)} | {counts.get('c', 0)} | {counts.get('n', 0)} "
                     f"| {np.median(premise):.0f} / {np.percentile(premise, 95):.0f} "
                     f"| {np.median(hypo):.0f} / {np.percentile(hypo, 95):.0f} | {over:.0%} |")
    if len(manifest.problems):
        lines += ["", f"{len(manifest.problems)} rows skipped:", "", manifest.problems.to_markdown(index=False)]
    return {"dataset_report.md": "\n".join(lines) + "\n"}


OFFLINE_FALLBACK = "e5-small"  # multilingual: reads Persian; 12 layers × 12 heads like ParsBERT


def prepare(config: dict, *, smoke: bool = False, model: str | None = None) -> dict:
    """Driver-side, once per sweep: check the data (fail fast, report bad rows) and decide the
    model. --smoke builds a tiny random BERT over FarsTail's characters; otherwise the study's
    default (ParsBERT) or --model is resolved; when ParsBERT is unreachable, the shelf's
    multilingual-e5-small stands in. A shelf model's vocabulary is trimmed to the pieces
    FarsTail uses (exact on this corpus; 117.5M → 24M parameters for e5-small)."""
    from .models.encoders import make_tiny_bert, resolve_model
    from .models.vocab_trim import trim_vocabulary

    manifest = _manifest(config.get("data_dir"))  # cached: describe() and trials' fingerprint reuse it
    if len(manifest.problems):
        print(f"[emosweep] {len(manifest.problems)} FarsTail rows skipped:\n"
              f"{manifest.problems.to_string(max_rows=20)}")
    config = dict(config)
    if smoke and not model:
        from workloads.core.paths import emosweep_home

        texts = list(manifest.items["text"].head(2000)) + list(manifest.items["text_b"].head(2000))
        path = make_tiny_bert(emosweep_home() / "models" / f"tiny-bert-farstail-s{config['seed']}", texts,
                              seed=config["seed"])
        config.update(model_path=path, model_id="tiny-random-bert", model_source="tiny-random", random_init=True)
        return config
    resolved = resolve_model(model, default=config["model"], fallback=OFFLINE_FALLBACK)
    model_id, path = resolved.label, resolved.path
    if resolved.source == "shelf" and config.get("trim_vocab", True):
        trim = trim_vocabulary(path, list(manifest.items["text"]) + list(manifest.items["text_b"]))
        path = trim["path"]
        model_id += f" (vocab trimmed to FarsTail: {trim['pieces_kept']} pieces)"
        config.update(vocab_pieces_kept=trim["pieces_kept"], vocab_pieces_before=trim["pieces_before"],
                      params_before_trim=trim["params_before"], params_after_trim=trim["params_after"])
        print(f"[emosweep] {resolved.model_id}: vocabulary trimmed to the {trim['pieces_kept']:,} of "
              f"{trim['pieces_before']:,} pieces FarsTail uses; {trim['params_before'] / 1e6:.1f}M → "
              f"{trim['params_after'] / 1e6:.1f}M parameters, same outputs on this corpus")
    config.update(model_path=path, model_id=model_id, model_source=resolved.source,
                  random_init=resolved.random_init, stand_in_for=resolved.stand_in_for)
    return config
