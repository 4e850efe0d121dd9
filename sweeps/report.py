"""The end of a sweep, whichever engine ran it: the per-arm table chosen on validation, the
tables on disk, the arm runs in MLflow, and what the terminal shows."""
from __future__ import annotations

import importlib.util
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from sweeps.results import arm_table, config_stats, default_reference, format_arm_table, plot_arms, write_tables
from sweeps.study import Study, selection_note


def reference_of(study: Study, arms: dict, asked: str | None):
    """The reference arm of each arm: --reference, else the study's own rule, else its floor or
    first arm."""
    if asked:
        return asked
    if callable(study.reference):
        return lambda arm: study.reference(arm, arms)
    return study.reference if study.reference in arms else default_reference(arms)


def sweep_tags(study: Study, base: dict | None = None, **more) -> dict:
    """The tags of a sweep's parent run (and, through the tracking context, of its trials):
    the study, its workload, the code's commit, and what the prepared config says of the model."""
    from workloads.core.tracking import git_commit

    tags = {"study": study.name, "workload": study.workload, "git_commit": git_commit()}
    if base is not None:
        tags.update({"random_init": str(bool(base.get("random_init"))).lower(), "model_id": base.get("model_id", "")})
    return {**tags, **more}


def log_data_report(study: Study, base: dict, client=None, run_id: str | None = None) -> None:
    """The study's data report (and the split gate's), printed, and on the parent run when
    there is one (--local without MLflow has none)."""
    if base.get("_gate_leaks") and client is not None:
        client.log_text(run_id, "\n".join(base["_gate_leaks"]) + "\n", "split_gate_leaks.txt")
    if study.describe is None:
        return
    try:
        report = study.describe(base)
    except ImportError as e:  # a bare box without tabulate (pandas' Markdown): the run goes on without it
        print(f"[emosweep] no data report: {e}", file=sys.stderr)
        return
    for artifact, content in report.items():
        if isinstance(content, str) and base.get("_gate"):
            content = content.rstrip("\n") + f"\n\n{base['_gate']}\n"
        if isinstance(content, Path):  # a picture: logged as a file, not printed
            if client is not None:
                client.log_artifact(run_id, str(content))
            continue
        print(content)
        if client is not None:
            client.log_text(run_id, content, artifact)


