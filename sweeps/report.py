"""The end of a sweep, whichever engine ran it: the per-arm table chosen on validation, the
tables on disk, the arm runs in MLflow, and what the terminal shows."""
from __future__ import annotations

import importlib.util
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from sweeps.results import (arm_table, config_stats, confusion_matrices, default_reference, format_arm_table,
                            plot_arms, write_tables)
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


def log_data_report(study: Study, base: dict, client=None, run_id: str | None = None) -> dict:
    """The study's data report (and the split gate's), printed, and on the parent run when
    there is one (--local without MLflow has none). Returns what the report page shows of it:
    {"data_report": {artifact: text}, "data_pictures": [paths]}."""
    kept: dict = {"data_report": {}, "data_pictures": []}
    if base.get("_gate_leaks") and client is not None:
        client.log_text(run_id, "\n".join(base["_gate_leaks"]) + "\n", "split_gate_leaks.txt")
    if study.describe is None:
        return kept
    try:
        report = study.describe(base)
    except ImportError as e:  # a bare box without tabulate (pandas' Markdown): the run goes on without it
        print(f"[emosweep] no data report: {e}", file=sys.stderr)
        return kept
    for artifact, content in report.items():
        if isinstance(content, str) and base.get("_gate"):
            content = content.rstrip("\n") + f"\n\n{base['_gate']}\n"
        if isinstance(content, Path):  # a picture: logged as a file, not printed
            kept["data_pictures"].append(str(content))
            if client is not None:
                client.log_artifact(run_id, str(content))
            continue
        print(content)
        kept["data_report"][artifact] = content
        if client is not None:
            client.log_text(run_id, content, artifact)
    return kept


