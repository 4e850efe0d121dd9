"""The sweep engine every study calls: `main(study)`.

`main` parses the common flags and runs the study one of two ways:
- on Ray Tune (`run_study`): it starts (or joins) Ray and an MLflow server, then a Tuner
  whose searcher keeps one seeded Optuna sampler per arm (`sweeps/search.py`), with an
  early-stopping scheduler, a checkpoint per epoch, retries from checkpoints and --resume;
- in this process, without Ray (`--local`, `sweeps/local.py`).
Either way it ends with the per-arm table (`sweeps/report.py`). A user's mistake (a missing
path, a typo in --set, a flag the study cannot use) is one line and exit 2, before anything
starts where it can be checked that early.

The pieces: `study.py` (the Study and the run's configuration, Ray-free), `space.py` (the
searched domains), `search.py` (the per-arm searcher), `callbacks.py` (MLflow run status, the
progress bar), `storage.py` (where a sweep lives, resuming), `results.py` and `report.py`
(the tables, the plot, the MLflow arm runs).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pandas as pd

from sweeps.study import (Study, build_parser, check_flags, replicates_of, searched_space, study_config,
                          trial_count, with_corpus_arms)
from workloads.core.errors import UserError
from workloads.core.paths import mask_uri

__all__ = ["Study", "main", "run_study"]


def main(study: Study, argv: list[str] | None = None) -> pd.DataFrame:
    opts = build_parser(study).parse_args(argv)
    try:
        study = with_corpus_arms(study, opts)  # before anything checks --arms
        if opts.local:
            from sweeps.local import run_local

            return run_local(study, opts)
        return run_study(study, opts)
    except UserError as e:
        if opts.verbose:
            traceback.print_exc()
        print(f"{study.name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def timed(timings: dict, key: str):
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t


def run_study(study: Study, opts) -> pd.DataFrame:
    """Run (or resume) one sweep of `study` on Ray Tune; returns the per-trial results table."""
    from workloads.core.console import restore_logs
    from workloads.core.paths import emosweep_home
    from workloads.core.tracking import fail_fast_requests
    from sweeps.storage import STATE_FILE, Storage, find_resume

    # Short epochs checkpoint often by design; Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A trial the scheduler stops closes its MLflow run on the way out (workloads/core/loop.py,
    # at most 10 s); Tune reuses its actor only if the trial's thread ends within this wait.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "15")
    # Tune's own loggers: result.json is kept (--resume and the results table read it); the CSV
    # and TensorBoard copies of every result are not written (MLflow has them), a cost per epoch.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    fail_fast_requests()  # the driver's own MLflow calls fail in seconds and say so
    from workloads.core.console import process_age_s

    t_start = time.perf_counter()
    startup_s = process_age_s()  # Python's start and the imports, before this function
    if not opts.resume:
        check_flags(study, opts)  # typos, missing paths, refused flags: before Ray or MLflow start
    from workloads.core.tracking import MLFLOW_MODULES, import_in_background

    # what the parent run and the searcher import (3 s on a laptop), beside Ray's start and the
    # data checks rather than after them: packages apart from what this thread imports meanwhile
    # (Ray, the workload's readers), so no two threads import a circle of modules from both ends
    import_in_background(*MLFLOW_MODULES, "optuna")
    home = emosweep_home()
    storage = Storage(opts.storage_path or os.environ.get("EMOSWEEP_STORAGE_PATH") or str(home / "ray"))
    opts.tracking_uri = opts.tracking_uri or os.environ.get("EMOSWEEP_TRACKING_URI")
    state, name = {}, None
    if opts.resume:
        name = find_resume(storage, study, opts.resume)
        state = json.loads(storage.read_text(f"{name}/{STATE_FILE}"))
        opts.tracking_uri = opts.tracking_uri or state.get("tracking_uri")

    server = start_tracking_server(home, opts, state)  # boots while Ray starts
    timings: dict = {"startup_s": startup_s}
    held: list = []  # the shared local Ray, while this sweep uses it
    try:
        with timed(timings, "ray_init_s"):
            has_gpu = start_engine(study, opts, home, held)
        if not opts.resume:  # data checks and model resolution overlap the MLflow server's boot
            with timed(timings, "prepare_s"):
                arms, base = study_config(study, opts, has_gpu)
        with timed(timings, "mlflow_ready_s"):
            uri = tracking_ready(server, opts)
        gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else (1 if has_gpu else 0)
        with timed(timings, "sweep_setup_s"):  # the parent run, its data report, the Tuner
            if opts.resume:
                tracking, arms = reopen_sweep(study, state, name, uri)
            else:
                name = opts.name or f"{study.name}-{datetime.now():%Y%m%d-%H%M%S}"
                tracking, state = open_sweep(study, opts, name, arms, base, uri, gpus, server)
                state["folder"] = str(sweep_folder(storage, home, name))
                state["optuna_storage"] = opts.optuna_storage or sqlite_url(Path(state["folder"]) / "optuna.db")
            tuner = build_tuner(study, opts, state, tracking, storage, name, arms, gpus, timings)
            state["mlflow_port"] = server.port if server else state.get("mlflow_port")
            state["rope"] = opts.rope  # how the verdicts are read: a resumed sweep may ask anew
            storage.write_text(f"{name}/{STATE_FILE}", json.dumps(state, indent=2, default=str))
        with timed(timings, "tune_fit_s"), trials_kept_ready(opts, state, gpus):
            result_grid = fit_tuner(tuner, tracking)
        timings["total_s"] = time.perf_counter() - t_start
        return report_sweep(study, opts, state, name, arms, result_grid, tracking, storage, home, server, timings)
    finally:
        if server is not None:
            server.release()
        for shared in held:
            shared.release()
        restore_logs()


# ----------------------------------------------------------------------------- the steps

def sweep_folder(storage, home: Path, name: str) -> Path:
    """Where a sweep's tables, page and Optuna studies go: its Tune folder when that is local,
    else $EMOSWEEP_HOME/results/NAME (Tune's folder is in object storage)."""
    folder = Path(storage.path(name)) if storage.local else home / "results" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def start_tracking_server(home: Path, opts, state: dict):
    """This machine's shared MLflow server, started if none runs (a resumed sweep asks for its
    old port); None when the user named a tracking URI."""
    from workloads.core.mlflow_server import SharedServer

    if opts.tracking_uri:
        return None
    return SharedServer(home / "mlflow", port=state.get("mlflow_port")).acquire()


def start_engine(study: Study, opts, home: Path, held: list) -> bool:
    """Quiet logs (unless --verbose) and Ray: the cluster at --address, else this machine's
    shared local Ray (workloads/core/shared_ray.py; appended to `held`, to be released), else,
    with $EMOSWEEP_RAY_IDLE_S=0 or when it cannot be had, a Ray of the sweep's own. Returns
    whether the cluster has a GPU."""
    import ray

    from workloads.core.console import quiet_logs
    from workloads.core.ray_start import start_ray
    from workloads.core.shared_ray import SharedRay, default_idle_s

    if opts.verbose == 0:
        log = quiet_logs(home / "logs", study.name)
        print(f"[emosweep] Ray, Tune and MLflow logs go to {log} (--verbose 1 shows them here)", flush=True)
    if opts.address or default_idle_s() <= 0:
        start_ray(opts.address, quiet=opts.verbose == 0)
        return ray.cluster_resources().get("GPU", 0) > 0
    try:
        shared = SharedRay(home / "ray-local").acquire()
    except RuntimeError as e:
        print(f"[emosweep] {e}: this sweep starts a Ray of its own", file=sys.stderr)
        start_ray(None, quiet=opts.verbose == 0)
        return ray.cluster_resources().get("GPU", 0) > 0
    held.append(shared)
    if shared.reused:
        print(f"[emosweep] joined the local Ray an earlier sweep started; it stops "
              f"{shared.idle_s / 60:.0f} min after its last use (`emosweep ray` shows or stops it)", flush=True)
    shared.connect(quiet=opts.verbose == 0)  # its workers get this sweep's environment
    return ray.cluster_resources().get("GPU", 0) > 0


def tracking_ready(server, opts) -> str:
    from sweeps.callbacks import set_tracking_uri

    if server is not None:
        server.wait_ready()
    uri = opts.tracking_uri or server.uri
    warn_if_unreachable(uri)
    set_tracking_uri(uri)
    return uri


def warn_if_unreachable(uri: str) -> None:
    """A loopback MLflow server serves trials on this machine only. Several nodes on several
    hosts need the head's server (cluster.yaml exports EMOSWEEP_TRACKING_URI for that)."""
    import ray
    from urllib.parse import urlparse

    if urlparse(uri).hostname not in ("127.0.0.1", "localhost", "::1"):
        return
    hosts = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    if len(hosts) > 1:
        print(f"[emosweep] warning: MLflow at {mask_uri(uri)} is loopback-only but the cluster spans {len(hosts)} hosts; "
              f"trials elsewhere cannot log. Pass --tracking-uri http://<head-ip>:5000 or set "
              f"EMOSWEEP_TRACKING_URI.", file=sys.stderr)


def reopen_sweep(study: Study, state: dict, name: str, uri: str):
    from sweeps.report import sweep_tags
    from workloads.core.tracking import start_parent_run

    tracking = start_parent_run(uri, state["experiment"], name, {}, sweep_tags(study),
                                resume_run_id=state["parent_run_id"])
    return tracking, state["arms"]


def sweep_params(study: Study, opts, arms: dict, base: dict, gpus: float, scheduler: str, replicates: list) -> dict:
    """What the parent run records of the sweep: every choice it made, seeds included."""
    from workloads.core.seeding import derive_seed

    return {
        "study": study.name, "arms": ",".join(arms), "samples_per_arm": opts.num_samples, "metric": study.metric,
        "mode": study.mode, "scheduler": scheduler, "seed": opts.seed, "cpus_per_trial": opts.cpus_per_trial,
        "gpus_per_trial": gpus, "max_failures": opts.max_failures, "smoke": opts.smoke,
        "folds": base["folds"], "n_folds": base["n_folds"], "seeds": base["seeds"],
        "split_by": base["split_by"], "split_seed": base["split_seed"], "allow_leak": opts.allow_leak, "rope": opts.rope,
        "drop_duplicates": opts.drop_duplicates,
        "replicate_seeds": ",".join(str(s) for s in dict.fromkeys(r["seed"] for r in replicates)),
        **{f"optuna_seed.{a}": derive_seed(opts.seed, "optuna", a) for a in arms},
        **{f"base.{k}": v for k, v in base.items()},
        **{f"space.{k}": repr(v) for k, v in study.space.items()},
    }


def open_sweep(study: Study, opts, name: str, arms: dict, base: dict, uri: str, gpus: float, server):
    """The sweep's parent run with its parameters, tags, shared view and data report; returns
    (tracking context, the sweep's state as saved for --resume)."""
    from mlflow.tracking import MlflowClient

    from sweeps.report import log_data_report, sweep_tags
    from workloads.core.tracking import share_sweep_view, start_parent_run

    replicates = replicates_of(base)
    scheduler = opts.scheduler or ("asha" if opts.num_samples > 1 else "fifo")
    experiment = opts.experiment or study.name
    tags = {**sweep_tags(study, base), "split_gate": base.get("_gate", "not run: the study's official splits"),
            **({"mlflow.note.content": base["_run_note"]} if base.get("_run_note") else {}),
            **({"allow_leak": "true"} if opts.allow_leak and base.get("_gate_leaks") else {})}
    tracking = start_parent_run(uri, experiment, name, sweep_params(study, opts, arms, base, gpus, scheduler,
                                                                    replicates), tags)
    client = MlflowClient(uri)
    metrics = ["test_acc", "test_macro_f1", *(c for c in study.table_columns if c.startswith("test_"))]
    try:
        view = share_sweep_view(client, uri, tracking.experiment_id, tracking.parent_run_id, metrics, study.metric)
    except Exception as e:  # a view is a convenience; the sweep goes on without it
        view = uri
        print(f"[emosweep] could not save the MLflow view of this sweep: {e}", file=sys.stderr)
    print(f"[emosweep] trials in the MLflow UI: {mask_uri(view)}")
    shown = log_data_report(study, base, client, tracking.parent_run_id)
    state = {**shown, "seed": opts.seed, "study": study.name, "experiment": experiment, "mlflow_view": view,
             "workers_per_trial": opts.workers_per_trial, "parent_run_id": tracking.parent_run_id,
             "tracking_uri": opts.tracking_uri, "mlflow_port": server.port if server else None,
             "arms": arms, "base": base, "scheduler": scheduler, "samples_per_arm": opts.num_samples,
             "replicates": replicates, "reference": opts.reference, "rope": opts.rope}
    state["n_trials"] = trial_count(study, arms, state)
    return tracking, state


def build_tuner(study: Study, opts, state: dict, tracking, storage, name: str, arms: dict, gpus: float,
                timings: dict | None = None):
    """The Tuner: the trainable with its resources, the per-arm searcher and the scheduler (or
    Tune's own restore of an interrupted sweep)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from sweeps.callbacks import (ChildRunStatus, DropFinishedWeights, FirstEpochClock, KeepLatestCheckpoint,
                                  LeanTrialState, TrialProgress, trial_dirname, trial_name)
    from sweeps.search import ArmGridSearch
    from workloads.core.console import requiet
    from workloads.core.heap import trimmed
    from workloads.core.on_ray import closing_trainable

    requiet()  # Optuna, imported just now, adds its own console handler

    workers = int(state.get("workers_per_trial", opts.workers_per_trial))
    # A data-parallel trial is a coordinator that holds nothing; its Ray Train workers hold
    # the CPUs and GPUs (--cpus/--gpus-per-trial each). (Tune needs a non-empty request: a
    # little memory, which costs no CPU.)
    resources = ({"cpu": 0, "gpu": 0, "memory": 64 * 2**20} if workers > 1
                 else {"cpu": opts.cpus_per_trial, "gpu": gpus})
    # each trial gives back what it freed: an actor runs trial after trial, each in a thread of its own
    trainable = tune.with_resources(closing_trainable(tune.with_parameters(trimmed(study.trainable),
                                                                           tracking=tracking)), resources)
    if opts.resume:
        print(f"[emosweep] resuming {storage.path(name)} (MLflow parent run {tracking.parent_run_id})")
        return tune.Tuner.restore(storage.path(name), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    base = state["base"]
    space = searched_space(study, base)
    searcher = ArmGridSearch(arms, space, base, state["samples_per_arm"], study.metric, study.mode, opts.seed,
                             state["replicates"], storage=state.get("optuna_storage"), sweep=name)
    sched = None
    if state["scheduler"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        max_epochs = max([int(base.get("epochs", 1))] + [int(c) for c in getattr(space.get("epochs"), "values", [])])
        sched = ASHAScheduler(time_attr="training_iteration", max_t=max_epochs, grace_period=1, reduction_factor=2)
    callbacks = [JsonLoggerCallback(), ChildRunStatus(tracking.experiment_id, tracking.parent_run_id),
                 KeepLatestCheckpoint(timings), DropFinishedWeights(), LeanTrialState(study.metric),
                 *([TrialProgress(state["n_trials"], study.metric, study.mode)] if opts.verbose == 0 else []),
                 *([FirstEpochClock(timings)] if timings is not None else [])]
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=study.metric, mode=study.mode, search_alg=searcher, scheduler=sched,
            num_samples=state["n_trials"], max_concurrent_trials=opts.max_concurrent,
            trial_name_creator=trial_name, trial_dirname_creator=trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage.root, verbose=opts.verbose,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            # no num_to_keep: with it Tune saves its whole state at every trial checkpoint (quadratic in
            # the trials); KeepLatestCheckpoint deletes what the saved state no longer names
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None), callbacks=callbacks),
    )


@contextmanager
def trials_kept_ready(opts, state: dict, gpus: float):
    """While Tune runs: let it keep as many trials ready to start as the cluster runs at once.

    With a searcher of its own (ours: each arm's Optuna sampler), Tune keeps one pending trial
    (`TUNE_MAX_PENDING_TRIALS_PG`'s "auto"): a trial is created only once the one before has
    started, and a new actor only once the one before is up. Trials shorter than that round
    trip ran one at a time: a 2-core sweep of 1,024 0.4-s trials ran every trial on one actor,
    0.78 s a trial of Tune's fit, where two actors take 0.41. Counted on the nodes up now: on an autoscaling
    cluster, export TUNE_MAX_PENDING_TRIALS_PG to show the autoscaler more demand. A value
    exported is kept, and `--max-concurrent` sets the limit itself (Tune reads it)."""
    import ray

    if opts.max_concurrent or os.environ.get("TUNE_MAX_PENDING_TRIALS_PG"):
        yield
        return
    workers = max(int(state.get("workers_per_trial", opts.workers_per_trial)), 1)
    need = {"CPU": opts.cpus_per_trial * workers, "GPU": gpus * workers}  # a data-parallel trial: its workers'
    cluster = ray.cluster_resources()
    slots = [cluster.get(k, 0.0) / v for k, v in need.items() if v > 0]
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(1, int(min(slots))) if slots else 1)
    try:
        yield
    finally:
        os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)


def fit_tuner(tuner, tracking):
    from mlflow.tracking import MlflowClient

    try:
        return tuner.fit()
    except BaseException:
        MlflowClient(tracking.uri).set_terminated(tracking.parent_run_id, "FAILED")
        raise


def report_sweep(study: Study, opts, state: dict, name: str, arms: dict, result_grid, tracking, storage, home: Path,
                 server, timings: dict) -> pd.DataFrame:
    """The tables (in the sweep's folder when local, else under EMOSWEEP_HOME/results, and on
    the parent run), the arm runs in MLflow, and the terminal's summary."""
    from sweeps.report import finish
    from sweeps.results import gather_curves, gather_predictions, results_table

    table = results_table(study, result_grid, arms)
    expected = state.get("n_trials") or trial_count(study, arms, state)
    done = result_grid.num_terminated + result_grid.num_errors
    state["finished"] = done >= expected
    if not state["finished"]:
        print(f"[emosweep] sweep interrupted: {done} of {expected} trials done. Continue with: --resume {name}",
              file=sys.stderr)
    local_dir = Path(state["folder"]) if state.get("folder") else sweep_folder(storage, home, name)
    arms_tab, files = finish(study, name, table, arms, state, local_dir, opts.results_out, tracking, timings,
                             predictions=gather_predictions(result_grid), curves=gather_curves(result_grid))
    uri, run_id = tracking.uri, tracking.parent_run_id
    print(f"MLflow: {mask_uri(uri)}  (experiment '{state['experiment']}', parent run {run_id})")
    if state.get("mlflow_view"):
        print(f"  the arms, best first: {mask_uri(state['mlflow_view'])}  (`emosweep ui` opens it)")
    if server is not None:
        print(f"  the server stays up {server.idle_s / 60:.0f} min after its last use (`emosweep tracking` "
              f"shows or stops it); it serves every sweep of {home}")
    print("driver timings: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in timings.items()))
    table.attrs.update(timings=timings, experiment_dir=storage.path(name), tracking_uri=uri, parent_run_id=run_id,
                       arms=arms_tab, arms_csv=str(files["arms_csv"]))
    return table
