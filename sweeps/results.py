"""A sweep's results: the per-trial table, and the per-arm table that answers the study's
question (which arm, by how much, with what confidence).

A trial is (arm, configuration, fold, seed). Each arm's configuration is chosen by its mean
validation metric over its folds and seeds; the test metrics of that configuration alone are
reported (mean, standard deviation, 95% confidence interval), and each arm is compared with
a reference arm (mean difference, its 95% interval, a p-value, P(better/equivalent/worse), a
verdict). verdicts.py holds the tests: over the folds, seeds averaged within each, with the
corrected variance; on one split, over the items.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .verdicts import LEVEL  # one level for every interval and verdict

RESULT_COLUMNS = ["epochs_done", "best_epoch", "best_val_acc", "test_acc", "test_macro_f1",
                  "trainable_params", "total_params", "wall_s"]
ARM_METRICS = ("test_acc", "test_uar", "test_macro_f1")  # mean, std and ci95 of each in the arm table


# ----------------------------------------------------------------------------- per trial

def results_table(study, result_grid, arms: dict) -> pd.DataFrame:
    from .study import arm_space

    rows = []
    for result in result_grid:
        cfg, m = result.config or {}, result.metrics or {}
        row = {"arm": cfg.get("arm"), "config_id": cfg.get("config_id"), "fold": cfg.get("fold"),
               "seed": cfg.get("seed"), "trial": result.path and Path(result.path).name}
        unused = set(study.space) - set(arm_space(study.space, arms.get(cfg.get("arm"), {})))
        # what was used, else asked; blank for a searched knob this arm does not use
        row.update({k: None if k in unused else m.get(k, cfg.get(k)) for k in study.table_columns})
        # every searched knob too (the importances and the arm runs' params read them)
        row.update({k: None if k in unused else cfg.get(k) for k in study.space if k not in row})
        row.update({k: cfg.get(k) for k in (cfg.get("_search") or {}) if k not in row})  # --search's switches
        row.update({
            "epochs_done": m.get("epoch", 0), "best_epoch": m.get("best_epoch"),
            "best_val_acc": m.get("best_val_acc"), "test_acc": m.get("test_acc"), "test_uar": m.get("test_uar"),
            "test_macro_f1": m.get("test_macro_f1"), "trainable_params": m.get("trainable_params"),
            "total_params": m.get("total_params"), "wall_s": m.get("time_total_s"),
            "n_train": m.get("n_train"), "n_test": m.get("n_test"),
            "model": cfg.get("model_id"), "random_init": bool(cfg.get("random_init")),
            "mlflow_unlogged_epochs": m.get("mlflow_unlogged_epochs", 0), "mlflow_run_id": m.get("mlflow_run_id"),
            "status": "ERROR" if result.error else ("OK, early stop" if m.get("early_stopped") else
                                                    "OK" if m.get("fitted_once") else
                                                    "STOPPED" if m.get("epoch", 0) < cfg.get("epochs", 0) else "OK"),
        })
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {a: i for i, a in enumerate(arms)}
    df["_order"] = df["arm"].map(order)
    return (df.sort_values(["_order", "config_id", "fold", "seed"], na_position="first")
            .drop(columns="_order").reset_index(drop=True))


def gather_predictions(result_grid) -> pd.DataFrame:
    """Every trial's per-item predictions (workloads/core/predictions.py), from the checkpoint
    it ended with, in one frame: trial, arm, config_id, fold, seed and corpus beside each item's
    uid, split, label, prediction and class probabilities. Empty when no trial kept any."""
    from workloads.core.predictions import read, with_corpus

    frames = []
    for result in result_grid:
        checkpoint, cfg = getattr(result, "checkpoint", None), result.config or {}
        if checkpoint is None or not result.path:
            continue
        with checkpoint.as_directory() as directory:
            found = read(directory)
        if found is None:
            continue
        corpus = cfg.get("corpus") if isinstance(cfg.get("corpus"), str) else None
        frames.append(with_corpus(found, corpus, _items_of(cfg)).assign(
            trial=Path(result.path).name, arm=cfg.get("arm"), config_id=cfg.get("config_id"),
            fold=cfg.get("fold"), seed=cfg.get("seed")))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    first = ["trial", "arm", "config_id", "fold", "seed", "corpus", "split", "uid", "label", "pred"]
    return out[first + [c for c in out.columns if c not in first]]


def confusion_matrices(predictions: pd.DataFrame | None) -> dict:
    """config_id → its test confusion matrix summed over its folds and seeds (rows the true
    class, columns the predicted one, in the order of the probability columns), in one pass over
    the per-item predictions (a 1,024-trial sweep holds a million rows)."""
    if predictions is None or predictions.empty or "config_id" not in predictions:
        return {}
    test = predictions[predictions["split"] == "test"]
    out = {}
    for config_id, mine in test.groupby("config_id", sort=False):
        classes = [c[2:] for c in mine.columns if c.startswith("p_") and mine[c].notna().any()]
        seen = list(dict.fromkeys([*mine["label"], *mine["pred"]]))
        order = [c for c in classes if c in seen] + [c for c in seen if c not in classes]
        out[config_id] = pd.crosstab(pd.Categorical(mine["label"], order), pd.Categorical(mine["pred"], order),
                                     dropna=False).rename_axis(index="true", columns="predicted")
    return out


CURVE_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_uar")  # what the learning curves draw


def gather_curves(result_grid) -> pd.DataFrame:
    """Every trial's per-epoch metrics (Tune's result.json, or --local's reports): trial, arm,
    config_id, fold, seed, epoch and CURVE_KEYS where reported. Empty when no trial reported."""
    frames = []
    for result in result_grid:
        try:
            history = result.metrics_dataframe
        except Exception:  # a trial whose result.json is gone (moved storage): no curve, nothing else lost
            history = None
        if history is None or history.empty or "epoch" not in history:
            continue
        cfg = result.config or {}
        keep = ["epoch", *(k for k in CURVE_KEYS if k in history)]
        frames.append(history[keep].assign(trial=Path(result.path or "").name, arm=cfg.get("arm"),
                                           config_id=cfg.get("config_id"), fold=cfg.get("fold"),
                                           seed=cfg.get("seed")))
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    first = ["trial", "arm", "config_id", "fold", "seed", "epoch"]
    return out[first + [c for c in out.columns if c not in first]]


def _items_of(config: dict) -> dict | None:
    """The study's items table a trial read (uid → row), where it names one and it can be read."""
    if "items" not in config and "items_file" not in config:
        return None
    from workloads.data.study_items import study_items

    try:
        return study_items(config)
    except (OSError, ValueError):  # moved or removed since the sweep ran: the corpus falls back to the study's
        return None


