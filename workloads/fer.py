"""S6: facial expression recognition on FER2013 as a Ray Tune trainable.

The driver (`prepare`) parses fer2013.csv once on Ray Data into the feature cache, or
generates a look-alike when no --data-dir is given. Each trial loads the cached 8-bit
images, handles the class imbalance (S6: up-sample every minority class of the training set
to the largest, flag the copies, give flagged images a random brightness factor in
[0.9, 1.1]; or a class-weighted loss; or nothing), builds one of the four CNNs and hands the
rest to the shared epoch loop.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .core.loop import TrainSetup, class_weights, fit, pick_device, require_splits
from .core.graphs import GraphedTrainStep, capturable, rate, wants_graphs
from .core.seeding import derive_seed, seed_everything
from .data.fer2013 import LABELS
from .data.manifest import split_subset
from .models.fer_nets import build_fer_net
from .core.errors import UserError

if TYPE_CHECKING:
    from .core.tracking import TrackingContext

WORKLOAD = "fer"
IMBALANCE = ("upsample", "class_weights", "none")


def upsample_minorities(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices that bring every class up to the size of the largest (originals first, then
    copies drawn with replacement from their class, seeded), and the needs_augmentation
    flag: True for every copy."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    index, flags = [np.arange(len(labels))], [np.zeros(len(labels), bool)]
    for cls, count in zip(classes, counts):
        if count < target:
            members = np.flatnonzero(labels == cls)
            index.append(rng.choice(members, size=target - count, replace=True))
            flags.append(np.ones(target - count, bool))
    return np.concatenate(index), np.concatenate(flags)


class FerBatches:
    """Batches cut straight from one uint8 image tensor kept on the trial's device (FER2013's
    35,887 faces are 83 MB), so an epoch has no per-image Python, no worker processes and no
    host-to-device copies: pixels scaled to [0, 1]; a flagged (up-sampled) image gets a random
    brightness factor in `brightness` each time it is drawn. Order and factors come from a
    CPU generator seeded by (seed, epoch): the same on any device, replayed on resume."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, flags: np.ndarray | None = None, *,
                 batch_size: int, seed: int, shuffle: bool, device: torch.device | str = "cpu",
                 brightness: tuple[float, float] = (0.9, 1.1)):
        device = torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # N × 48 × 48 uint8
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.flags = torch.from_numpy(flags if flags is not None else np.zeros(len(labels), bool)).to(device)
        self.batch_size, self.seed, self.shuffle, self.device = batch_size, seed, shuffle, device
        self.brightness, self.epoch = brightness, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        g = torch.Generator().manual_seed(derive_seed(self.seed, "fer-batches", self.epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        factors = torch.empty(n).uniform_(*self.brightness, generator=g)
        order, factors = order.to(self.device), factors.to(self.device)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            flags = self.flags[index]
            factor = torch.where(flags, factors[start:start + self.batch_size], 1.0)
            x = self.images[index].unsqueeze(1).float().mul_((factor / 255.0).view(-1, 1, 1, 1)).clamp_(0, 1)
            yield x, self.labels[index], flags


def load_split_arrays(config: dict) -> dict:
    """split → (images uint8, labels int) from the cache the driver filled, with the
    stratified subsets of the config (seeded)."""
    from .data.pipeline import read_stage

    frame, arrays = read_stage(config["cache_fs"], config["fer_stage_dir"])
    frame = frame.assign(index=np.arange(len(frame)))
    images = np.asarray(arrays) if len(arrays) else np.zeros((0, 48, 48), np.uint8)  # one N×48×48 array: no copy
    out = {}
    for split in ("train", "val", "test"):
        part = split_subset(frame, split, config)
        part = part.sort_values("index")
        out[split] = (images[part["index"].to_numpy()], part["label"].to_numpy().astype(np.int64))
    return out


def build_loaders(config: dict, data: dict, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    images, labels = data["train"]
    info = {"train_images": len(labels), "upsampled_copies": 0}
    flags = None
    if config["imbalance"] == "upsample":
        index, flags = upsample_minorities(labels, derive_seed(config["seed"], "upsample"))
        images, labels = images[index], labels[index]
        info.update(upsampled_copies=int(flags.sum()), train_images_per_epoch=len(labels))
    loaders = {}
    for split, arrays in (("train", (images, labels, flags)), ("val", data["val"]), ("test", data["test"])):
        loaders[split] = FerBatches(*arrays, batch_size=config["batch_size"], seed=config["seed"],
                                    shuffle=split == "train", device=device)
    return loaders, info


def make_step(weights: torch.Tensor | None, precision: str = "fp32"):
    """The training step: (model, (images, labels, flags), device) → (loss, logits, labels).
    precision "bf16" (a GPU only): channels-last convolutions under bf16 autocast (no loss
    scaling needed); the model must be channels-last too."""
    def step(model, batch, device):
        x, y, _ = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        fast = device.type == "cuda" and precision == "bf16"
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            logits = model(x)
        w = weights.to(device) if weights is not None else None
        return torch.nn.functional.cross_entropy(logits.float(), y, weight=w), logits, y

    return step


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam; on a GPU fused and capturable (a CUDA-graphed step), with the learning rate as a
    device tensor."""
    return torch.optim.Adam(model.parameters(), lr=rate(lr, device), **capturable(device))


def choose_precision(model: torch.nn.Module, batch, device: torch.device, graphs: bool = True,
                     steps: int = 20) -> tuple[str, dict]:
    """Which precision trains this network faster on this GPU, by a short timed trial rather
    than by assumption: a few steps of each (fp32; bf16 + channels-last) on a copy of the
    model, run the way training will run them (as CUDA graphs, or eager). Eager on an H100,
    bf16 is slower than fp32 for three of the four CNNs (launch-bound, and bf16 adds casts);
    as graphs it is faster for all four. Returns the winner and each one's seconds per step."""
    import copy
    import time

    times = {}
    for precision in ("fp32", "bf16"):
        trial = copy.deepcopy(model).to(device)
        if precision == "bf16":
            trial = trial.to(memory_format=torch.channels_last)
        opt = make_optimizer(trial, 1e-4, device)
        step = make_step(None, precision)
        graphed = GraphedTrainStep(trial, opt, step, device, None) if graphs else None

        def once():
            if graphed is not None:
                return graphed(batch)
            loss, _, _ = step(trial, batch, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            once()
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            once()
        torch.cuda.synchronize(device)
        times[precision] = (time.perf_counter() - start) / steps
    return min(times, key=times.get), times


def build_setup(config: dict, data: dict, device: torch.device) -> TrainSetup:
    """Loaders, network, precision, optimizer and step for one trial on `device`, from the
    split arrays (load_split_arrays). On a GPU the step is a CUDA graph and the precision is
    config["precision"] ("auto": chosen by choose_precision)."""
    loaders, info = build_loaders(config, data, device)
    model = build_fer_net(config["architecture"], config["dropout"]).to(device)
    weights = class_weights(data["train"][1], len(LABELS)) if config["imbalance"] == "class_weights" else None
    graphs = wants_graphs(config, device)
    precision = config.get("precision", "auto") if device.type == "cuda" else "fp32"
    if precision == "auto":
        precision, seconds = choose_precision(model, next(iter(loaders["train"])), device, graphs)
        info.update({f"step_ms_{k}": round(v * 1e3, 3) for k, v in seconds.items()})
        seed_everything(config["seed"])
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    step = make_step(weights, precision)
    grad_clip = config.get("grad_clip")
    optimizer = make_optimizer(model, config["lr"], device)
    return TrainSetup(
        model=model, optimizer=optimizer, loaders=loaders, step=step,
        class_names=LABELS, epochs=config["epochs"], grad_clip=grad_clip,
        train_step=GraphedTrainStep(model, optimizer, step, device, grad_clip) if graphs else None,
        info={**info, "precision": precision, "cuda_graphs": bool(graphs)},
        tags={"workload": WORKLOAD, "arm": config["arm"], "architecture": config["architecture"],
              "imbalance": config["imbalance"], "model_id": config.get("model_id", config["architecture"]),
              "random_init": "false",
              "dataset_fingerprint": config["dataset_fingerprint"]},
    )


def train(config: dict, tracking: TrackingContext | None = None) -> None:
    seed_everything(config["seed"])
    data = require_splits(load_split_arrays(config))
    fit(config, build_setup(config, data, pick_device()), tracking, run_name(config), None)


def run_name(config: dict) -> str:
    return f"{config['arm']} lr={config['lr']:.0e} bs={config['batch_size']} {config['imbalance']}"


def prepare(config: dict) -> dict:
    """Driver-side, once per sweep: find fer2013.csv (or generate a look-alike), parse it on
    Ray Data into the cache (a warm cache parses nothing) and report malformed rows."""
    from .core.paths import emosweep_home
    from .data.fer2013 import read_fer2013

    config = dict(config)
    if config["imbalance"] not in IMBALANCE:
        raise UserError(f"imbalance must be one of {IMBALANCE}, got {config['imbalance']!r}")
    path = config.get("data_dir")
    if path is None:
        path = ensure_synthetic(emosweep_home() / "data", int(config["synth_n"]), int(config["seed"]))
        config["data_source"] = f"generated look-alike, {config['synth_n']} faces, seed {config['seed']}"
    else:
        config["data_source"] = str(path)
    result = read_fer2013(path, progress=False)
    print(result.summary())
    config.update(cache_fs=result.fs_uri, fer_stage_dir=result.stages["fer_image"].dir,
                  dataset_fingerprint=result.fingerprint, malformed_rows=len(result.errors))
    return config


def ensure_synthetic(root: Path, n: int, seed: int) -> Path:
    """The generated fer2013.csv for (n, seed), made once."""
    from .data.synth import ensure_generated

    return ensure_generated(root, "fer2013", n, seed) / "fer2013.csv"


def describe(config: dict) -> dict:
    """The data as the trials see it: class counts per split, before and after up-sampling,
    the malformed rows, and a grid of example faces per class."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    data = load_split_arrays(config)
    counts = {s: np.bincount(d[1], minlength=len(LABELS)) for s, d in data.items()}
    train = counts["train"]  # up-sampling brings every class present up to the largest
    counts["train, up-sampled"] = np.where(train > 0, train.max(), 0)
    table = pd.DataFrame(counts, index=LABELS).T
    table["total"] = table.sum(axis=1)
    text = (f"# FER2013 as used: {config['data_source']} (fingerprint {config['dataset_fingerprint']})\n\n"
            f"{table.to_markdown()}\n\n{config['malformed_rows']} malformed rows skipped "
            f"(listed in errors.csv beside the cache: {Path(config['fer_stage_dir']).parent})\n")
    images, labels = data["train"]
    fig, axes = plt.subplots(4, len(LABELS), figsize=(1.4 * len(LABELS), 6))
    for c, name in enumerate(LABELS):
        members = np.flatnonzero(labels == c)[:4]
        for r in range(4):
            ax = axes[r, c]
            ax.axis("off")
            if r < len(members):
                ax.imshow(images[members[r]], cmap="gray", vmin=0, vmax=255)
        axes[0, c].set_title(name, fontsize=9)
    fig.tight_layout()
    grid = Path(tempfile.mkdtemp(prefix="emosweep-fer-")) / "examples.png"  # an artifact of the parent run
    fig.savefig(grid, dpi=90)
    plt.close(fig)
    return {"dataset_report.md": text, "examples.png": grid}
