"""Ray at the edge: every place a trial touches Ray, in one module.

The training code (`loop.py`, the models, the workloads) imports with PyTorch alone and talks
to a session: `LocalSession` in a plain process (`--local`, a notebook, a bare GPU box), or
the adapters here: `TuneSession` (a Tune trial), `TrainSession` (one rank of a Ray Train
data-parallel trial) and `run_data_parallel`, which launches those ranks. The helpers that
ask Ray where a trial runs (its id, rank, CPUs, GPUs) answer for a plain process too. Ray
itself is imported only when this process already runs it."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from .session import _ACTIVE, LocalSession

if TYPE_CHECKING:
    from .tracking import TrackingContext


def _ray():
    """Ray if this process already runs it (a Tune or Train worker, a driver), else None.
    Never imports it: a process without Ray never pays for it or needs it."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None

class TuneSession(LocalSession):
    """A trial that is one process: reports go straight to Tune."""

    def __init__(self):
        super().__init__(trial=trial_id())

    restored_ahead = False  # restored from a finished checkpoint newer than the one Tune named

    def get_checkpoint(self):
        from ray import tune

        given = tune.get_checkpoint()
        newer = finished_sibling(given)
        self.restored_ahead = newer is not None
        return newer or given

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def finished_sibling(checkpoint):
    """The trial's newest checkpoint when it is newer than `checkpoint` (or Tune named none) and
    marks the trial finished, else None. Tune saves its experiment state on its own period (sweeps/callbacks.py:
    KeepLatestCheckpoint), so a sweep interrupted within that period restores a trial that had
    finished from the checkpoint the state names, an earlier one: the finished one beside it is
    what the trial ended with, and nothing is trained again."""
    import json

    import pyarrow.fs as pafs
    from ray import tune

    if checkpoint is not None:
        fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
        parent = path.rsplit("/", 1)[0]
    else:  # Tune's state named none (saved before the first): the trial's own folder in the storage
        try:
            storage = tune.get_context().get_storage()
            fs, parent = storage.storage_filesystem, storage.trial_fs_path.rstrip("/")
        except Exception:  # not in a Tune trial, or another Tune
            return None
        path = f"{parent}/checkpoint_"
    try:
        found = [i.path for i in fs.get_file_info(pafs.FileSelector(parent))
                 if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]
        newest = max(found, key=lambda p: p.rsplit("/", 1)[-1]) if found else None
        if newest is None or newest.rsplit("/", 1)[-1] <= path.rsplit("/", 1)[-1]:
            return None
        with fs.open_input_stream(f"{newest}/progress.json") as f:
            finished = bool(json.loads(f.read().decode()).get("finished"))
    except (OSError, ValueError):
        return None
    return tune.Checkpoint(newest, filesystem=fs) if finished else None


class WaitsForItsThread:
    """A Tune function trainable whose actor, when stopped for good (the sweep's end), first
    waits for the trial's thread, up to $TUNE_FUNCTION_THREAD_TIMEOUT_S. A trial the scheduler
    stops closes its MLflow run on the way out (core/loop.py: fit); Tune stops the actor at
    once when the sweep ends (FunctionTrainable.cleanup waits 0 s), which cut that close
    short and left the run without its last epochs and pictures. (An actor reused for the
    next trial already waits: Tune's reset_config.)"""

    def cleanup(self):
        import threading

        from ray.train._internal.session import get_session

        session = get_session()
        thread = getattr(session, "training_thread", None)
        if thread is not None and thread.is_alive():
            # what Tune's own finish() does to end the thread (a stop event, then the thread's
            # turn), but waited for; finish() repeats both harmlessly
            session.stop_event.set()
            session.continue_lock.release()
            threading.Thread.join(thread, timeout=float(os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", 15)))
        super().cleanup()


def closing_trainable(fn: Callable) -> Callable:
    """fn, a function trainable, as one whose actor waits for it to close its run (WaitsForItsThread)."""
    fn.__mixins__ = (WaitsForItsThread, *getattr(fn, "__mixins__", ()))
    return fn


def in_tune_trial() -> bool:
    return trial_id() != "local"


class TrainSession(TuneSession):
    """One rank of a data-parallel trial run by Ray Train: rank 0 checkpoints and logs, every
    rank reports (Train forwards rank 0's metrics to Tune), evaluation is gathered."""

    def __init__(self, trial: str):
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world, self.trial_id = ctx.get_world_rank(), ctx.get_world_size(), trial

    def get_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if checkpoint_dir and self.rank == 0 else None)

    def gather(self, obj) -> list:
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def prepare_model(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=device)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) inside a Ray Train worker, else (0, 1): workloads shard data by it."""
    if _ray() is None:
        return 0, 1
    try:
        import ray.train

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()
    except Exception:
        return 0, 1


def run_data_parallel(worker_fn: Callable, config: dict, tracking: TrackingContext | None) -> None:
    """Run `worker_fn({"config", "tracking", "trial_id"})` on config["workers_per_trial"] Ray
    Train workers (DDP; gloo on CPU, NCCL on GPU) inside this Tune trial. Train restarts
    failed workers from the latest checkpoint; a retried trial resumes from it too."""
    from ray.train import FailureConfig as TrainFailureConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    n = int(config["workers_per_trial"])
    gpus = float(config.get("gpus_per_worker", 0) or 0)
    cpus = float(config.get("cpus_per_worker", 1) or 1)
    tid = trial_id()
    storage = tune.get_context().get_trial_dir()
    name = f"data-parallel-{tid}"
    latest = sorted(Path(storage, name).glob("checkpoint_*")) if "://" not in storage else []
    trainer = TorchTrainer(
        worker_fn,
        train_loop_config={"config": config, "tracking": tracking, "trial_id": tid},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ScalingConfig(num_workers=n, use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})}),
        run_config=TrainRunConfig(name=name, storage_path=storage, callbacks=[TuneReportCallback()],
                                  failure_config=TrainFailureConfig(max_failures=int(config.get("worker_retries", 2)))),
        resume_from_checkpoint=tune.Checkpoint(str(latest[-1])) if latest else None,
    )
    trainer.fit()


def configure_threads() -> int:
    """Use as many intra-op threads as CPUs Ray gave this trial (never the whole node)."""
    try:
        n = int(_ray().get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # not in a Ray worker: torch's own default
        n = 0
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def placement() -> dict:
    """Where this trial runs: Ray node and the GPU ids Ray assigned (CUDA_VISIBLE_DEVICES)."""
    try:
        ray = _ray()
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    except Exception:
        return {"node_id": "", "gpu_ids": "", "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def trial_id() -> str:
    if _ray() is None:
        return "local"
    try:
        from ray import tune

        return tune.get_context().get_trial_id() or "local"
    except Exception:
        return "local"


def trial_dir() -> str | None:
    """The Tune trial's folder, or None outside a trial."""
    if _ray() is None:
        return None
    try:
        from ray import tune

        return tune.get_context().get_trial_dir()
    except Exception:
        return None


def current_session(session: LocalSession | None = None) -> LocalSession:
    """The session a trial reports to: the one given, else the active local one, else Tune's
    inside a Tune trial, else a plain LocalSession."""
    if session is not None:
        return session
    if _ACTIVE:
        return _ACTIVE[-1]
    return TuneSession() if in_tune_trial() else LocalSession()
