"""The sweep's Tune callbacks: MLflow run status, and the quiet terminal's progress bar."""
from __future__ import annotations


import sys
from concurrent.futures import ThreadPoolExecutor

from ray import tune

from workloads.core.console import process_age_s
from workloads.core.tracking import RUN_ID_KEY, TrackingContext, close_trial_run

_CURRENT_TRACKING_URI: str | None = None  # this driver's tracking URI (a resumed sweep may get a new port)


def set_tracking_uri(uri: str) -> None:
    global _CURRENT_TRACKING_URI
    _CURRENT_TRACKING_URI = uri


class ChildRunStatus(tune.Callback):
    """Closes each trial's MLflow run when Tune is done with it: FINISHED, stopped early by
    the scheduler (tagged), or FAILED after its last retry. The requests go out from a thread
    of their own, in order: Tune's loop, which every running trial waits on at each epoch's
    report, never waits for the server (a close is three requests, ~0.1 s). The sweep's end
    waits for them. Tune pickles callbacks with the sweep, so it reads the tracking URI of
    the current driver rather than keeping one."""

    def __init__(self, experiment_id: str, parent_run_id: str, epochs_key: str = "epochs"):
        self.experiment_id, self.parent_run_id, self.epochs_key = experiment_id, parent_run_id, epochs_key
        self._executor: ThreadPoolExecutor | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_executor"}

    def __setstate__(self, state):
        self.__dict__.update(state, _executor=None)

    def _close(self, trial, status: str) -> None:
        uri = _CURRENT_TRACKING_URI
        if not uri:
            return
        done = int((trial.last_result or {}).get("epoch", 0))
        planned = int(trial.config.get(self.epochs_key, done))
        tags = {"num_failures": str(trial.num_failures)}
        if status == "FINISHED" and done < planned and not (trial.last_result or {}).get("early_stopped"):
            tags["stopped_early"] = f"after epoch {done} of {planned}"
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlflow-close")
        self._executor.submit(close_trial_run, TrackingContext(uri, self.experiment_id, self.parent_run_id),
                              trial.trial_id, status, tags, (trial.last_result or {}).get(RUN_ID_KEY))

    def wait(self) -> None:
        """Until every close asked for so far is done."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED")

    def on_experiment_end(self, trials, **info):
        self.wait()


class DropFinishedWeights(tune.Callback):
    """A finished trial is never resumed, so its kept checkpoint needs its progress (Tune and
    --resume read it) but not its model and optimizer state: deleted here when Tune reports
    the trial complete (a trial stopped early by the scheduler kept a full one). Without it a
    sweep's disk grows by a model and its optimizer's moments per trial; an errored trial keeps
    its weights for its retry."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        from workloads.core.loop import WEIGHTS

        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        import pyarrow.fs as pafs

        path = f"{checkpoint.path.rstrip('/')}/{WEIGHTS}"
        try:
            if checkpoint.filesystem.get_file_info(path).type == pafs.FileType.File:
                checkpoint.filesystem.delete_file(path)
        except OSError as e:  # disk is the only thing at stake: one line, the sweep goes on
            print(f"[emosweep] could not drop the weights of finished trial {trial.trial_id}: {e}", file=sys.stderr)


class KeepLatestCheckpoint(tune.Callback):
    """Each trial's superseded checkpoints are deleted once Tune's saved experiment state no
    longer names them. Tune's own `CheckpointConfig(num_to_keep=1)` does this by forcing a save
    of the whole state (every trial's) at every trial checkpoint, so a sweep's saves grew with
    the square of its trials (78 ms a save at 1,024 trials: about an hour of saves at 10,000).
    Without it Tune saves on its own period (at least 10 s, at most ~5% of the time), and this
    callback deletes, at each save, what the save before it had already stopped naming: Tune
    calls `get_state` of its callbacks right after it wrote the experiment state, so a crash at
    any point leaves the checkpoint the last saved state restores from."""

    def __init__(self, timings: dict | None = None):
        self.latest: dict = {}  # trial id → its newest checkpoint (filesystem, path)
        self.superseded: list = []  # (filesystem, path) no longer a trial's newest, not yet deletable
        self.deletable: list = []  # superseded before the last save: the state on disk names none of them
        # the driver's timings: Tune's state saves, against the trial checkpoints (each forced one before)
        self.timings = timings if timings is not None else {}
        self.timings.setdefault("state_saves", 0)
        self.timings.setdefault("trial_checkpoints", 0)

    def __getstate__(self):
        return {}  # nothing to restore: a resumed sweep starts with what Tune names

    def __setstate__(self, state):
        self.__init__()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.timings["trial_checkpoints"] += 1
        previous = self.latest.get(trial.trial_id)
        if previous is not None and previous[1] != checkpoint.path:
            self.superseded.append(previous)
        self.latest[trial.trial_id] = (checkpoint.filesystem, checkpoint.path)

    def _delete(self, found: list) -> None:
        for fs, path in found:
            try:
                fs.delete_dir(path)
            except (OSError, FileNotFoundError):  # gone already, or storage hiccup: disk is all that is at stake
                pass

    def get_state(self):
        # called as Tune saves: what was superseded before the previous save is named by neither
        self.timings["state_saves"] += 1
        self._delete(self.deletable)
        self.deletable, self.superseded = self.superseded, []
        return None

    def on_experiment_end(self, trials, **info):
        self._delete(self.deletable + self.superseded)
        self.deletable, self.superseded = [], []