def finish(study: Study, name: str, table: pd.DataFrame, arms: dict, state: dict, out_dir: Path,
           results_out: str | None, tracking=None, timings: dict | None = None,
           predictions: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """Arm table, files, MLflow (when tracking is given), and the terminal's summary.
    `predictions`: every trial's per-item predictions (results.gather_predictions), written to
    results.predictions.parquet. Returns (arm table, {name: path} of what was written)."""
    swept = state.get("base") or {}
    reference = reference_of(study, arms, state.get("reference"))
    arms_tab = arm_table(table, arms, study.metric, study.mode, reference, study.table_columns,
                         predictions=predictions, rope=state.get("rope"))
    how = selection_note(swept, int(state["samples_per_arm"]), study.metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = Path(results_out) if results_out else out_dir / "results.csv"
    run_note = swept.get("_run_note")
    out, arms_csv, md = write_tables(table, arms_tab, out, f"{study.name}: {name}", run_note, how, study.terminal_columns)
    per_item = None
    if predictions is not None and not predictions.empty:
        per_item = out.with_name(out.stem + ".predictions.parquet")
        predictions.to_parquet(per_item, index=False)
    ranked = None
    if len(arms_tab) > 2:  # a sweep over several corpora: its arms ranked across them
        from sweeps.compare import across_corpora

        ranked = across_corpora(arms_tab, out.with_suffix(""), state.get("rope"))
    plot = None
    if len(arms_tab) > 1 and arms_tab["test_acc_mean"].notna().any() and importlib.util.find_spec("matplotlib"):
        plot = plot_arms(arms_tab, out.with_name(out.stem + ".arms.png"))
    if tracking is not None:
        _log_results(tracking, table, arms_tab, study.metric, [out, arms_csv, md, arms_csv.with_suffix(".md"), plot,
                                                               per_item, *(ranked[1] if ranked else [])],
                     timings or {}, finished=state.get("finished", True))
    models = ", ".join(str(m) for m in arms_tab.get("model", pd.Series(dtype=object)).dropna().unique())
    print(f"\n{study.name} — {name}\n{how}\n{format_arm_table(arms_tab, study.terminal_columns)}\n"
          + (f"model: {models}\n" if models else ""))
    if ranked:
        print(ranked[0])
    if run_note:
        print(f"note: {run_note}")
    print(f"results: {arms_csv} (per arm), {out} (per trial), {md}" + (f", {plot}" if plot else "")
          + (f", {per_item} (per item)" if per_item else "")
          + (f", {', '.join(str(f) for f in ranked[1])} (across corpora)" if ranked else ""))
    return arms_tab, {"csv": out, "arms_csv": arms_csv, "md": md, "plot": plot, "predictions": per_item,
                      "corpora": ranked[1] if ranked else []}


def _log_results(tracking, table: pd.DataFrame, arms_tab: pd.DataFrame, metric: str, files: list,
                 timings: dict, finished: bool) -> None:
    from mlflow.tracking import MlflowClient

    run_id = tracking.parent_run_id
    try:
        client = MlflowClient(tracking.uri)
        for path in files:
            if path is not None:
                client.log_artifact(run_id, str(path))
        if not table.empty and table["test_acc"].notna().any():
            client.log_metric(run_id, "best_test_acc", float(table["test_acc"].max()))
        if not arms_tab.empty:
            log_arm_runs(client, tracking, table, arms_tab, metric)
        for k, v in timings.items():
            client.log_metric(run_id, f"driver_{k}", v)
        client.set_terminated(run_id, "FINISHED" if finished else "KILLED")
    except Exception as e:  # the tables are on disk either way; say what MLflow is missing
        print(f"[emosweep] could not log the results tables to MLflow ({type(e).__name__}: {str(e)[:200]}); "
              f"they are at {files[0]}", file=sys.stderr)


def log_arm_runs(client, tracking, trials: pd.DataFrame, arms_tab: pd.DataFrame,
                 metric: str) -> None:
    """One MLflow run per (arm, configuration) under the sweep's parent, holding its fold and
    seed runs as children and its aggregate metrics (results.config_stats); the configuration
    each arm's row reports is tagged `selected`, and the sweep's shared view lists those, one
    row per arm. Runs made by an earlier end of the same sweep (a resumed one) are reused."""
    from mlflow.entities import Metric

    from workloads.core.tracking import ROW_TAG, TAG_PARENT, TAG_TRIAL_ID, share_sweep_view

    ctx = tracking
    children = client.search_runs([ctx.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{ctx.parent_run_id}'",
                                  max_results=50000)
    existing = {r.data.tags["config_id"]: r for r in children if r.data.tags.get(ROW_TAG) == "arm"}
    trial_runs = {r.data.tags.get(TAG_TRIAL_ID): r for r in children if ROW_TAG not in r.data.tags}
    chosen = arms_tab.attrs.get("chosen", {})
    by_arm = arms_tab.set_index("arm")
    now = int(time.time() * 1000)
    done = trials[trials["status"] != "ERROR"]
    def log_config(config_id: str, group: pd.DataFrame) -> None:
        arm = group["arm"].iloc[0]
        selected = chosen.get(arm) == config_id
        tags = {TAG_PARENT: ctx.parent_run_id, ROW_TAG: "arm", "arm": arm, "config_id": config_id,
                "selected": str(selected).lower(), **{k: v for k, v in ctx.tags.items() if k != "git_commit"}}
        run = existing.get(config_id) or client.create_run(ctx.experiment_id, run_name=f"{arm} ({config_id})",
                                                            tags={k: str(v) for k, v in tags.items()})
        runs = done[done["config_id"].fillna("c0") == config_id]
        metrics = config_stats(runs, metric) if len(runs) else {"n_runs": 0}
        if selected:
            metrics.update({k: by_arm.loc[arm, k] for k in ("test_acc_diff", "test_acc_diff_ci95", "p_value", "p_holm",
                                                            "p_better", "p_equivalent", "p_worse") if k in by_arm})
            if pd.notna(by_arm.loc[arm, "verdict"]):
                client.set_tag(run.info.run_id, "verdict", str(by_arm.loc[arm, "verdict"]))
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                   if v is not None and pd.notna(v)])
        for trial_id in group["trial"].dropna():  # its fold and seed runs become its children
            if trial_id in trial_runs:
                client.set_tag(trial_runs[trial_id].info.run_id, TAG_PARENT, run.info.run_id)
        client.set_terminated(run.info.run_id, "FINISHED")

    # the configurations are independent: a few at a time (a sweep of 64 trials makes ~160 requests)
    with ThreadPoolExecutor(4, thread_name_prefix="mlflow-arm-runs") as pool:
        for future in [pool.submit(log_config, config_id, group)
                       for config_id, group in trials.groupby(trials["config_id"].fillna("c0"), sort=False)]:
            future.result()  # a failure is raised here, as before
    # MLflow draws metric columns in alphabetical order after Created and Duration, and beside its
    # assistant panel a 1500-px window shows about five: the view picks those five (the rest of the
    # arm's metrics are one click away, under Columns)
    share_sweep_view(client, ctx.uri, ctx.experiment_id, ctx.parent_run_id,
                     ["test_acc_mean", "test_acc_ci95", "test_acc_diff", "p_holm"], f"{metric.replace('best_', '')}_mean",
                     extra_filter="tags.selected = 'true'")