def markdown(df: pd.DataFrame, **options) -> str:
    """A Markdown table (pandas + tabulate); plain text where tabulate is not installed (a bare
    GPU box running --local has pandas but may lack it)."""
    import importlib.util

    if importlib.util.find_spec("tabulate") is None:
        return df.to_string(index=False)
    return df.to_markdown(index=False, **options)


def format_table(df: pd.DataFrame) -> str:
    return markdown(df, floatfmt=".4g") if not df.empty else "(no trials)"


# ----------------------------------------------------------------------------- statistics

# ----------------------------------------------------------------------------- per arm

def config_stats(runs: pd.DataFrame, metric: str = "best_val_acc") -> dict:
    """The aggregate of one configuration's finished runs (its folds × seeds): n_runs, n_folds,
    the selection metric's mean (`val_acc_mean` for best_val_acc) and each test metric's mean,
    std and 95% interval. The arm table's row and the configuration's MLflow run both hold these.

    The interval is over the folds, each the mean of its seeds (verdicts.py): over K ≥ 2 folds
    with Nadeau and Bengio's corrected variance; on one split, the test accuracy's Wilson
    interval over its test items where the trials report how many, else the seeds' t interval."""
    from .verdicts import fold_means, interval, train_test_ratio, wilson

    folds = fold_means(runs, [*ARM_METRICS, "n_test"])
    k = len(folds) if runs["fold"].notna().any() else 1
    stats = {"n_runs": len(runs), "n_folds": k, f"{metric.replace('best_', '')}_mean": float(runs[metric].mean())}
    ratio = train_test_ratio(runs, k)
    for m in ARM_METRICS:
        if m not in runs:
            continue
        if k >= 2:
            stats[f"{m}_mean"], stats[f"{m}_std"], stats[f"{m}_ci95"] = interval(folds[m], ratio)
        else:
            stats[f"{m}_mean"], stats[f"{m}_std"], stats[f"{m}_ci95"] = interval(runs[m], None)
            n_test = runs["n_test"].iloc[0] if "n_test" in runs else None
            if m == "test_acc" and n_test is not None and pd.notna(n_test) and pd.notna(stats[f"{m}_mean"]):
                stats[f"{m}_ci95"] = wilson(stats[f"{m}_mean"], int(n_test))
    return stats


