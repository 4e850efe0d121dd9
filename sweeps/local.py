"""`--local`: a study without Ray, in this process, one trial after another.

Each chosen arm runs its first configuration (the study's defaults with the arm's knobs), on
every fold and seed asked for, by calling the study's trainable, `train(config, tracking)`,
directly. Nothing imports Ray: the data cache is filled in this process, and a breakpoint in a
trainable stops right there. MLflow is used when it is installed (the shared server, or
--tracking-uri); otherwise the results go to the table and a local folder only. What it
cannot do is refused: a search (--num-samples > 1), data-parallel trials, a Ray cluster,
--resume.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from sweeps.study import Study, arm_config, check_flags, replicates_of, study_config
from workloads.core.errors import UserError
from workloads.core.paths import mask_uri

REFUSED = {  # flag → why --local cannot honour it (the Ray engine's flags)
    "address": "--local runs without Ray; a cluster needs the Ray engine",
    "resume": "--local keeps no Tune state to resume; run it again",
    "max_concurrent": "--local runs one trial at a time",
    "scheduler": "--local runs every trial to its end",
    "storage_path": "--local keeps no Tune state; its results go under $EMOSWEEP_HOME/local (--results-out moves the table)",
    "gpus_per_trial": "--local trains on this process's device (a visible GPU, else the CPU)",
    "optuna_storage": "--local searches nothing; each arm runs its first configuration",
    "search": "--local searches nothing; each arm runs its first configuration (--set picks a value)",
}


@dataclass
class LocalResult:
    """One trial's outcome, shaped like Tune's Result for results_table."""

    config: dict
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    path: str | None = None
    history: list = field(default_factory=list)  # every epoch's report, as Tune's result.json holds them

    @property
    def metrics_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

    @property
    def checkpoint(self):
        """The trial's checkpoint folder, as Tune's Result gives it (None when it kept none)."""
        from workloads.core.session import _LocalCheckpoint

        folder = Path(self.path or "", "checkpoint")
        return _LocalCheckpoint(str(folder)) if self.path and folder.is_dir() else None


def refuse_flags(opts) -> None:
    """The Ray engine's flags are refused, never ignored."""
    if opts.num_samples > 1:
        raise UserError("--num-samples: --local runs each arm's first configuration; searching needs the Ray engine")
    for flag, why in REFUSED.items():
        if getattr(opts, flag, None):
            raise UserError(f"--{flag.replace('_', '-')}: {why}")
    if opts.workers_per_trial > 1:
        raise UserError("--workers-per-trial: data-parallel trials need Ray Train; --local runs one process")
    if opts.cpus_per_trial != 1:
        raise UserError("--cpus-per-trial: --local trains with the threads PyTorch gives this process")
    if opts.max_failures != 2:
        raise UserError("--max-failures: --local runs each trial once and reports a crash")