class LeanTrialState(tune.Callback):
    """Tune keeps, per trial and per numeric key of its results, running statistics (min, max,
    mean, the last 5 and 10 values) in the experiment state it saves whenever a trial
    checkpoints: about 27 KB a trial for a result of 55 numbers, written again at every save,
    so a sweep's saves grow with the square of its trials. Nothing here reads them (the
    driver reads each trial's last result; the searcher and the scheduler get every result
    as it comes), so they are kept for the sweep's metric alone."""

    def __init__(self, metric: str):
        self.metric = metric

    def _prune(self, trial) -> None:
        meta = getattr(trial, "run_metadata", None)
        if meta is None or not hasattr(meta, "metric_analysis"):
            return  # another Tune: its state is left as it is
        for table in (meta.metric_analysis, meta.metric_n_steps):
            for key in [k for k in table if k != self.metric]:
                del table[key]
        meta.invalidate_cache()

    # Tune calls these before it folds the new result in, then saves at the end of its step:
    # pruned at each, what a save writes is what the previous hook left plus one result
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._prune(trial)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._prune(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._prune(trial)


def trial_dirname(trial) -> str:
    return trial.trial_id


def trial_name(trial) -> str:
    return f"{trial.config.get('arm', 'trial')}_{trial.trial_id.split('_')[-1]}"



class TrialProgress(tune.Callback):
    """The quiet terminal's view of a sweep: one bar over its trials, with the best result so
    far. Tune pickles callbacks with the sweep's state, so the bar is made when first needed."""

    def __init__(self, total: int, metric: str, mode: str):
        self.total, self.metric, self.mode = total, metric, mode
        self.best, self.errors, self.finished, self._bar = None, 0, 0, None

    def __getstate__(self):
        return {**self.__dict__, "_bar": None}

    def bar(self):
        if self._bar is None:
            from workloads.core.console import progress_bar

            self._bar = progress_bar(self.total, "trials", "trial")
        return self._bar

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and (self.best is None or (value > self.best) == (self.mode == "max")):
            self.best = value
        running = sum(t.status == "RUNNING" for t in trials)
        self.bar().set_postfix_str(f"running {running}, best {self.metric} {self.best:.4g}"
                                   + (f", {self.errors} failed" if self.errors else ""), refresh=True)

    def _done(self, trial, what: str) -> None:
        bar = self.bar()
        bar.update(1)
        self.finished += 1
        if bar.disable:  # no terminal (a log file, CI): one line per finished trial instead of a bar
            result = trial.last_result or {}
            value = result.get(self.metric)
            shown = f", {self.metric} {value:.4g}" if isinstance(value, (int, float)) else ""
            test = f", test_acc {result['test_acc']:.4g}" if isinstance(result.get("test_acc"), (int, float)) else ""
            print(f"[emosweep] trial {self.finished}/{self.total} {what}: {trial.config.get('arm')} ({trial.trial_id}){shown}"
                  f"{test}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.errors += 1
        self._done(trial, "failed")

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()


class FirstEpochClock(tune.Callback):
    """Records in `timings["first_epoch_s"]` when the sweep's first epoch ended, in seconds
    since the command started: what a user waits before the first result, printed with the
    driver's timings (bench/vs_optuna.py compares a first and a second sweep by it)."""

    def __init__(self, timings: dict):
        self.timings = timings

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.timings.setdefault("first_epoch_s", process_age_s())