def default_reference(arms: dict) -> str | None:
    """The study's floor where it has one among the arms run, else the report's arm (the first)."""
    if "floor" in arms:
        return "floor"
    return next(iter(arms), None)


def arm_table(trials: pd.DataFrame, arms: dict, metric: str = "best_val_acc", mode: str = "max",
              reference=None, knobs: list | None = None, predictions: pd.DataFrame | None = None,
              rope: float | None = None) -> pd.DataFrame:
    """One row per arm: its configuration chosen by the mean of `metric` (validation) over its
    folds and seeds, and for that configuration the test metrics' mean, std and 95% interval,
    and the comparison with its reference arm (verdicts.py: over the folds, or over the items
    of one split, which needs `predictions`, the sweep's per-item predictions). `reference`:
    an arm name, a callable arm → reference arm (or None), or None (no comparison). `rope`:
    the region of practical equivalence, in accuracy (default verdicts.ROPE)."""
    from .verdicts import ROPE, TEST_NOTES, holm, item_verdict

    rope = ROPE if rope is None else float(rope)
    if trials.empty:
        return pd.DataFrame()
    ok = trials[trials["status"] != "ERROR"]
    chosen, chosen_ids, rows = {}, {}, []
    for arm in arms:
        mine = ok[ok["arm"] == arm]
        if mine.empty:
            continue
        config_ids = mine["config_id"].fillna("c0")
        by_config = mine.assign(config_id=config_ids).groupby("config_id", sort=False)[metric].mean()
        best = by_config.idxmax() if mode == "max" else by_config.idxmin()
        picked = mine[config_ids == best]
        chosen[arm] = picked
        chosen_ids[arm] = best
        first = picked.iloc[0]
        n_failed = int(((trials["arm"] == arm) & (trials["config_id"].fillna("c0") == best)
                        & (trials["status"] == "ERROR")).sum())
        stats = config_stats(picked, metric)
        row = {"arm": arm, "config_id": best, **{k: first.get(k) for k in (knobs or []) if k in picked},
               "model": first.get("model"),
               "n_runs": stats.pop("n_runs"), "n_failed": n_failed, "n_configs": len(by_config),
               "selected_by": ("one configuration" if len(by_config) == 1 else
                               f"best mean {metric} of {len(by_config)} configurations"),
               **stats, "random_init": bool(first.get("random_init"))}
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    refs = {arm: (reference(arm) if callable(reference) else reference) for arm in table["arm"]}
    results = {}
    for arm in table["arm"]:
        ref = refs[arm]
        if ref in chosen and ref != arm:
            results[arm] = compare_arms(chosen[arm], chosen[ref], predictions, rope)
    # Holm over the arms compared with one reference
    for ref in {refs[a] for a in results}:
        group = [a for a in results if refs[a] == ref]
        for arm, adjusted in zip(group, holm([results[a]["p_value"] for a in group])):
            results[arm]["p_holm"] = adjusted
            if results[arm]["test"] == "mcnemar" and "diff_low" in results[arm]:
                results[arm]["verdict"] = item_verdict(results[arm], adjusted, rope)
    columns = {"test_acc_diff": "diff", "test_acc_diff_ci95": "diff_ci95", "p_value": "p_value", "p_holm": "p_holm",
               "p_better": "p_better", "p_equivalent": "p_equivalent", "p_worse": "p_worse", "n_pairs": "n_pairs",
               "verdict": "verdict", "test": "test"}
    table["reference"] = [refs[a] if refs[a] in chosen else None for a in table["arm"]]
    for column, key in columns.items():
        table[column] = [results.get(a, {}).get(key) for a in table["arm"]]
    table.loc[table["arm"] == table["reference"], "verdict"] = "reference"
    table.attrs["chosen"] = chosen_ids  # arm → the config_id its row reports
    tests = sorted({r["test"] for r in results.values() if not str(r.get("verdict", "")).startswith("n/a")})
    table.attrs["verdict_note"] = "; ".join(TEST_NOTES[t].format(rope=rope, level=LEVEL) for t in tests)
    return table