def run_local(study: Study, opts) -> pd.DataFrame:
    """Run each chosen arm's first configuration here; returns the per-trial results table."""
    from sweeps.report import finish, log_data_report
    from sweeps.results import gather_curves, gather_predictions, results_table
    from workloads.core.session import LocalSession
    from workloads.core.paths import emosweep_home

    refuse_flags(opts)
    check_flags(study, opts)
    import torch

    home = emosweep_home()
    name = opts.name or f"{study.name}-local-{datetime.now():%Y%m%d-%H%M%S}"
    folder = home / "local" / name
    previous = os.environ.get("EMOSWEEP_LOCAL")
    os.environ["EMOSWEEP_LOCAL"] = "1"  # the data cache is filled in this process, not on Ray Data
    stack = ExitStack()
    if opts.verbose == 0:
        from workloads.core.console import quiet_logs

        log = quiet_logs(home / "logs", f"{study.name}-local")
        print(f"[emosweep] MLflow's and the libraries' logs go to {log} (--verbose 1 shows them here)", flush=True)
    try:
        arms, base = study_config(study, opts, torch.cuda.is_available())
        tracking = open_tracking(study, opts, name, base, stack)
        if tracking is not None:
            from mlflow.tracking import MlflowClient

            shown = log_data_report(study, base, MlflowClient(tracking.uri), tracking.parent_run_id)
        else:
            shown = log_data_report(study, base)
        replicates = replicates_of(base)
        state = {"base": base, "samples_per_arm": 1, "reference": opts.reference, "rope": opts.rope,
                 "experiment": study.name, "seed": opts.seed, **shown}
        print(f"[emosweep] --local: {len(arms)} arm(s) × {len(replicates)} run(s) in this process, no Ray; "
              f"results in {folder}")
        results = []
        for arm in arms:
            for replicate in replicates:
                config = {**arm_config(base, arms[arm]), "arm": arm, "config_id": f"{arm}/c0", **replicate}
                trial = f"local_{arm}_{replicate['fold'] if replicate['fold'] is not None else 0}_{replicate['replicate']}"
                session = LocalSession(checkpoint_dir=str(folder / trial / "checkpoint"), trial=trial,
                                       quiet=opts.verbose == 0)
                print(f"[emosweep] {arm}" + (f", fold {replicate['fold']}" if replicate["fold"] is not None else "")
                      + f", seed {replicate['seed']}", flush=True)
                results.append(run_trial(study, config, tracking, session, folder / trial))
        table = results_table(study, results, arms)
        state["finished"] = True
        finish(study, name, table, arms, state, folder, opts.results_out, tracking,
               predictions=gather_predictions(results), curves=gather_curves(results))
        if tracking is not None:
            print(f"MLflow: {mask_uri(tracking.uri)}  (experiment '{study.name}', parent run {tracking.parent_run_id}; "
                  f"`emosweep ui` opens it)")
        return table
    finally:
        from workloads.core.console import restore_logs

        restore_logs()
        if previous is None:
            os.environ.pop("EMOSWEEP_LOCAL", None)
        else:
            os.environ["EMOSWEEP_LOCAL"] = previous
        stack.close()


def run_trial(study: Study, config: dict, tracking, session, folder: Path) -> LocalResult:
    """One trial through the study's trainable; a crash is reported with its traceback and the
    next trial runs."""
    from workloads.core.heap import trimmed
    from workloads.core.session import local_session

    t = time.perf_counter()
    error = None
    with local_session(session):
        try:
            trimmed(study.trainable)(config, tracking)
        except Exception:
            error = traceback.format_exc()
            print(f"[emosweep] trial {session.trial_id} failed:\n{error}", file=sys.stderr)
    metrics = dict(session.reports[-1]) if session.reports else {}
    metrics["time_total_s"] = time.perf_counter() - t
    if tracking is not None:
        from workloads.core.tracking import close_trial_run

        close_trial_run(tracking, session.trial_id, "FAILED" if error else "FINISHED")
    return LocalResult(config, metrics, error, str(folder), list(session.reports))


def open_tracking(study: Study, opts, name: str, base: dict, stack: ExitStack):
    """The sweep's parent run when MLflow is installed (--tracking-uri, $EMOSWEEP_TRACKING_URI,
    else the shared server, held until `stack` closes), else None."""
    if importlib.util.find_spec("mlflow") is None:
        print("[emosweep] MLflow is not installed: the results go to the table and the local folder only")
        return None
    from sweeps.report import sweep_tags
    from workloads.core.tracking import fail_fast_requests, start_parent_run, tracking_server

    fail_fast_requests()
    uri = stack.enter_context(tracking_server(opts.tracking_uri))
    params = {"study": study.name, "engine": "local", "seed": opts.seed, "smoke": opts.smoke,
              **{f"base.{k}": v for k, v in base.items()}}
    return start_parent_run(uri, opts.experiment or study.name, name, params, sweep_tags(study, base, engine="local"))
