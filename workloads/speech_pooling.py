"""S2: how to pool a speech encoder's frames, as a Ray Tune trainable.

The driver (`prepare`) reads the corpus (RAVDESS or ShEMO, or a generated RAVDESS look-alike),
splits it by speaker, resolves the encoder and, when the encoder is frozen, runs it once over
the corpus into the frozen-encoder cache (data/encoder_cache.py). Every trial then reads the
cached hidden states and trains only a pooling (models/pooling.py) and a small head. With
`finetune_top` k > 0 the cache holds the state entering the top k layers (prefix caching)
and the trial fine-tunes those layers on it. With `encoder_mode: live` the trial runs the
frozen encoder itself on every batch, with `padding` fixed (to `clip_seconds`) or dynamic (to
the longest clip in the batch): the regime where padding costs time.
"""
from __future__ import annotations

import copy
import time
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from .core.loop import EpochShardSampler, TrainSetup, class_weights, fit, require_splits
from .core.seeding import derive_seed, seed_everything
from .data.audio import caps_line, media_caps, with_media_caps
from .data.folds import trial_splits
from .data.study_items import study_items, write_items
from .models.pooling import POOLINGS, PooledClassifier, build_pooling
from .models.speech import run_layers
from .core.errors import UserError

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "speech_pooling"
IMBALANCE = ("class_weights", "resample", "none")


# ----------------------------------------------------------------------------- splits and data

class BalancedSampler(torch.utils.data.Sampler):
    """Resampling for imbalance: each epoch draws len(labels) items with replacement, every
    class equally likely, seeded by (seed, epoch)."""

    def __init__(self, labels: list[int], seed: int):
        counts = np.bincount(labels)
        self.weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, "resample", self.epoch))
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist())

    def __len__(self) -> int:
        return len(self.weights)


def pad_states(arrays: list[torch.Tensor]) -> torch.Tensor:
    """Cached per-clip states (L, T_i, D) → (B, L, T_max, D), zero-padded."""
    width = max(a.shape[-2] for a in arrays)
    out = torch.zeros((len(arrays), *arrays[0].shape[:-2], width, arrays[0].shape[-1]), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, ..., :a.shape[-2], :] = a
    return out


