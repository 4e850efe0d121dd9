"""The epoch loop every workload shares: train, validate, keep the best, checkpoint, report.

A workload builds its model, optimizer and data loaders and hands them to `fit` with a
`step` function that turns one batch into (loss, logits, labels). `fit` does the rest:
restores from the checkpoint Tune hands back (a retried or resumed trial continues where
it stopped), seeds each epoch from (seed, epoch) so a resumed run replays the same batches,
evaluates the test split whenever validation accuracy improves (so a trial stopped early by
the scheduler still has test numbers for its best epoch), logs to MLflow and reports to Tune.

Ray at the edge: this module, the models and the workloads' data code import with PyTorch
alone. A session object is the one adapter to the outside: `LocalSession` here (a plain
process: `--local`, a notebook, a bare GPU box), or the Ray adapters of `on_ray.py` (a Tune
trial, one rank of a Ray Train data-parallel trial); `fit` picks by itself. Ray and MLflow
are imported only by the sessions and the tracker that need them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from .session import LocalSession
from .metrics import classification_metrics, plot_confusion
from .predictions import frame as predictions_frame, read as read_predictions, write as write_predictions
from .seeding import derive_seed, seed_everything

if TYPE_CHECKING:
    from .tracking import TrackingContext


StepFn = Callable[[torch.nn.Module, object, torch.device], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]


@dataclass
class TrainSetup:
    """What a workload hands to `fit`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loaders: dict  # "train", "val", "test" → iterable of batches
    step: StepFn
    class_names: list
    epochs: int
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped once per batch
    grad_clip: float | None = 1.0
    info: dict = field(default_factory=dict)  # logged once as params: parameter counts, layers kept…
    tags: dict = field(default_factory=dict)  # MLflow tags: arm, model id, dataset fingerprint…
    epoch_metrics: Callable[[], dict] | None = None  # the workload's own figures, added to every epoch's metrics
    # At an epoch that improves validation accuracy: best_metrics(model, evaluate) → more
    # figures of that epoch (evaluate(split) runs one split and returns its metrics); they
    # are reported with the best epoch's test metrics. The fusion study's ablation.
    best_metrics: Callable[[torch.nn.Module, Callable[[str], dict]], dict] | None = None
    # At the end of a tracked trial: export(best weights, run) logs the best epoch's model
    # (the weights are kept, and checkpointed, only when export is set).
    export: Callable[[dict, object], None] | None = None
    # Early stopping: end the trial when validation loss has not improved for this many epochs
    # (the best epoch by validation accuracy still gives the test metrics)
    patience: int | None = None
    # A whole training step in one call, batch → (loss, logits, labels), replacing step,
    # backward, clipping and the optimizer step in training: a CUDA-graphed step (core/graphs.py)
    train_step: Callable[[object], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"] | None = None
    # split → the ids of its items in the evaluation loader's order: the per-item predictions'
    # uids (without them an item is named by its split and position)
    item_ids: dict | None = None


class EpochShardSampler(torch.utils.data.Sampler):
    """One permutation per (seed, epoch), dealt round-robin to `world` ranks. A rank's k-th
    batch of size B/world together with the other ranks' k-th batches is exactly the k-th
    batch of size B that a single worker sees, so data-parallel training takes the same
    steps as single-process training. Evaluation splits are sharded without shuffling."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "sampler", self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return iter(order[self.rank::self.world])

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def require_splits(data: dict, labels: int = 1) -> dict:
    """data (split → a tuple whose `labels`-th entry holds the labels), refused when a split is
    empty: a trial cannot train, choose or test on nothing. Returns data."""
    sizes = {s: len(d[labels]) for s, d in data.items()}
    if not all(sizes.values()):
        raise ValueError(f"empty split: {', '.join(f'{s}={n}' for s, n in sizes.items())}")
    return data


def array_loaders(data: dict, seed: int, batch_size: int, eval_batch_size: int = 256) -> dict:
    """split → DataLoader over in-memory arrays ({split: (X, y)}, numpy): the training split
    shuffled per (seed, epoch), the others in order."""
    from torch.utils.data import DataLoader, TensorDataset

    loaders = {}
    for split, (x, y) in data.items():
        sampler = EpochShardSampler(len(y), seed, shuffle=split == "train")
        loaders[split] = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), sampler=sampler,
                                    batch_size=batch_size if split == "train" else eval_batch_size)
    return loaders


def classification_step(weights: torch.Tensor | None = None) -> StepFn:
    """The step of a classifier on (inputs, labels) batches: cross-entropy, optionally class-weighted."""
    def step(model, batch, device):
        x, y = (t.to(device, non_blocking=True) for t in batch)
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y, weight=None if weights is None else weights.to(device)), \
            logits, y
    return step


def class_weights(labels, n_classes: int) -> torch.Tensor:
    """Loss weights ∝ 1 / class frequency, scaled to average 1 over the training items; a
    class absent from training gets weight 0."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    weights = np.where(counts > 0, len(labels) / (present * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def pick_device() -> torch.device:
    """The GPU Ray assigned to this trial, else the CPU. Ray sets CUDA_VISIBLE_DEVICES to the
    assigned ids, so cuda:0 is always one of ours."""
    if torch.cuda.is_available():
        from .on_ray import _ray

        ray = _ray()
        try:
            if ray is not None and not ray.get_gpu_ids():
                return torch.device("cpu")
        except Exception:  # outside a Ray worker: any visible GPU is ours
            pass
        return torch.device("cuda:0")
    return torch.device("cpu")


def _maybe_inject_fault(config: dict, epoch: int, batch_index: int) -> None:
    """Fault injection for the fault-tolerance tests: fail once, mid-epoch, at a chosen epoch.
    A marker file makes it fire only on the first attempt."""
    fault = config.get("inject_fault")
    if not fault or epoch != fault["epoch"] or batch_index != fault.get("batch", 1):
        return
    if fault.get("arm") and config.get("arm") != fault["arm"]:  # aim at one arm's trials
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"fired at epoch {epoch} batch {batch_index} pid {os.getpid()}\n")
    if fault.get("kind", "raise") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault at epoch {epoch}, batch {batch_index}")


