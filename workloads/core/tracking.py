"""MLflow tracking: one parent run per sweep, one nested child run per trial.

Concurrent trials write to MLflow at the same time. A bare SQLite file written by several
processes loses metrics ("database is locked"), so every write goes through one
`mlflow server` on loopback, which owns the SQLite database and the artifact store. When no
--tracking-uri is given, sweeps share one server per $EMOSWEEP_HOME (`SharedServer`), started
on first use and stopped after a while unused; on a cluster the head node runs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from .mlflow_server import SharedServer

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow itself (2 s to import) is imported where it is used: a trial's run imports it in its
# background thread, while the trial's first epoch trains

# Tag keys are plain words so that they read well as columns in the MLflow UI.
TAG_TRIAL_ID = "trial_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_MODEL = "model_uri"  # set on a child run once its model is logged
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs, not GenAI traces


def fail_fast_requests() -> None:
    """MLflow's client retries an unreachable server for minutes by default. Emosweep's callers
    (the driver, every trial) retry on their own schedule instead, so each request gives up in
    seconds. Applies to this process; Ray workers started after it inherit the setting."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


@contextmanager
def tracking_server(uri: str | None = None):
    """The tracking URI to read from: `uri`, else $EMOSWEEP_TRACKING_URI, else the shared server
    of $EMOSWEEP_HOME/mlflow, held for the duration (what `emosweep demo` and `predict` read)."""
    from .paths import emosweep_home

    uri = uri or os.environ.get("EMOSWEEP_TRACKING_URI")
    if uri:
        yield uri
        return
    server = SharedServer(emosweep_home() / "mlflow").acquire().wait_ready()
    try:
        yield server.uri
    finally:
        server.release()


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The commit the code runs from (with '-dirty' for uncommitted changes), or 'unknown'."""
    cwd = str(path or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5)
        sha = head.stdout.strip()
        if head.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config → flat `a.b` keys; private keys (leading underscore) are left out."""
    out = {}
    for k, v in d.items():
        if str(k).startswith("_"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _params(d: dict) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in flatten(d).items()]


@dataclass
class TrackingContext:
    """What a trial needs to log under the sweep's parent run. Plain data: it travels to
    Ray workers on any node, and every worker talks to the same server over HTTP."""

    uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict = field(default_factory=dict)  # study, workload, git_commit: the same for every trial
    resumed: bool = False  # the sweep was interrupted and resumed: a trial may find its place's run left over


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the database for a sqlite:/// URI
    (MLflow's own default is ./mlruns of whatever folder the process runs in), else the
    server's choice (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
    return (db.parent / f"{db.stem}-artifacts" / name).as_uri()


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if new, and tagged as model training so that the MLflow UI
    opens it on the runs table (an experiment with no kind opens on GenAI traces)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=EXPERIMENT_KIND,
                                        artifact_location=artifact_location(client.tracking_uri, name))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


ROW_TAG = "emosweep_row"  # what a run of a sweep is: "sweep" (the parent), "arm" (an arm's configuration)


def start_parent_run(uri: str, experiment: str, run_name: str, params: dict, tags: dict,
                     resume_run_id: str | None = None) -> TrackingContext:
    """Create the sweep's parent run, or reopen it when a sweep is resumed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, experiment)
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        return TrackingContext(uri, exp_id, resume_run_id, dict(tags), resumed=True)
    run = client.create_run(exp_id, run_name=run_name,
                            tags={**{k: str(v) for k, v in tags.items()}, ROW_TAG: "sweep"})
    client.log_batch(run.info.run_id, params=_params(params))
    return TrackingContext(uri, exp_id, run.info.run_id, dict(tags))


def share_sweep_view(client: MlflowClient, uri: str, experiment_id: str, parent_run_id: str,
                     metrics: list[str], sort_by: str, extra_filter: str = "", params=()) -> str:
    """A shared view of the MLflow UI (an experiment tag the UI reads) that lists this sweep's
    trials, not the collapsed parent row, with their metrics (and `params`) as columns, best first. Returns
    its address: without it the UI opens on GenAI traces and the default columns show no
    score at all."""
    key = f"sweep-{parent_run_id[:12]}"
    state = {"searchFilter": f"tags.`{TAG_PARENT}` = '{parent_run_id}'" + (f" and {extra_filter}" if extra_filter else ""),
             "orderByKey": f"metrics.`{sort_by}`",
             "orderByAsc": False,
             "selectedColumns": ["tags.`arm`", *(f"metrics.`{m}`" for m in dict.fromkeys([sort_by, *metrics])),
                                 *(f"params.`{p}`" for p in params)]}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
    return f"{uri}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={key}"


def find_child_run(client: MlflowClient, ctx: TrackingContext, trial_id: str):
    runs = client.search_runs(
        [ctx.experiment_id],
        filter_string=f"tags.{TAG_TRIAL_ID} = '{trial_id}' and tags.`{TAG_PARENT}` = '{ctx.parent_run_id}'",
        max_results=2,
    )
    return runs[0] if runs else None


RUN_ID_KEY = "mlflow_run_id"  # a trial's result carries its run's id, so the driver needs no search


def close_trial_run(ctx: TrackingContext, trial_id: str, status: str, tags: dict | None = None,
                    run_id: str | None = None) -> None:
    """Set a trial's child run to its final status (FINISHED, FAILED), with `tags`; a run
    already FINISHED (a resumed sweep re-announces finished trials) is left as it is. The run
    is fetched by `run_id` where the trial reported it (one lookup by key, whatever the runs in
    the experiment), else searched for by trial id. Tracking never takes a sweep down: a
    failure is one line on stderr."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(ctx.uri)
        run = client.get_run(run_id) if run_id else find_child_run(client, ctx, trial_id)
        if run is None or run.info.status == "FINISHED":
            return
        if tags:
            from mlflow.entities import RunTag

            client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        client.set_terminated(run.info.run_id, status)
    except Exception as e:
        print(f"[emosweep] could not close the MLflow run of trial {trial_id}: {e}", file=sys.stderr)