def compare_arms(mine: pd.DataFrame, ref: pd.DataFrame, predictions: pd.DataFrame | None, rope: float) -> dict:
    """One arm's chosen configuration against its reference's: over the folds both ran (seeds
    averaged within each fold), or, on one split, over the test items of their first common seed."""
    from .verdicts import corrected_test, fold_means, item_test, train_test_ratio

    a, b = fold_means(mine, ["test_acc"]), fold_means(ref, ["test_acc"])
    common = a.index.intersection(b.index)
    if len(common) >= 2 or (len(common) == 1 and mine["fold"].notna().any()):
        ratio = train_test_ratio(pd.concat([mine, ref]), len(common))
        return corrected_test(a.loc[common, "test_acc"], b.loc[common, "test_acc"], ratio, rope)
    seeds = [s for s in mine["seed"] if s in set(ref["seed"])]
    both = pd.DataFrame()
    if predictions is not None and not predictions.empty and seeds:
        test = predictions[predictions["split"] == "test"]
        trial_a = mine[mine["seed"] == seeds[0]]["trial"].iloc[0]
        trial_b = ref[ref["seed"] == seeds[0]]["trial"].iloc[0]
        both = test[test["trial"] == trial_a].merge(test[test["trial"] == trial_b], on="uid", suffixes=("", "_ref"))
    if both.empty:
        return {"diff": float(mine["test_acc"].mean() - ref["test_acc"].mean()), "n_pairs": 0, "test": "mcnemar",
                "p_value": math.nan, "verdict": "n/a: one split and no per-item predictions of both arms"}
    return item_test(both["pred"] == both["label"], both["pred_ref"] == both["label_ref"], int(seeds[0]), rope)