def run_epoch(setup: TrainSetup, model: torch.nn.Module, loader: Iterable, device: torch.device, train: bool,
              session: LocalSession, config: dict | None = None, epoch: int = 0) -> dict:
    """One pass over this rank's shard of a loader; loss, accuracy and predictions are
    gathered over all ranks. `model` may be the DDP wrapper of setup.model."""
    model.train(train)
    sampler = getattr(loader, "sampler", None)
    for target in (loader, sampler):
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
            break
    # Loss and predictions stay on the device until the epoch ends: no step waits for the GPU
    total, n = None, 0
    preds, labels, probs = [], [], []
    with torch.set_grad_enabled(train):
        for i, batch in enumerate(loader):
            if train and config is not None:
                _maybe_inject_fault(config, epoch, i)
            if not train:
                loss, logits, y = setup.step(model, batch, device)
            elif setup.train_step is not None:
                loss, logits, y = setup.train_step(batch)
            else:
                loss, logits, y = setup.step(model, batch, device)
                setup.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if setup.grad_clip:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], setup.grad_clip)
                setup.optimizer.step()
            if train and setup.scheduler is not None:
                setup.scheduler.step()
            part = loss.detach().double() * len(y)
            total = part if total is None else total + part
            n += len(y)
            preds.append(logits.detach().argmax(-1))
            labels.append(y.detach())
            if not train:  # the per-item predictions keep each class's probability
                probs.append(logits.detach().float().softmax(-1))
    total_loss = float(total) if total is not None else 0.0
    preds = torch.cat(preds).cpu().tolist() if preds else []
    labels = torch.cat(labels).cpu().tolist() if labels else []
    probs = torch.cat(probs).cpu().numpy() if probs else None
    shards = session.gather((total_loss, n, labels, preds, probs))
    total_loss, n = sum(s[0] for s in shards), sum(s[1] for s in shards)
    y_true = [v for s in shards for v in s[2]]
    y_pred = [v for s in shards for v in s[3]]
    y_prob = [row for s in shards if s[4] is not None for row in s[4]] or None
    if not train and len(shards) > 1:  # rank r held items r, r + world, …: back to the loader's order
        position = [r + j * len(shards) for r, s in enumerate(shards) for j in range(len(s[2]))]
        order = sorted(range(len(position)), key=position.__getitem__)
        y_true, y_pred = [y_true[i] for i in order], [y_pred[i] for i in order]
        y_prob = [y_prob[i] for i in order] if y_prob is not None else None
    acc = sum(int(a == b) for a, b in zip(y_true, y_pred)) / max(n, 1)
    return {"loss": total_loss / max(n, 1), "acc": acc, "n": n, "y_true": y_true, "y_pred": y_pred, "y_prob": y_prob}


WEIGHTS = "weights.pt"  # a checkpoint's tensors; progress.json holds the rest