MLFLOW_MODULES = ("mlflow.entities", "mlflow.tracking")


def import_in_background(*modules: str) -> threading.Thread:
    """Import `modules` in a daemon thread, beside what this process waits on meanwhile (Ray's
    start, the first epoch): MLflow alone takes 2 s. The thread holds each module's import lock,
    so a use that comes first waits for it rather than importing twice; a failure is left for
    that use to raise and explain."""
    import importlib

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:
                pass

    thread = threading.Thread(target=run, name="import-beside", daemon=True)
    thread.start()
    return thread


class TrialRun:
    """The child run of one trial, kept in step with the trial's history.

    `sync(history)` logs every epoch of the history that MLflow does not have yet. The same
    call serves a first start, a retry after a crash, a resumed sweep and an MLflow outage:
    the run is found by trial id (never a duplicate run), an epoch already logged is never
    logged again, and epochs that could not be logged while the server was away are logged
    when it is back. Requests fail fast (few retries) so an outage costs the trial seconds,
    not minutes; training goes on meanwhile."""

    def __init__(self, ctx: TrackingContext, trial_id: str, run_name: str, params: dict, tags: dict,
                 artifact_dir: str):
        fail_fast_requests()  # the next sync retries
        self.ctx, self.trial_id, self.run_name = ctx, trial_id, run_name
        self.params, self.tags = params, tags
        self._client = None
        self.run_id: str | None = None
        self.logged_steps: set = set()
        self.artifact_dir = artifact_dir  # files waiting to be uploaded: the latest version of each
        self.pending_artifacts: set = set()
        # keys whose value is logged only at the epochs it changes (counts, sizes, the best
        # epoch's test scores): the UI's latest value and chart are the same from fewer metric
        # rows, the server's main cost per trial
        self.on_change: set = set()
        self._logged_value: dict = {}
        self.failures = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self._latest: list | None = None  # the newest history handed to sync_later
        self._thread: threading.Thread | None = None
        self._last_pass = float("-inf")
        # MLflow takes seconds to import: done beside the first epoch, not before it
        import_in_background(*MLFLOW_MODULES)

    @property
    def client(self) -> "MlflowClient":
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.ctx.uri)
        return self._client

    def _attach(self) -> None:
        if self.run_id is not None:
            return
        # where the trial sits in the sweep: its configuration, fold and seed (folds × seeds runs)
        place = {k: ("" if self.params.get(k) is None else self.params[k]) for k in ("config_id", "fold", "seed")
                 if k in self.params}
        existing = find_child_run(self.client, self.ctx, self.trial_id) or self._orphan(place)
        if existing is not None:
            self.client.update_run(existing.info.run_id, status="RUNNING")
            if existing.data.tags.get(TAG_TRIAL_ID) != self.trial_id:
                self.client.set_tag(existing.info.run_id, TAG_TRIAL_ID, self.trial_id)
            self.logged_steps = {m.step for m in self.client.get_metric_history(existing.info.run_id, "val_loss")}
            self.run_id = existing.info.run_id
            return
        all_tags = {**self.ctx.tags, **place, **self.tags, TAG_TRIAL_ID: self.trial_id,
                    TAG_PARENT: self.ctx.parent_run_id}
        run = self.client.create_run(self.ctx.experiment_id, run_name=self.run_name,
                                     tags={k: str(v) for k, v in all_tags.items()})
        self.client.log_batch(run.info.run_id, params=_params(self.params))
        self.run_id = run.info.run_id

    def _orphan(self, place: dict):
        """The unfinished run of this trial's place (configuration, fold, seed) in the sweep, left
        by a trial of another id: a sweep killed after a trial had started but before Tune saved
        it resumes that place as a new trial, which takes the run over rather than add a second."""
        if not self.ctx.resumed or "config_id" not in place:  # only a resumed sweep has any
            return None
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in place.items())
        runs = self.client.search_runs([self.ctx.experiment_id], max_results=2, filter_string=(
            f"{where} and tags.`{TAG_PARENT}` = '{self.ctx.parent_run_id}' and attributes.status = 'RUNNING'"))
        return runs[0] if len(runs) == 1 else None

    def add_artifact(self, path: str) -> None:
        """Queue a file (written under artifact_dir) for upload at the next sync."""
        self.pending_artifacts.add(os.path.relpath(path, self.artifact_dir))

    def sync(self, history: list[dict]) -> bool:
        """Log what MLflow lacks. True when the run is fully up to date."""
        try:
            from mlflow.entities import Metric

            self._attach()
            # every missing epoch in as few requests as the server takes (at most 1000 metrics
            # each); an epoch counts as logged once its whole request succeeded
            batch, epochs = [], []
            last = dict(self._logged_value)  # what MLflow will hold once this pass's rows are in
            for row in history:
                if row["epoch"] in self.logged_steps:
                    continue
                now = int(time.time() * 1000)
                values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                values = {k: v for k, v in values.items() if k not in self.on_change or last.get(k) != v}
                last.update(values)
                metrics = [Metric(k, v, now, int(row["epoch"])) for k, v in values.items()]
                if batch and len(batch) + len(metrics) > 900:
                    self._log_metrics(batch, epochs)
                    batch, epochs = [], []
                batch += metrics
                epochs.append(row["epoch"])
            if epochs:
                self._log_metrics(batch, epochs)
            for rel in sorted(self.pending_artifacts):
                self.client.log_artifact(self.run_id, os.path.join(self.artifact_dir, rel))
                self.pending_artifacts.discard(rel)
            return True
        except Exception as e:  # the server is unreachable or failing: keep training, retry later
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"[emosweep] MLflow logging failed for trial {self.trial_id} ({self.last_error}); "
                  f"will retry", file=sys.stderr)
            return False

    def _log_metrics(self, batch: list, epochs: list) -> None:
        for i in range(0, len(batch), 900):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])
        self.logged_steps.update(epochs)
        self._logged_value.update((m.key, m.value) for m in batch)  # in step order

    def sync_later(self, history: list[dict], every_s: float = 5.0) -> None:
        """`sync` in a background thread, at most once per `every_s` seconds: the trial goes on
        training while the server takes the epochs, and short epochs cost one request per
        interval, not one each. Epochs handed in meanwhile wait for the next pass (or the
        trial's closing `sync_until`), which logs every epoch still missing. A failure is
        counted and retried the same way."""
        with self._lock:
            self._latest = list(history)
            if self._thread is not None and self._thread.is_alive():
                return
            if time.monotonic() - self._last_pass < every_s:
                return
            self._last_pass = time.monotonic()
            self._thread = threading.Thread(target=self._drain, name=f"mlflow-sync-{self.trial_id}", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        with self._lock:
            rows = self._latest
        self.sync(rows)

    def wait(self) -> None:
        """Until the background sync (if any) is done."""
        thread = self._thread
        if thread is not None:
            thread.join()

    def log_code_model(self, code_file: str, artifacts: dict, signature, pip_requirements: list[str],
                       tags: dict, name: str = "model") -> str | None:
        """Log a models-from-code pyfunc (`code_file` is copied in; nothing is pickled) to this
        trial's run, once (a retried or resumed trial finds the tag and does not log a second
        copy), with `tags` on the run. Returns the model URI, or None after saying why it
        could not be logged (the trial's results stand either way)."""
        try:
            self._attach()
            logged = self.client.get_run(self.run_id).data.tags.get(TAG_MODEL)
            if logged:
                return logged
            import mlflow
            import mlflow.pyfunc
            from mlflow.models import Model

            mlflow.set_tracking_uri(self.ctx.uri)
            # the logged model belongs to the sweep's experiment (else MLflow's default one, whose
            # artifacts a sqlite store would put in ./mlruns of the current folder)
            mlflow.set_experiment(experiment_id=self.ctx.experiment_id)
            # Model.log, not pyfunc.log_model: it takes the run id, so no fluent run is opened
            # (and closed as FINISHED) inside a trial
            info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=self.run_id, python_model=code_file,
                             artifacts=artifacts, signature=signature, pip_requirements=pip_requirements)
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)
            self.client.set_tag(self.run_id, TAG_MODEL, info.model_uri)  # models:/<id>, MLflow 3's logged model; last
            return info.model_uri
        except Exception as e:
            print(f"[emosweep] could not log the model of trial {self.trial_id}: {type(e).__name__}: "
                  f"{str(e)[:300]}", file=sys.stderr)
            return None

    def unlogged(self, history: list[dict]) -> list[int]:
        return [row["epoch"] for row in history if row["epoch"] not in self.logged_steps]

    def sync_until(self, history: list[dict], patience_s: float, interval_s: float = 5.0) -> bool:
        """At the end of a trial: keep trying for up to patience_s seconds."""
        deadline = time.monotonic() + patience_s
        while not self.sync(history):
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval_s)
        return True