def finish(study: Study, name: str, table: pd.DataFrame, arms: dict, state: dict, out_dir: Path,
           results_out: str | None, tracking=None, timings: dict | None = None,
           predictions: pd.DataFrame | None = None, curves: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """Arm table, files, the report page, MLflow (when tracking is given), and the terminal's
    summary. `predictions`: every trial's per-item predictions (results.gather_predictions),
    written to results.predictions.parquet; `curves`: every trial's per-epoch metrics
    (results.gather_curves), results.curves.csv. Returns (arm table, {name: path} of what was
    written)."""
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
    found, knob_files = knob_importances(study, table, arms, state, out)
    files = [out, arms_csv, md, arms_csv.with_suffix(".md"), plot, per_item, *knob_files,
             *(ranked[1] if ranked else [])]
    if curves is not None and not curves.empty:
        files.append(out.with_name(out.stem + ".curves.csv"))
        curves.to_csv(files[-1], index=False)
    client, arm_runs = None, {}
    matrices = confusion_matrices(predictions)  # the arm runs' and the page's
    if tracking is not None:
        knobs = [k for k in dict.fromkeys([*study.table_columns, *study.space]) if k != "arm"]
        client, arm_runs = _log_results(tracking, table, arms_tab, study.metric, files, timings or {}, matrices,
                                        knobs)
    page = _write_page(study, name, state, table, arms_tab, how, matrices, curves, found, tracking, arm_runs,
                       plot, ranked, knob_files, files, out)
    if client is not None:
        _end_parent(client, tracking, page, state.get("finished", True), files[0])
    models = ", ".join(str(m) for m in arms_tab.get("model", pd.Series(dtype=object)).dropna().unique())
    print(f"\n{study.name} — {name}\n{how}\n{format_arm_table(arms_tab, study.terminal_columns)}\n"
          + (f"model: {models}\n" if models else ""))
    if found:
        from sweeps.importance import lines

        print("which knobs mattered (importance of each searched knob to the selection metric, summing to 1):\n"
              + "\n".join(lines(found)) + "\n")
    if ranked:
        print(ranked[0])
    if run_note:
        print(f"note: {run_note}")
    print(f"results: {arms_csv} (per arm), {out} (per trial), {md}" + (f", {plot}" if plot else "")
          + (f", {per_item} (per item)" if per_item else "")
          + (f", {', '.join(str(f) for f in ranked[1])} (across corpora)" if ranked else ""))
    if page is not None:
        print(f"report page: {page}  (`emosweep report {name}` opens it)")
    return arms_tab, {"csv": out, "arms_csv": arms_csv, "md": md, "plot": plot, "predictions": per_item,
                      "corpora": ranked[1] if ranked else [], "page": page, "importances": found}


def knob_importances(study: Study, table: pd.DataFrame, arms: dict, state: dict, out: Path) -> tuple[dict, list]:
    """Which knobs mattered (sweeps/importance.py), where the sweep searched: the per-arm ranking,
    results.importances.csv and its picture. ({}, []) for a sweep that searched nothing."""
    from sweeps.study import searched_space

    swept = state.get("base") or {}
    if int(state.get("samples_per_arm") or 1) < 2 or table.empty or "config_id" not in table:
        return {}, []
    from sweeps import importance

    space = searched_space(study, swept, quiet=True)
    try:
        found = importance.importances(table, arms, space, study.metric, study.mode, int(state.get("seed") or 0),
                                       extra=swept.get("_search") or ())
    except Exception as e:  # the sweep's tables and page go on without the ranking; say why
        print(f"[emosweep] could not rank the knobs ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
        return {}, []
    if not found:
        return {}, []
    csv = out.with_name(out.stem + ".importances.csv")
    importance.table(found).to_csv(csv, index=False)
    files = [csv]
    if importlib.util.find_spec("matplotlib"):
        png = importance.plot(found, out.with_name(out.stem + ".importances.png"))
        files += [png] if png else []
    return found, files


def _write_page(study, name, state, table, arms_tab, how, matrices, curves, found, tracking, arm_runs, plot,
                ranked, knob_files, files, out: Path) -> Path | None:
    """results.html beside the tables (sweeps/page.py); None, and a line, where it cannot be made."""
    if importlib.util.find_spec("jinja2") is None or importlib.util.find_spec("matplotlib") is None:
        print("[emosweep] no report page: it needs jinja2 and matplotlib", file=sys.stderr)
        return None
    from sweeps import page

    pictures = {"arms": plot, "importances": next((f for f in knob_files if str(f).endswith(".png")), None),
                "cd": next((f for f in (ranked[1] if ranked else []) if str(f).endswith(".png")), None)}
    try:
        return page.write(out.with_suffix(".html"), study, name, state, table, arms_tab, how, matrices, curves,
                          found, tracking, arm_runs, pictures, ranked[0] if ranked else None, files)
    except Exception as e:  # the tables are written either way; say what is missing
        print(f"[emosweep] could not write the report page ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def _log_results(tracking, table: pd.DataFrame, arms_tab: pd.DataFrame, metric: str, files: list,
                 timings: dict, matrices: dict, knobs=()) -> tuple:
    """The tables on the parent run and the arm runs beneath it. Returns (client or None when
    MLflow failed, {config_id: arm run id})."""
    from mlflow.tracking import MlflowClient

    run_id = tracking.parent_run_id
    try:
        client = MlflowClient(tracking.uri)
        for path in files:
            if path is not None:
                client.log_artifact(run_id, str(path))
        if not table.empty and table["test_acc"].notna().any():
            client.log_metric(run_id, "best_test_acc", float(table["test_acc"].max()))
        arm_runs = log_arm_runs(client, tracking, table, arms_tab, metric, matrices, knobs) if not arms_tab.empty else {}
        for k, v in timings.items():
            client.log_metric(run_id, f"driver_{k}", v)
        return client, arm_runs
    except Exception as e:  # the tables are on disk either way; say what MLflow is missing
        _mlflow_failed(e, files[0])
        return None, {}


def _mlflow_failed(e: Exception, where) -> None:
    print(f"[emosweep] could not log the results tables to MLflow ({type(e).__name__}: {str(e)[:200]}); "
          f"they are at {where}", file=sys.stderr)


def _end_parent(client, tracking, page: Path | None, finished: bool, where) -> None:
    try:
        if page is not None:
            client.log_artifact(tracking.parent_run_id, str(page))
        client.set_terminated(tracking.parent_run_id, "FINISHED" if finished else "KILLED")
    except Exception as e:
        _mlflow_failed(e, where)


def log_arm_runs(client, tracking, trials: pd.DataFrame, arms_tab: pd.DataFrame,
                 metric: str, matrices: dict | None = None, knobs=()) -> dict:
    """One MLflow run per (arm, configuration) under the sweep's parent, holding its fold and
    seed runs as children, its aggregate metrics (results.config_stats), the configuration's
    params (`knobs`: the study's table columns and searched keys) and its test confusion matrix
    summed over its folds and seeds (confusion_matrix.json). The
    configuration each arm's row reports is tagged `selected`, and the sweep's shared view lists
    those, one row per arm, with their knobs as columns. Runs made by an earlier end of the same
    sweep (a resumed one) are reused. Returns {config_id: run id}."""
    from mlflow.entities import Metric, Param

    from sweeps.results import _short

    from workloads.core.tracking import ROW_TAG, TAG_PARENT, TAG_TRIAL_ID, share_sweep_view

    ctx = tracking
    children = client.search_runs([ctx.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{ctx.parent_run_id}'",
                                  max_results=50000)
    existing = {r.data.tags["config_id"]: r for r in children if r.data.tags.get(ROW_TAG) == "arm"}
    reused_params = {r.info.run_id: r.data.params for r in existing.values()}
    ids: dict = {}
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
        first = group.iloc[0]
        # three significant digits, as the terminal shows them (the trial runs hold every digit)
        params = {k: f"{first[k]:.3g}" if isinstance(first[k], float) else _short(first[k])
                  for k in knobs if k in group and pd.notna(first[k])}
        if run.info.run_id in reused_params:  # a resumed sweep's run: its params are logged already
            params = {k: v for k, v in params.items() if k not in reused_params[run.info.run_id]}
        client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                   if v is not None and pd.notna(v)],
                         params=[Param(k, v) for k, v in params.items()])
        matrix = (matrices or {}).get(config_id)
        if matrix is not None:
            client.log_dict(run.info.run_id, {"classes": [str(c) for c in matrix.columns],
                                              "matrix": matrix.to_numpy().tolist(), "split": "test",
                                              "runs": int(len(runs))}, "confusion_matrix.json")
        ids[config_id] = run.info.run_id
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
    # arm's metrics are one click away, under Columns), then the knobs the arms were chosen with
    varied = [k for k in knobs if k in trials and trials[k].map(_short).nunique() > 1]
    share_sweep_view(client, ctx.uri, ctx.experiment_id, ctx.parent_run_id,
                     ["test_acc_mean", "test_acc_ci95", "test_acc_diff", "p_holm"], f"{metric.replace('best_', '')}_mean",
                     extra_filter="tags.selected = 'true'", params=varied)
    return ids