def _pm(mean, half, digits: int = 3) -> str:
    if mean is None or pd.isna(mean):
        return ""
    if half is None or pd.isna(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _probs(row) -> str:
    """The Bayesian test's P(better) / P(equivalent) / P(worse), as the terminal shows them."""
    ps = [row.get(k) for k in ("p_better", "p_equivalent", "p_worse")]
    if any(p is None or pd.isna(p) for p in ps):
        return ""
    return "/".join(f"{p:.2f}" for p in ps)


TERMINAL_WIDTH = 120
# short headers for the knobs and metrics the studies show on the terminal
HEADERS = {"report_test_acc": "report", "test_weighted_f1": "weighted F1", "test_acc_no_audio": "acc, no audio",
           "test_acc_no_text": "acc, no text", "heads_per_layer_after": "heads left", "layers_frozen": "frozen",
           "layer_used": "layer", "n_classes": "classes"}


def _short(value) -> str:
    """A config value as the terminal shows it: short floats, no trailing noise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


def arm_columns(table: pd.DataFrame, columns=()) -> list:
    """The arm table's columns as people read them (the terminal and the report page): a list of
    (priority: higher stays longer, header, cells), rounded as the terminal rounds; columns
    nobody filled are left out, and the verdict's columns where there were no pairs to test."""
    n = len(table)
    none = [None] * n
    cols = [
        (9, "arm", list(table["arm"])),
        (2, "n", [str(int(v)) for v in table["n_runs"]]),
    ]
    for i, column in enumerate(c for c in columns if c in table and c != "arm"):
        cols.append((4 - min(i, 3) * 0.5, HEADERS.get(column, column), [_short(v) for v in table[column]]))
    cols += [
        (3, "val acc", [_pm(v, None) for v in table.get("val_acc_mean", none)]),
        (8, "test acc (95% CI)", [_pm(m, h) for m, h in zip(table["test_acc_mean"], table["test_acc_ci95"])]),
        (6, "UAR", [_pm(m, h) for m, h in zip(table.get("test_uar_mean", none), table.get("test_uar_ci95", none))]),
        (3.5, "macro F1", [_pm(m, None) for m in table.get("test_macro_f1_mean", none)]),
        (7, "Δ acc vs ref", [("" if pd.isna(d) else f"{d:+.3f}" + ("" if pd.isna(h) else f" ± {h:.3f}"))
                             for d, h in zip(table["test_acc_diff"], table["test_acc_diff_ci95"])]),
        (5, "p (Holm)", ["" if pd.isna(p) else f"{p:.2g}" for p in table.get("p_holm", table["p_value"])]),
        (6.5, "P(b/e/w)", [_probs(row) for _, row in table.iterrows()]),
        (5, "verdict", [str(v) for v in table["verdict"].fillna("")]),
    ]
    cols = [c for c in cols if any(cell for cell in c[2]) or c[1] in ("arm", "test acc (95% CI)")]
    if all(v in ("", "reference") or v.startswith("n/a") for v in table["verdict"].fillna("")):
        cols = [c for c in cols if c[1] not in ("p (Holm)", "P(b/e/w)", "verdict")]  # no pairs to test: nothing to say
    return cols


def format_arm_table(table: pd.DataFrame, columns=(), width: int = TERMINAL_WIDTH) -> str:
    """The terminal's view: what answers the study's question (the arm, its own knobs, the
    main test metrics with their 95% interval, the paired difference with the reference),
    within `width` columns. Lower-priority columns go first when it is too wide; every column
    stays in results.arms.csv/.md."""
    if table.empty:
        return "(no arm finished a trial)"
    cols = arm_columns(table, columns)
    note = table.attrs.get("verdict_note")
    while True:
        text = markdown(pd.DataFrame({h: cells for _, h, cells in cols}), disable_numparse=True)
        if max(len(line) for line in text.splitlines()) <= width or len(cols) <= 2:
            if note and any(c[1] == "verdict" for c in cols):
                import textwrap

                text += "\n" + textwrap.fill(note, width, initial_indent="> ", subsequent_indent="> ")
            return text
        drop = min((c for c in cols if c[1] not in ("arm", "test acc (95% CI)")), key=lambda c: c[0])
        cols.remove(drop)


def plot_arms(table: pd.DataFrame, path: Path, metric: str = "test_acc") -> Path:
    """Every arm's mean test metric with its 95% interval, best first, the reference marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.sort_values(f"{metric}_mean", ascending=True).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.45 * len(t)))
    err = t[f"{metric}_ci95"].fillna(0).to_numpy()
    is_ref = (t["arm"] == t["reference"]).to_numpy()
    colors = ["tab:orange" if r else "tab:blue" for r in is_ref]
    ax.barh(range(len(t)), t[f"{metric}_mean"], xerr=err, color=colors, alpha=0.85, capsize=4)
    labels = [f"{a}  (n={int(n)})" + ("  [reference]" if r else "") for a, n, r in zip(t["arm"], t["n_runs"], is_ref)]
    ax.set_yticks(range(len(t)), labels)
    ref_rows = t[is_ref]
    if not ref_rows.empty:
        ax.axvline(float(ref_rows[f"{metric}_mean"].iloc[0]), color="tab:orange", ls="--", lw=1)
    ax.set_xlabel(f"{metric}: mean over folds × seeds, 95% CI")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tables(trials: pd.DataFrame, arms_table: pd.DataFrame, out: Path, title: str, note: str | None,
                 how: str, columns=()) -> tuple[Path, Path, Path]:
    """results.csv (per trial), results.arms.csv and results.arms.md (per arm) beside it, and
    results.md (both, readable). Returns (csv, arms csv, md)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    trials.to_csv(out, index=False)
    arms_csv = out.with_name(out.stem + ".arms.csv")
    arms_table.to_csv(arms_csv, index=False)
    arms_md = out.with_name(out.stem + ".arms.md")
    head = f"# {title}\n\n" + (f"{note}\n\n" if note else "") + f"{how}\n\n"
    arms_md.write_text(head + f"{format_arm_table(arms_table, columns)}\n\n{format_table(arms_table)}\n")
    md = out.with_suffix(".md")
    md.write_text(head + f"## Arms\n\n{format_arm_table(arms_table, columns)}\n\n## Trials\n\n{format_table(trials)}\n")
    return out, arms_csv, md