def _save_checkpoint(setup: TrainSetup, state: dict, directory: str, best_weights: dict | None = None,
                     final: bool = False, predictions=None) -> None:
    """A trial's checkpoint. `final` (its last epoch, or stopped early by its patience): the
    progress alone, marked finished, and the best epoch's weights where the trial exports them;
    no model or optimizer state, which a finished trial never resumes from. A sweep of many
    trials so keeps kilobytes per finished trial, not the model and its optimizer's moments
    (50 MB for the smallest MLP: 1,024 trials filled a 50-GB disk)."""
    if final:
        if best_weights is not None:
            torch.save({"best_model": best_weights}, os.path.join(directory, WEIGHTS))
    else:
        torch.save({
            "model": setup.model.state_dict(),
            "best_model": best_weights,
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": setup.scheduler.state_dict() if setup.scheduler is not None else None,
        }, os.path.join(directory, WEIGHTS))
    if predictions is not None:  # the best epoch's per-item predictions
        write_predictions(predictions, directory)
    with open(os.path.join(directory, "progress.json"), "w") as f:
        json.dump({**state, "finished": final}, f)


def _load_checkpoint(setup: TrainSetup, directory: str, device: torch.device) -> tuple[dict, dict | None]:
    """(progress state, the best epoch's weights when kept). A finished trial's checkpoint
    restores its progress only: nothing is left to train."""
    with open(os.path.join(directory, "progress.json")) as f:
        state = json.load(f)
    path = os.path.join(directory, WEIGHTS)
    if not os.path.exists(path):
        if not state.get("finished"):
            raise FileNotFoundError(f"{path}: the checkpoint of an unfinished trial has no weights")
        return state, None
    # weights_only=True: a checkpoint is data, never code.
    blob = torch.load(path, map_location=device, weights_only=True)
    if not state.get("finished"):
        setup.model.load_state_dict(blob["model"])
        setup.optimizer.load_state_dict(blob["optimizer"])
        if setup.scheduler is not None and blob["scheduler"] is not None:
            setup.scheduler.load_state_dict(blob["scheduler"])
    return state, blob.get("best_model")


def _pair(result: dict) -> tuple[list, list]:
    return result["y_true"], result["y_pred"]


def _write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _save_unlogged(run, history: list) -> None:
    """MLflow stayed unreachable past the patience: keep what it lacks beside the trial."""
    from .on_ray import trial_dir

    directory = trial_dir() or run.artifact_dir
    path = os.path.join(directory, "mlflow_unlogged.json")
    _write(directory, "mlflow_unlogged.json", json.dumps(
        {"run_id": run.run_id, "error": run.last_error,
         "epochs": [h for h in history if h["epoch"] in set(run.unlogged(history))]}, indent=2, default=str))
    print(f"[emosweep] MLflow unreachable: epochs {run.unlogged(history)} of trial {run.trial_id} were not "
          f"logged; saved to {path}", file=sys.stderr)



def _close_run(run, state: dict, setup: TrainSetup, run_name: str, art_dir: str, patience_s: float,
               predictions=None) -> bool:
    """The end of a trial's MLflow run: the best epoch's confusion matrix, report and test
    metrics are drawn once, here (the learning curves are the UI's own charts of the epochs'
    metrics, and the sweep's page draws them per arm), then everything MLflow lacks is logged,
    retrying for up to patience_s. Returns whether the run is complete; what could not be
    logged is saved beside the trial."""
    run.wait()  # the background sync of the last epochs
    best, test = state["best"], state.get("best_test")
    if best is not None and test is not None:
        title = f"{run_name}: test, best epoch {best['epoch']}, acc {best['test_acc']:.3f}"
        run.add_artifact(plot_confusion(test["confusion"], setup.class_names, title,
                                        os.path.join(art_dir, "confusion_matrix.png")))
        run.add_artifact(_write(art_dir, "classification_report.txt", test["report"]))
        run.add_artifact(_write(art_dir, "test_metrics.json", json.dumps(
            {"best": best, "confusion": test["confusion"],
             "class_names": list(setup.class_names)}, indent=2)))
    if predictions is not None:
        run.add_artifact(write_predictions(predictions, art_dir))
    synced = run.sync_until(state["history"], patience_s)
    if not synced:
        _save_unlogged(run, state["history"])
    return synced