@lru_cache(maxsize=1)
def _cached_states(fs_uri: str, states_dir: str) -> tuple[list, list, list]:
    """(uids, per-clip state tensors (L, T, D), real-frame counts) of one frozen-encoder cache.
    Read once per process: Tune reuses a trial's actor for the next trial (and the folds of a
    sweep read the same cache). The tensors are read-only views of the stage's shards, memory-
    mapped where they lie (data/flat.py; the driver indexes them), so no process decodes them and every
    process on the machine shares the same pages; nothing writes to them."""
    import warnings

    from .data.pipeline import read_stage

    frame, arrays = read_stage(fs_uri, states_dir, "states", mapped=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note that the buffer is read-only
        tensors = [torch.from_numpy(a) for a in arrays]
    tensors = [t if t.dim() == 3 else t.unsqueeze(0) for t in tensors]  # a prefix cache holds one layer
    return list(frame["uid"]), tensors, [int(n) for n in frame["frames"]]


def cached_states(config: dict) -> tuple[list, list, list]:
    """(uids, states, real-frame counts) of the sweep's frozen-encoder cache: one corpus's, or
    (sweeps over several corpora) the corpora this trial's arm trains or tests on, with uids
    prefixed by the corpus's name. Only those: a trial of one corpus that mapped and pooled
    all three of a three-corpus sweep held 10 GB, and two of them ran a 24-GB machine out."""
    if "states_dirs" not in config:
        return _cached_states(config["cache_fs"], config["states_dir"])
    return _several_caches(config["cache_fs"], _arm_states_dirs(config))


def _arm_states_dirs(config: dict) -> tuple:
    """((corpus, states folder), …) of the corpora this trial's arm trains or tests on (all,
    for an arm that names none)."""
    used = {config.get("train_corpus"), config.get("test_corpus")} - {None}
    return tuple(sorted((c, d) for c, d in config["states_dirs"].items() if not used or c in used))


@lru_cache(maxsize=1)
def _several_caches(fs_uri: str, dirs: tuple) -> tuple[list, list, list]:
    uids, tensors, frames = [], [], []
    for corpus, states_dir in dirs:
        u, t, f = _cached_states.__wrapped__(fs_uri, states_dir)
        uids += [f"{corpus}/{x}" for x in u]
        tensors += t
        frames += f
    return uids, tensors, frames


def arm_classes(config: dict) -> list[str]:
    """The classes this trial's arm trains and tests on: the arm's own list (a cross-corpus
    arm's shared classes, or a named corpus's), else the corpus's."""
    return str(config["arm_classes"]).split(",") if config.get("arm_classes") else list(config["classes"])


def arm_view(config: dict) -> tuple[dict, dict, dict]:
    """(items, uid → split, uid → class index) for this trial: its fold's (or the study's)
    split, restricted to the parts the arm uses (folds.arm_parts: a cross-corpus arm trains and
    validates on the first corpus and tests on all of the second, or on its given test set)
    and to its classes. Items handed in without labels (tests) carry their class index as `y`."""
    from .data.folds import arm_parts

    items = study_items(config)
    named = config.get("arm_classes") or "classes" in config
    index = {c: i for i, c in enumerate(arm_classes(config))} if named else None
    parts = arm_parts(items, trial_splits(items, config), config.get("train_corpus"), config.get("test_corpus"))
    out, y = {}, {}
    for uid, split in parts.items():
        row = items[uid]
        if index is not None and row["label"] not in index:
            continue
        y[uid] = index[row["label"]] if index is not None else int(row["y"])
        out[uid] = split
    return items, out, y


def speaker_stats(states: list, lengths: list, speakers: list) -> dict:
    """speaker → (mean, std), each (L, 1, D) float32: every layer's statistics over the real
    frames of all that speaker's clips (data/study_items.speaker_statistics). Uses no label."""
    from .data.study_items import speaker_statistics

    stats = speaker_statistics(((who, x[:, :n].numpy()) for x, n, who in zip(states, lengths, speakers)), eps=1e-5)
    return {who: (torch.from_numpy(mean).float(), torch.from_numpy(std).float()) for who, (mean, std) in stats.items()}


_MEMO: dict = {}  # per process, like _cached_states: speaker statistics and pooled vectors of the cache


def _memo(key, make):
    """A small per-process memo (at most 6 entries, oldest out): what every trial of an actor
    would otherwise compute again from the same cache."""
    if key not in _MEMO:
        if len(_MEMO) >= 6:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = make()
    return _MEMO[key]


def _memo_key(config: dict, *more) -> tuple | None:
    """Items handed in directly (tests, plain processes) are not memoized."""
    if "items" in config:
        return None
    return (config["cache_fs"], config.get("states_dir") or _arm_states_dirs(config), config["items_file"], *more)


def kept_on_disk(config: dict, key: tuple, make, pack, unpack, mapped: tuple[str, ...] = ()):
    """make(), kept beside the states' mapping index (`{states}/flat/derived-*.npz`, NumPy only,
    no pickle) for every later process and sweep: a fresh actor, or the next sweep, loads in
    milliseconds what took seconds. Derived from the states and the items file (named by its
    content), so the copy goes when the states' index is rebuilt. Where there is no such
    folder (several corpora, object storage, items handed in), make() alone.

    `mapped`: arrays of pack()'s that are stored as `.npy` files of their own and read back
    memory-mapped, read-only, so that every actor on the machine shares one copy in the page
    cache rather than holding its own (a clip's pooled vector is its largest per-process cost
    at 100,000 clips). The `.npz`, written last, vouches for them."""
    import hashlib
    import os

    folder = os.path.join(config.get("states_dir") or "", "flat")
    if "states_dirs" in config or "items" in config or not os.path.isdir(folder):
        return make()
    name = hashlib.sha256(repr((config["items_file"], *key)).encode()).hexdigest()[:16]
    path = os.path.join(folder, f"derived-{name}.npz")
    arrays = {k: os.path.join(folder, f"derived-{name}.{k}.npy") for k in mapped}

    def with_maps(rest: dict):
        return unpack({**rest, **{k: np.load(a, mmap_mode="r", allow_pickle=False) for k, a in arrays.items()}})

    try:
        with np.load(path, allow_pickle=False) as f:
            rest = {k: f[k] for k in f.files}
        return with_maps(rest)
    except (OSError, ValueError, KeyError):
        pass
    value = make()
    packed = pack(value)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    temps = {k: f"{a}.{os.getpid()}.tmp.npy" for k, a in arrays.items()}
    try:
        for k, t in temps.items():
            np.save(t, packed.pop(k), allow_pickle=False)
            os.replace(t, arrays[k])
        np.savez(tmp, **packed)
        os.replace(tmp, path)
        if mapped:  # the process that made them holds the shared map too, not a copy of its own
            return with_maps(packed)
    except (OSError, ValueError, KeyError):
        pass  # a read-only cache: computed again next time
    finally:
        for t in (tmp, *temps.values()):
            if os.path.exists(t):
                os.unlink(t)
    return value


def speaker_norms(config: dict) -> dict:
    """speaker → (mean, std) of that speaker's cached states (see speaker_stats)."""
    def make():
        uids, tensors, frames = cached_states(config)
        items = study_items(config)
        keep = [i for i, uid in enumerate(uids) if uid in items]
        return speaker_stats([tensors[i] for i in keep], [frames[i] for i in keep],
                             [items[uids[i]]["speaker"] for i in keep])

    def pack(stats):
        who = list(stats)
        return {"speakers": np.array(who, dtype=str), "mean": torch.stack([stats[w][0] for w in who]).numpy(),
                "std": torch.stack([stats[w][1] for w in who]).numpy()}

    def unpack(f):
        return {w: (torch.from_numpy(m), torch.from_numpy(s)) for w, m, s in zip(f["speakers"].tolist(), f["mean"], f["std"])}

    key = _memo_key(config, "speaker_norms")
    return make() if key is None else _memo(key, lambda: kept_on_disk(config, ("speaker_norms",), make, pack, unpack))


@torch.no_grad()
def pooled_vectors(config: dict, pooling) -> dict:
    """uid → the clip's vector under a parameter-free pooling (after speaker normalization when
    asked): the same for every fold and hyper-parameter, so computed once per process."""
    def make():
        uids, tensors, frames = cached_states(config)
        items = study_items(config)
        stats = speaker_norms(config) if config.get("speaker_norm") else {}
        keep = [i for i, uid in enumerate(uids) if uid in items]
        rows = []
        for start in range(0, len(keep), 64):
            batch = [(tensors[i], 0, frames[i], stats.get(items[uids[i]]["speaker"])) for i in keep[start:start + 64]]
            states, mask, _ = collate_cached(batch)
            rows.extend(pooling(states, mask).float())
        return dict(zip((uids[i] for i in keep), rows))
    def pack(vectors):
        return {"uids": np.array(list(vectors), dtype=str), "vectors": torch.stack(list(vectors.values())).numpy()}

    def unpack(f):
        return dict(zip(f["uids"].tolist(), _mapped_rows(f["vectors"])))

    what = (type(pooling).__name__, pooling.layer, pooling.n_layers, bool(config.get("speaker_norm")))
    key = _memo_key(config, *what)
    return make() if key is None else _memo(
        key, lambda: kept_on_disk(config, ("pooled", *what), make, pack, unpack, mapped=("vectors",)))


def _mapped_rows(vectors: np.ndarray) -> torch.Tensor:
    """A tensor over `vectors` without a copy. A read-only memory map is wrapped as it is (torch
    warns that it may not write to it; nothing does: every use stacks or standardizes into new
    tensors)."""
    if vectors.flags.writeable:
        return torch.from_numpy(vectors)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(vectors)


def pooled_splits(config: dict, pooling, ids: dict | None = None) -> dict:
    """split → (pooled vectors, labels, -, -) for this trial's fold and arm, in the cache's order
    (`ids`: filled with split → the items' uids, in that order)."""
    items, splits, y = arm_view(config)
    out = {s: ([], [], [], []) for s in ("train", "val", "test")}
    for uid, vector in pooled_vectors(config, pooling).items():
        if uid not in splits:
            continue
        if ids is not None:
            ids.setdefault(splits[uid], []).append(uid)
        xs, ys, lengths, norms = out[splits[uid]]
        xs.append(vector)
        ys.append(y[uid])
        lengths.append(0)
        norms.append(None)
    return out


def load_cached(config: dict, layer: int | None = None, ids: dict | None = None) -> dict:
    """split → (per-clip state tensors, labels, real-frame counts, per-clip speaker statistics
    or None) from the cache. With `speaker_norm`, each clip is standardized by its speaker's
    statistics in the collate (computed over every clip of that speaker, no labels). With
    `layer`, each clip holds that hidden state only (a view, shape (1, T, D)): what a pooling
    of one layer reads, without padding and standardizing the others every batch."""
    uids, tensors, frames = cached_states(config)
    items, splits, y = arm_view(config)
    keep = [i for i, uid in enumerate(uids) if uid in splits]
    stats = speaker_norms(config) if config.get("speaker_norm") else {}
    one = slice(None) if layer is None else slice(layer, layer + 1)
    norms = [stats.get(items[uids[i]]["speaker"]) for i in keep]
    norms = [None if n is None else (n[0][one], n[1][one]) for n in norms]
    out = {s: ([], [], [], []) for s in ("train", "val", "test")}
    for i, norm in zip(keep, norms):
        if ids is not None:
            ids.setdefault(splits[uids[i]], []).append(uids[i])
        states, labels, lengths, clip_norms = out[splits[uids[i]]]
        states.append(tensors[i][one])
        labels.append(y[uids[i]])
        lengths.append(frames[i])
        clip_norms.append(norm)
    return out


class CachedStates(torch.utils.data.Dataset):
    def __init__(self, states, labels, lengths, norms=None):
        self.states, self.labels, self.lengths = states, labels, lengths
        self.norms = norms or [None] * len(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.states[i], self.labels[i], self.lengths[i], self.norms[i]


def collate_cached(items):
    """(states, real-frame mask, labels). The mask comes from each clip's real frame count, which
    is what the cache stored too (a prefix cache keeps the whole window, padding included).
    Clips that carry their speaker's statistics are standardized by them."""
    states = pad_states([item[0] for item in items])
    lengths = torch.tensor([item[2] for item in items])
    mask = torch.arange(states.shape[2])[None] < lengths[:, None]
    norms = [item[3] if len(item) > 3 else None for item in items]
    if any(n is not None for n in norms):
        states = states.float()
        for i, norm in enumerate(norms):
            if norm is not None:
                states[i] = (states[i] - norm[0]) / norm[1]
    return states, mask, torch.tensor([item[1] for item in items])


class Prepooled(torch.nn.Module):
    """Stands where a parameter-free pooling stood once its vectors are computed: passes them on."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim

    def forward(self, pooled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pooled


def standardize_vectors(data: dict) -> dict:
    """Each feature scaled by the training split's mean and standard deviation, as the probe's
    are: a concatenation of means (about 0) and standard deviations (about 1 after speaker
    normalization) is otherwise dominated by the part with the larger offset, which the head's
    per-clip LayerNorm cannot undo (mean + std pooled this way trained to 0.29 on RAVDESS)."""
    train = torch.stack(data["train"][0])
    mean, std = train.mean(0), train.std(0) + 1e-6
    return {s: ([(v - mean) / std for v in xs], ys, lengths, norms) for s, (xs, ys, lengths, norms) in data.items()}


def collate_pooled(items):
    vectors = torch.stack([v for v, _ in items])
    return vectors, torch.ones(len(items), 1, dtype=torch.bool), torch.tensor([y for _, y in items])


# ----------------------------------------------------------------------------- model

class TopLayersThenPool(torch.nn.Module):
    """Prefix caching: the encoder's top layers (trainable) run on the cached state that
    enters them; the pooling sees the states they produce."""

    def __init__(self, encoder, first_layer: int, classifier: PooledClassifier):
        super().__init__()
        # copies: the frozen encoder stays as it is; these train
        self.top = torch.nn.ModuleList(copy.deepcopy(encoder.layers[first_layer:])).requires_grad_(True)
        norm = encoder.final_norm
        self.final_norm = copy.deepcopy(norm).requires_grad_(True) if norm is not None else None
        self.classifier = classifier

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = run_layers(self.top, states[:, 0].float(), self.final_norm)
        return self.classifier(torch.stack(out, dim=1), mask)


def layer_used(config: dict, n_states: int) -> int:
    """The hidden state a pooling reads: the last, except `layer_mean`, which reads
    round(layer_frac · (n_states − 1)) (searched)."""
    if config["pooling"] != "layer_mean":
        return n_states - 1
    return int(round(float(config.get("layer_frac", 0.5)) * (n_states - 1)))


def reads_one_layer(config: dict) -> bool:
    """Whether the trial's pooling reads one cached hidden state (masked mean, attention, layer
    k, …), so that its data can hold that layer alone (load_cached's `layer`)."""
    return (config.get("encoder_mode", "cached") == "cached" and not int(config.get("finetune_top") or 0)
            and config["pooling"] in POOLINGS and POOLINGS[config["pooling"]].one_layer)


def build_model(config: dict, n_states: int, dim: int, n_classes: int, encoder=None, one_layer: bool = False):
    """The trial's model. `one_layer`: its input holds only the layer the pooling reads (the
    same parameters, fed a view of that layer)."""
    seed_everything(config["seed"])
    k = int(config.get("finetune_top") or 0)
    states_seen = k + 1 if k else n_states
    layer = layer_used(config, n_states) - (n_states - states_seen)
    if layer < 0:
        raise ValueError(f"layer_mean reads hidden state {layer_used(config, n_states)}, below the "
                         f"{k} fine-tuned top layers: lower finetune_top or raise layer_frac")
    if one_layer:
        states_seen, layer = 1, 0
    pooling = build_pooling(config["pooling"], dim, states_seen, layer)
    head = PooledClassifier(pooling, n_classes, int(config["head_width"]), float(config["dropout"]))
    if not k:
        return head
    return TopLayersThenPool(encoder, n_states - 1 - k, head)


def make_step(weights: torch.Tensor | None):
    def step(model, batch, device):
        states, mask, y = (t.to(device, non_blocking=True) for t in batch)
        logits = model(states, mask)
        w = weights.to(device) if weights is not None else None
        return torch.nn.functional.cross_entropy(logits.float(), y, weight=w), logits, y
    return step


# ----------------------------------------------------------------------------- live encoder (padding study)

class LiveEncoderLoader:
    """Batches for the live regime: decode, pad (fixed or dynamic), run the frozen encoder,
    hand the states to the pooling. Records the padding ratio and clips per second."""

    def __init__(self, encoder, waves, labels, batch_size, sampler, padding, clip_seconds):
        self.encoder, self.waves, self.labels = encoder, waves, labels
        self.batch_size, self.sampler, self.padding, self.clip_seconds = batch_size, sampler, padding, clip_seconds
        self.padded = self.real = self.clips = 0
        self.encode_s = 0.0

    def __len__(self):
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = list(iter(self.sampler))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            waves = [self.waves[i] for i in idx]
            t = time.perf_counter()
            states, mask = self.encoder.hidden_states(waves, self.padding, self.clip_seconds)
            self.encode_s += time.perf_counter() - t
            self.real += int(mask.sum())
            self.padded += mask.numel()
            self.clips += len(idx)
            yield states, mask, torch.tensor([self.labels[i] for i in idx])


# ----------------------------------------------------------------------------- the trainable

def run_name(config: dict) -> str:
    norm = " spk-norm" if config.get("speaker_norm") else ""
    if config["pooling"] == "probe":
        return f"{config['arm']} logistic regression C={config['floor_c']:g}{norm}"
    return f"{config['arm']} lr={config['lr']:.0e} w={config['head_width']} {config['imbalance']}{norm}"


def probe_tags(config: dict) -> dict:
    return {"workload": WORKLOAD, "arm": config["arm"], "pooling": "probe", "model_id": config["model_id"],
            "random_init": str(bool(config.get("random_init"))).lower(),
            "dataset_fingerprint": config["dataset_fingerprint"], "speaker_norm": str(bool(config.get("speaker_norm")))}


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    from .core.on_ray import configure_threads

    configure_threads()
    seed_everything(config["seed"])
    classes = arm_classes(config)
    n_classes = len(classes)
    encoder = None
    live = config.get("encoder_mode", "cached") == "live"
    if live or int(config.get("finetune_top") or 0):
        from .models.speech import SpeechEncoder

        encoder = SpeechEncoder(config["model_path"], config.get("window_seconds"))
        for p in encoder.model.parameters():
            p.requires_grad_(False)
    n_states, dim = (encoder.n_states, encoder.dim) if live else (int(config["n_states"]), int(config["dim"]))
    if config["pooling"] == "probe":  # the floor: a standardized logistic regression, no training loop
        from .core.sklearn_trial import fit_floor

        ids = {}
        data = pooled_splits(config, build_pooling("layers_mean", dim, n_states), ids)
        features = {s: (torch.stack(xs).numpy(), np.asarray(ys)) for s, (xs, ys, *_) in data.items()}
        return fit_floor(config, features, classes, tracking, run_name(config), probe_tags(config),
                         {"pooling": "probe", "hidden_states": n_states, "train_clips": len(data["train"][1])},
                         item_ids=ids)
    model = build_model(config, n_states, dim, n_classes, encoder)
    # A pooling with nothing to learn gives every clip the same vector each epoch: pool once (per
    # process: every fold and configuration of an actor shares it), then train the head on the
    # vectors (the same model and batches; about 20× faster).
    prepooled = encoder is None and not any(True for _ in model.pooling.parameters())
    ids = {}  # split → its items' uids, in the loaders' order: the per-item predictions
    if live:
        data = _decode_splits(config, ids)
    elif prepooled:
        data = standardize_vectors(pooled_splits(config, model.pooling, ids))
        model.pooling = Prepooled(model.pooling.out_dim)
    elif reads_one_layer(config):  # the same model (same seed, same parameters), fed its layer alone
        model = build_model(config, n_states, dim, n_classes, encoder, one_layer=True)
        data = load_cached(config, layer=layer_used(config, n_states), ids=ids)
    else:
        data = load_cached(config, ids=ids)
    require_splits(data)
    train_labels = data["train"][1]
    weights = class_weights(train_labels, n_classes) if config["imbalance"] == "class_weights" else None
    loaders = {}
    for split, (xs, ys, lengths, *norms) in data.items():
        if split == "train" and config["imbalance"] == "resample":
            sampler = BalancedSampler(ys, int(config["seed"]))
        else:
            sampler = EpochShardSampler(len(ys), int(config["seed"]), shuffle=split == "train")
        bs = int(config["batch_size"]) if split == "train" else 64
        if live:
            loaders[split] = LiveEncoderLoader(encoder, xs, ys, bs, sampler, config.get("padding", "fixed"),
                                               float(config["clip_seconds"]))
        elif prepooled:
            loaders[split] = DataLoader(list(zip(xs, ys)), batch_size=bs, sampler=sampler, collate_fn=collate_pooled)
        else:
            loaders[split] = DataLoader(CachedStates(xs, ys, lengths, *norms), batch_size=bs, sampler=sampler,
                                        collate_fn=collate_cached)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
    info = {"pooling": config["pooling"], "layer_used": layer_used(config, n_states), "hidden_states": n_states,
            "encoder_dim": dim, "train_clips": len(train_labels), "finetune_top": int(config.get("finetune_top") or 0),
            "encoder_mode": config.get("encoder_mode", "cached")}
    setup = TrainSetup(
        model=model, optimizer=optimizer, loaders=loaders, step=make_step(weights), class_names=classes,
        epochs=int(config["epochs"]), grad_clip=config.get("grad_clip", 1.0), info=info,
        tags={"workload": WORKLOAD, "arm": config["arm"], "pooling": config["pooling"],
              "model_id": config["model_id"], "random_init": str(bool(config.get("random_init"))).lower(),
              "dataset_fingerprint": config["dataset_fingerprint"], "imbalance": config["imbalance"],
              "speaker_norm": str(bool(config.get("speaker_norm")))},
        item_ids=ids)
    if live:  # the padding study's figures, logged with every epoch
        setup.epoch_metrics = lambda: live_padding_metrics(loaders)
    fit(config, setup, tracking, run_name(config))
    if live:
        m = live_padding_metrics(loaders)
        print(f"[emosweep] padding={config.get('padding')}: padded share {m['padded_share']:.1%}, "
              f"encoder {m['encoder_clips_per_s']:.1f} clips/s", flush=True)


def live_padding_metrics(loaders: dict) -> dict:
    """Share of encoder frames that were padding, and clips the encoder took per second, so far."""
    padded = sum(loader.padded for loader in loaders.values())
    real = sum(loader.real for loader in loaders.values())
    seconds = sum(loader.encode_s for loader in loaders.values())
    clips = sum(loader.clips for loader in loaders.values())
    return {"padded_share": 1 - real / max(padded, 1), "encoder_clips_per_s": clips / max(seconds, 1e-9)}


def _decode_splits(config: dict, ids: dict | None = None) -> dict:
    from .data.audio import decode_audio

    items, splits, y = arm_view(config)
    clip = int(float(config["clip_seconds"]) * 16000)
    out = {s: ([], [], []) for s in ("train", "val", "test")}
    for uid, split in splits.items():
        row = items[uid]
        waves, labels, lengths = out[split]
        if ids is not None:
            ids.setdefault(split, []).append(uid)
        start = row.get("start")
        segment = (float(start), float(row["end"])) if start is not None and start == start and start != "" else None
        wave = decode_audio(row["path"], sr=16000, segment=segment, max_seconds=media_caps(config)["max_seconds"])[:clip]
        waves.append(wave)
        labels.append(y[uid])
        lengths.append(len(wave))
    return out


# ----------------------------------------------------------------------------- driver side

def read_manifest(config: dict):
    """The corpus as the study uses it, in whatever layout data_dir has (a corpus folder, a
    manifest, an EmoBox folder; `--set corpus=NAME` names the reader), with speaker-independent
    splits where the corpus names its speakers."""
    from .data.layouts import detect_layout, read_any
    from .data.manifest import split_items

    named = config["corpus"] if "corpus" in config.get("_pinned", ()) else None
    manifest = read_any(config["data_dir"], name=named, media_root=config.get("media_root"))
    if named is None:
        layout = manifest.options.get("layout") or detect_layout(config["data_dir"])
        config["corpus"] = manifest.name if layout in ("manifest", "emobox") else layout
        manifest.name = config["corpus"]
    if manifest.items.empty:
        raise UserError(f"{config['data_dir']}: no usable {config['corpus']} clips; the reader said:\n"
                         f"{manifest.problems.head(10).to_string()}")
    manifest.items = split_items(manifest.items, int(config["seed"]), config["corpus"])
    return manifest


def prepare(config: dict, *, smoke: bool = False, model: str | None = None, corpus: list | None = None,
            media_root: str | None = None, max_seconds: float | None = None, max_file_mb: float | None = None) -> dict:
    """Driver-side, once per sweep: the corpus (or its look-alike; --data-dir or one --corpus
    NAME=PATH, in any layout), the encoder, and, when the encoder is frozen, its states in the
    cache."""
    import hashlib

    import pandas as pd

    from .core.paths import emosweep_home
    from .data.synth import study_corpus
    from .models.encoders import resolve_model
    from .models.speech import check_precision, make_tiny_hubert, speech_encoder_facts

    config = with_media_caps(config, max_seconds, max_file_mb)
    if config.get("speaker_norm") and config.get("encoder_mode", "cached") == "live":
        if "speaker_norm" in config.get("_pinned", ()):
            raise UserError("speaker_norm standardizes cached states; the live encoder mode has none")
        print("[emosweep] the live encoder mode runs without speaker_norm (it standardizes cached states)")
        config["speaker_norm"] = False
    if config["pooling"] not in POOLINGS and config.get("pooling") != "probe":
        raise UserError(f"unknown pooling {config['pooling']!r}; choose from {', '.join(POOLINGS)}")
    if config.get("encode_precision", "auto") != "auto":
        check_precision(config["encode_precision"])  # before any work: one line and exit 2
    if config["imbalance"] not in IMBALANCE:
        raise UserError(f"imbalance must be one of {IMBALANCE}, got {config['imbalance']!r}")
    config["media_root"] = media_root
    given = {}
    if corpus:
        import os

        from .data.layouts import named_corpora

        given = named_corpora(corpus, config.get("data_dir"))
        if len(given) > 1 and (config.get("encoder_mode", "cached") == "live" or int(config.get("finetune_top") or 0)):
            raise UserError("cross-corpus arms read the frozen encoder's cache: encoder_mode cached, finetune_top 0")
        if len(given) == 1:
            (name, path), = given.items()
            config.update(data_dir=os.path.abspath(path), corpus=name,
                          _pinned=[*config.get("_pinned", ()), "corpus"])
    if len(given) > 1:  # several corpora, each read in its own layout, split on its own
        manifests = {}
        for name, path in given.items():
            one = {**config, "data_dir": os.path.abspath(path), "corpus": name,
                   "_pinned": [*config.get("_pinned", ()), "corpus"]}
            manifests[name] = read_manifest(one)
        config.update(corpus="+".join(given), data_dir=None,
                      data_source="; ".join(f"{name}: {os.path.abspath(path)}" for name, path in given.items()))
    else:
        if config.get("data_dir") is None:
            config["corpus"] = "ravdess"
        study_corpus(config, "ravdess", "clips")
        manifests = {None: read_manifest(config)}
    if smoke and not model:
        path = make_tiny_hubert(emosweep_home() / "models" / f"tiny-hubert-s{config['seed']}", seed=int(config["seed"]))
        config.update(model_path=path, model_id="tiny-random-hubert", model_source="tiny-random", random_init=True)
    else:
        resolved = resolve_model(model, default=config["model"], fallback="whisper-base")
        config.update(model_path=resolved.path, model_id=resolved.label, model_source=resolved.source,
                      random_init=resolved.random_init)
    try:
        facts = speech_encoder_facts(config["model_path"], config.get("whisper_window"), float(config["clip_seconds"]))
    except ValueError as e:
        raise UserError(str(e)) from None
    n_layers = facts["n_layers"]
    config["window_seconds"] = facts["window_seconds"]
    config["model_id"] += facts["label_suffix"]
    config.update(n_states=n_layers + 1, dim=facts["dim"])
    k = int(config.get("finetune_top") or 0)
    if k >= n_layers + 1 or k < 0:
        raise UserError(f"finetune_top {k}: the encoder has {n_layers} layers")
    if None in manifests:  # one corpus
        manifest = manifests[None]
        config.update(classes=list(manifest.classes), dataset_fingerprint=manifest.fingerprint())  # reads every file's ends: once
        table, states_dir = _encoded_items(config, manifest, n_layers, k)
        if states_dir:
            config["states_dir"] = states_dir
        return write_items(config, table, f"{manifest.name}-{config['dataset_fingerprint']}")
    from .data.labels import spelled

    tables, dirs, prints, classes = [], {}, [], []
    for name, manifest in manifests.items():
        manifest.items["label"] = manifest.items["label"].map(spelled)
        manifest.classes = list(dict.fromkeys(map(spelled, manifest.classes)))
        prints.append(f"{name}-{manifest.fingerprint()}")
        config["dataset_fingerprint"] = prints[-1].rsplit("-", 1)[1]
        table, dirs[name] = _encoded_items(config, manifest, n_layers, k)
        tables.append(table.assign(uid=name + "/" + table["uid"], speaker=name + "/" + table["speaker"].astype(str),
                                   corpus=name))
        classes += [c for c in manifest.classes if c not in classes]
    config.update(states_dirs=dirs, classes=classes,
                  dataset_fingerprint=hashlib.sha256("|".join(prints).encode()).hexdigest()[:12])
    table = pd.concat(tables, ignore_index=True)
    table["y"] = [classes.index(label) for label in table["label"]]
    return write_items(config, table, f"{config['corpus'].replace('+', '-')}-{config['dataset_fingerprint']}")


def _encoded_items(config: dict, manifest, n_layers: int, k: int):
    """One corpus's usable items (uid, y, label, split, speaker, path, content_hash, its own
    folds) and the folder of its encoder states (None in the live mode); sets cache_fs and
    unusable_clips on config."""
    from .data.encoder_cache import actor_plan, encode_corpus
    from .data.manifest import fold_columns

    y = {c: i for i, c in enumerate(manifest.classes)}
    usable = manifest.items
    states_dir = None
    # the decoded samples' digest, for the split gate (cached per corpus like the states)
    from .data.folds import content_hashes
    from .data.pipeline import prepare as prepare_media

    if config.get("encoder_mode", "cached") != "cached":  # the live mode: the hash's own decode
        hashed = prepare_media(manifest, {"content_hash": {}}, progress=False, **media_caps(config))
        hashes = content_hashes(hashed.fs_uri, hashed.stages["content_hash"].dir)
    else:
        actors, gpus = actor_plan(config.get("encode_actors"))
        result = encode_corpus(manifest, config["model_path"], fingerprint=config["dataset_fingerprint"],
                               window_seconds=config["window_seconds"],
                               clip_seconds=float(config["clip_seconds"]), prefix_layer=n_layers - k if k else None,
                               dtype=config.get("cache_dtype", "float16"), progress=False,
                               batch_size=int(config.get("encode_batch") or 0),
                               precision=config.get("encode_precision", "auto"), actors=actors,
                               num_gpus=gpus, with_hash=True,  # one decode: the states and the gate's hash
                               caps=media_caps(config))
        hashes = content_hashes(result.fs_uri, result.stages["content_hash"].dir)
        print(f"[emosweep] encoder states: {result.summary()}")
        config["encode_precision"] = result.stages["encoder_states"].params["precision"]  # auto, resolved
        config.update(cache_fs=result.fs_uri, unusable_clips=int(config.get("unusable_clips") or 0) + len(result.errors))
        states_dir = result.stages["encoder_states"].dir
        from .data.flat import ensure_local

        ensure_local(result.fs_uri, states_dir, "states")  # the index the trials map the shards by, made once here
        bad = set(result.errors["path"])
        usable = usable[~usable["path"].isin(bad)]
    table = usable.assign(y=[y[label] for label in usable["label"]], label=usable["label"],
                          content_hash=usable["uid"].map(hashes).fillna(""))[
        ["uid", "y", "label", "split", "speaker", "path", "content_hash",
         *fold_columns(usable.columns),  # a corpus's own folds
         *(c for c in ("start", "end") if c in usable.columns),  # segments, for the live mode
         *(c for c in ("split_given",) if c in usable.columns)]]  # a test set the corpus names itself
    return table, states_dir


def describe(config: dict) -> dict:
    """The data report: clips per class and split, speakers per split."""
    import pandas as pd

    items = study_items(config)
    splits = trial_splits(items, config)
    rows = pd.DataFrame([{"corpus": v.get("corpus") or config["corpus"], "label": v["label"], "split": splits[uid],
                          "speaker": v["speaker"]} for uid, v in items.items()])
    by = ["corpus", "label"] if rows["corpus"].nunique() > 1 else ["label"]  # several corpora: each its own rows
    counts = rows.groupby([*by, "split"]).size().unstack(fill_value=0).reindex(columns=["train", "val", "test"])
    speakers = rows.groupby("split")["speaker"].nunique().reindex(["train", "val", "test"])
    text = (f"# {config['corpus']} as used: {config['data_source']}\n\nencoder: {config['model_id']}\n\n"
            f"speakers per split (no speaker in two): {speakers.to_dict()}\n\n{caps_line(config)}\n"
            f"{counts.to_markdown()}\n")
    return {"dataset_report.md": text}
