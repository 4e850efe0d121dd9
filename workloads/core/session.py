"""A trial in a plain process: no Ray, no Tune. `LocalSession` keeps the epochs' reports and
the latest checkpoint in a folder; `local_session` makes it the session of whatever trains
in this process (what `--local` uses), so a trainable needs no session argument."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import torch


class LocalSession:
    """A plain process, no Ray: the epoch's metrics are kept in `reports` and printed in one
    line; with `checkpoint_dir` the latest checkpoint is kept there and a new session on the
    same folder continues from it."""

    rank, world = 0, 1

    def __init__(self, checkpoint_dir: str | None = None, trial: str = "local", quiet: bool = False):
        self.trial_id, self.checkpoint_dir, self.quiet = trial, checkpoint_dir, quiet
        self.reports: list[dict] = []

    def get_checkpoint(self):
        if self.checkpoint_dir and os.path.exists(os.path.join(self.checkpoint_dir, "progress.json")):
            return _LocalCheckpoint(self.checkpoint_dir)
        return None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir and self.checkpoint_dir:
            tmp = self.checkpoint_dir.rstrip("/") + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            os.replace(tmp, self.checkpoint_dir)
        if not self.quiet:
            keys = ("epoch", "train_loss", "train_acc", "val_acc", "best_val_acc", "test_acc", "train_items_per_s")
            print(" ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))),
                  flush=True)

    def gather(self, obj) -> list:
        return [obj]

    def prepare_model(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model.to(device)


_ACTIVE: list = []  # the session `--local` opened for the trial running in this process


@contextmanager
def local_session(session: LocalSession):
    """Run a trainable in this process with `session` (its trial id and checkpoint folder):
    `fit` and the scikit-learn trials pick it up, so `train(config, tracking)` needs no session
    argument. What `--local` uses."""
    _ACTIVE.append(session)
    try:
        yield session
    finally:
        _ACTIVE.remove(session)


class _LocalCheckpoint:
    def __init__(self, path: str):
        self.path = path

    def as_directory(self):
        from contextlib import nullcontext

        return nullcontext(self.path)