def fit(config: dict, setup: TrainSetup, tracking: TrackingContext | None, run_name: str,
        session: LocalSession | None = None) -> dict:
    """Train for setup.epochs, reporting every epoch to Tune (with a checkpoint) and MLflow.
    With a TrainSession it runs as one rank of a data-parallel trial; outside Ray, in a plain
    LocalSession. Returns the final state (epoch, history, best)."""
    from .on_ray import configure_threads, current_session, placement

    session = current_session(session)
    device = pick_device()
    threads = configure_threads()
    setup.model.to(device)
    trainable, total = count_parameters(setup.model)
    where = placement()
    info = {"trainable_params": trainable, "total_params": total, "device": str(device), "torch_threads": threads,
            **setup.info}

    state = {"epoch": 0, "history": [], "best": None}
    best_weights = None  # the best epoch's weights, kept for setup.export
    predictions = None  # the best epoch's per-item validation and test predictions
    checkpoint = session.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state, best_weights = _load_checkpoint(setup, d, device)
            predictions = read_predictions(d)
    resumed_from = state["epoch"]  # 0 for a fresh start; > 0 when a retry or --resume continued

    art_dir = tempfile.mkdtemp(prefix="emosweep-artifacts-")
    model = session.prepare_model(setup.model, device)  # DDP wrapper in a data-parallel trial
    if tracking and session.rank == 0:
        from .tracking import RUN_ID_KEY, TrialRun  # MLflow only where a tracking server is in use
    run = (TrialRun(tracking, session.trial_id, run_name, {**config, **info, "world_size": session.world},
                    {**setup.tags, **where}, art_dir)
           if tracking and session.rank == 0 else None)

    patience_s = float(config.get("tracking_patience_s", 120))
    checkpoint_every_s = float(config.get("checkpoint_every_s", 30.0))
    last_checkpoint = float("-inf")
    closed = trained = False  # trained: an epoch ran in this attempt (not only restored)
    try:
        for epoch in range(setup.epochs + 1 if state.get("finished") else state["epoch"] + 1, setup.epochs + 1):
            seed_everything(derive_seed(int(config.get("seed", 0)), "epoch", epoch))
            timings = {}
            t = time.perf_counter()
            tr = run_epoch(setup, model, setup.loaders["train"], device, True, session, config=config, epoch=epoch)
            timings["time_train_s"] = time.perf_counter() - t
            t = time.perf_counter()
            va = run_epoch(setup, model, setup.loaders["val"], device, False, session)
            val = classification_metrics(va["y_true"], va["y_pred"], setup.class_names)
            improved = state["best"] is None or val["acc"] > state["best"]["val_acc"]
            if improved:
                te = run_epoch(setup, model, setup.loaders["test"], device, False, session)
                test = classification_metrics(te["y_true"], te["y_pred"], setup.class_names)
                state["best"] = {
                    "epoch": epoch, "val_acc": val["acc"], "val_macro_f1": val["macro_f1"],
                    "test_loss": te["loss"], "test_acc": test["acc"], "test_macro_f1": test["macro_f1"],
                    "test_weighted_f1": test["weighted_f1"], "test_uar": test["uar"], "n_test": te["n"],
                    **{f"test_f1_{c}": v for c, v in test["per_class_f1"].items()},
                }
                # what the trial's closing artifacts show (kept in the checkpoint: a resumed trial has them)
                state["best_test"] = {"confusion": test["confusion"], "report": test["report"]}
                if session.rank == 0:
                    import pandas as pd

                    ids = setup.item_ids or {}
                    predictions = pd.concat([
                        predictions_frame(split, r["y_true"], r["y_pred"], r["y_prob"], setup.class_names,
                                          ids.get(split)) for split, r in (("val", va), ("test", te))],
                        ignore_index=True)
                if setup.best_metrics is not None:
                    state["best"]["extra"] = setup.best_metrics(model, lambda split: classification_metrics(
                        *_pair(run_epoch(setup, model, setup.loaders[split], device, False, session)),
                        setup.class_names))
                if setup.export is not None:
                    best_weights = {k: v.detach().cpu().clone() for k, v in setup.model.state_dict().items()}
            timings["time_eval_s"] = time.perf_counter() - t

            row = {  # the curve values; the full metrics of the epoch go into the history below
                "epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                "train_items_per_s": tr["n"] / max(timings["time_train_s"], 1e-9),  # all ranks together
                "val_loss": va["loss"], "val_acc": val["acc"], "val_macro_f1": val["macro_f1"],
                "val_weighted_f1": val["weighted_f1"],
                **{f"val_f1_{c}": v for c, v in val["per_class_f1"].items()},
            }
            best = state["best"]
            metrics = {**row, "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
                       # the item counts: the verdicts' variance correction (n_test / n_train)
                       "n_train": tr["n"], "n_val": va["n"], "n_test": best.get("n_test"),
                       **{k: v for k, v in best.items() if k.startswith("test_")}, **best.get("extra", {}),
                       "trainable_params": trainable, "total_params": total, "resumed_from_epoch": resumed_from,
                       # what the arm actually did (layers frozen/kept, heads left), for the results table
                       **{k: v for k, v in setup.info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                       **(setup.epoch_metrics() if setup.epoch_metrics else {})}
            placed = {**where, "device": str(device),  # reported to Tune, not plotted in MLflow (strings)
                      **({RUN_ID_KEY: run.run_id} if run is not None and run.run_id else {})}

            if setup.patience:
                if va["loss"] < state.get("best_val_loss", float("inf")):
                    state["best_val_loss"], state["val_loss_epoch"] = va["loss"], epoch
                metrics["early_stopped"] = int(epoch - state["val_loss_epoch"] >= setup.patience
                                               and epoch < setup.epochs)
            state["history"].append({**metrics, **timings})
            if run is not None:  # the curves every epoch; the rest where it changes (TrialRun.on_change)
                run.on_change.update(k for k in metrics if k not in row)
            state["epoch"] = epoch
            trained = True
            t = time.perf_counter()
            if run is not None:
                if epoch == setup.epochs or bool(metrics.get("early_stopped")):
                    # the last epoch: its report carries what MLflow has, so the run is closed first
                    closed = True
                    synced = _close_run(run, state, setup, run_name, art_dir, patience_s, predictions)
                    if not synced:  # never silent: the loss is in Tune's result and beside the trial
                        metrics["mlflow_unlogged_epochs"] = len(run.unlogged(state["history"]))
                else:  # in the background: the trial never waits for the server
                    run.sync_later(state["history"], every_s=float(config.get("tracking_every_s", 5.0)))
                metrics["mlflow_sync_failures"] = run.failures
            timings["time_tracking_s"] = time.perf_counter() - t

            t = time.perf_counter()
            # A checkpoint every checkpoint_every_s seconds of training, not every epoch: short
            # epochs would spend more on writing (and Tune on keeping) checkpoints than on
            # training. A crash or an interrupted sweep loses at most that much. The first and
            # the last epoch always: a trial restored from Tune's state (saved on Tune's own
            # period) resumes from its first, and one that had finished takes its finished
            # checkpoint over the one the state named (on_ray.finished_sibling) and trains
            # nothing again; a second --local run finds its trials done.
            last = epoch == setup.epochs or bool(metrics.get("early_stopped"))
            due = last or time.monotonic() - last_checkpoint >= checkpoint_every_s
            if not due:
                timings["time_checkpoint_s"] = 0.0
                session.report({**metrics, **timings, **placed}, None)
            else:
                last_checkpoint = time.monotonic()
                if run is not None and run.run_id:  # a trial restored at its end reports it again
                    state["mlflow_run_id"] = run.run_id
                with tempfile.TemporaryDirectory() as ckpt_dir:
                    if session.rank == 0:
                        _save_checkpoint(setup, state, ckpt_dir, best_weights, final=last, predictions=predictions)
                    timings["time_checkpoint_s"] = time.perf_counter() - t
                    session.report({**metrics, **timings, **placed}, ckpt_dir if session.rank == 0 else None)
            if metrics.get("early_stopped"):
                break
    finally:
        # Stopped between epochs (the scheduler ends a trial from inside its report) or crashed:
        # MLflow still gets the epochs and the artifacts so far, in a bounded wait (a retry or the
        # next trial on this actor follows). A trial restored at its end trained nothing here:
        # its run was closed before that last checkpoint.
        if run is not None and not closed and trained:
            try:
                _close_run(run, state, setup, run_name, art_dir, min(patience_s, 10.0), predictions)
            except Exception as e:  # never hides why the trial ended
                print(f"[emosweep] could not close the MLflow run of trial {run.trial_id}: {e}", file=sys.stderr)
        # on every way out (a scheduler's stop and a crash included), kept only while it holds
        # what MLflow still lacks
        if run is None or not (run.pending_artifacts or run.unlogged(state["history"])):
            shutil.rmtree(art_dir, ignore_errors=True)
    if not trained and state.get("finished") and getattr(session, "restored_ahead", False) and state["history"]:
        # restored from its finished checkpoint past the one Tune's state named: Tune's last
        # result for it may be an earlier epoch's, so the final one is reported again (no checkpoint)
        session.report({**state["history"][-1], "resumed_from_epoch": resumed_from,
                        **({"mlflow_run_id": state["mlflow_run_id"]} if state.get("mlflow_run_id") else {})}, None)
    if run is not None and setup.export is not None and best_weights is not None:
        setup.export(best_weights, run)
    return state
