"""results.html: one self-contained page per sweep.

What ran (the study, its model, corpora and data reports, folds and seeds, how each
configuration was chosen), the arm table rounded as the terminal rounds it, the CI plot and
the across-corpora ranking where there is one, which knobs mattered, each arm's chosen
configuration with its confusion matrix (test items, summed over folds and seeds) and learning
curves, and links into MLflow. Jinja2 renders it; every picture is embedded (PNG, base64), so
the page works offline, from the MLflow run it is logged to, and when mailed.
"""
from __future__ import annotations

import base64
import io
from datetime import datetime
from pathlib import Path

import pandas as pd

TEMPLATE = "results.html.j2"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def embed(path) -> str | None:
    """A PNG file as a data URI (None when there is none)."""
    if path is None or not Path(path).is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def confusion_cells(matrix: pd.DataFrame) -> dict:
    """The matrix as the page's table draws it: each cell's count and its share of its true
    class (the row), which shades it; the diagonal is each class's recall."""
    values = matrix.to_numpy()
    totals = values.sum(axis=1)
    rows = [{"label": str(label), "cells": [{"n": int(n), "share": float(n / totals[i]) if totals[i] else 0.0}
                                             for n in values[i]]}
            for i, label in enumerate(matrix.index)]
    return {"classes": [str(c) for c in matrix.columns], "rows": rows, "n": int(values.sum())}


def _curves_png(curves: pd.DataFrame, title: str) -> str | None:
    """Validation accuracy (and training loss) per epoch: one thin line per fold and seed, their
    mean bold."""
    keys = [k for k in ("val_acc", "train_loss") if k in curves and curves[k].notna().any()]
    if not keys or curves["epoch"].nunique() < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for _, run in curves.groupby("trial"):
            ax.plot(run["epoch"], run[key], color="tab:blue", alpha=0.25, lw=1)
        mean = curves.groupby("epoch")[key].mean()
        ax.plot(mean.index, mean.to_numpy(), color="tab:blue", lw=2)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def mlflow_links(uri: str | None, experiment_id: str | None, view: str | None) -> dict:
    """Where the page's links point: an http(s) server's UI. A sqlite:///FILE store has no
    address; the page says how to open its UI."""
    from workloads.core.paths import mask_uri

    if not uri:
        return {"uri": None, "links": False}
    if not uri.startswith(("http://", "https://")):
        return {"uri": mask_uri(uri), "links": False,
                "how": f"Open its UI with `mlflow ui --backend-store-uri {mask_uri(uri)}`."}
    base = uri.rstrip("/")
    return {"uri": mask_uri(uri), "links": True, "base": base, "experiment": experiment_id,
            "view": view or f"{base}/#/experiments/{experiment_id}"}


def run_link(links: dict, run_id: str | None) -> str | None:
    if not links.get("links") or not run_id:
        return None
    return f"{links['base']}/#/experiments/{links['experiment']}/runs/{run_id}"


def facts(study, state: dict, trials: pd.DataFrame, arms_tab: pd.DataFrame) -> list:
    """What ran, as (label, value) rows."""
    base = state.get("base") or {}
    models = ", ".join(str(m) for m in arms_tab.get("model", pd.Series(dtype=object)).dropna().unique())
    folds = base.get("folds")
    if base.get("n_folds"):
        split = f"{base['n_folds']} folds ({folds}" + (f", by {base['split_by']}" if base.get("split_by") else "") + ")"
    else:
        split = study.official_splits or "one split"
    corpora = ", ".join(sorted({str(c) for c in trials.get("train_corpus", pd.Series(dtype=object)).dropna()})) \
        or str(base.get("data_dir") or base.get("corpus") or "the study's embedded data")
    rows = [("study", f"{study.name} ({study.workload})"), ("model", models or str(base.get("model_id") or "")),
            ("data", corpora), ("splits", split),
            ("seeds", f"{base.get('seeds', 1)} per configuration and fold (split seed {base.get('split_seed', '')})"),
            ("search", f"{state.get('samples_per_arm', 1)} configuration(s) per arm, scheduler "
                       f"{state.get('scheduler', 'fifo')}" if state.get("scheduler") else "each arm's first configuration (--local)"),
            ("trials", f"{len(trials)} ({int((trials['status'] != 'ERROR').sum()) if 'status' in trials else len(trials)} finished)"),
            ("split gate", str(base.get("_gate") or "not run: the study's official splits").splitlines()[0])]
    return [(k, v) for k, v in rows if v]


def write(path: Path, study, name: str, state: dict, trials: pd.DataFrame, arms_tab: pd.DataFrame, how: str,
          matrices: dict | None = None, curves: pd.DataFrame | None = None, found: dict | None = None,
          tracking=None, arm_runs: dict | None = None, pictures: dict | None = None, corpora_text: str | None = None,
          files: list | None = None) -> Path:
    """Render results.html at `path`. `matrices`: config_id → its summed test confusion matrix
    (results.confusion_matrices); `found`: sweeps/importance.py's importances; `arm_runs`:
    config_id → its MLflow run id; `pictures`: name → PNG path (arms, cd, importances)."""
    import jinja2

    from sweeps import importance
    from sweeps.results import _short, arm_columns
    from workloads.core.paths import mask_uri
    from workloads.core.tracking import git_commit

    pictures, arm_runs, found, matrices = pictures or {}, arm_runs or {}, found or {}, matrices or {}
    links = mlflow_links(tracking.uri if tracking else None, tracking.experiment_id if tracking else None,
                         state.get("mlflow_view"))
    columns = arm_columns(arms_tab, study.terminal_columns) if not arms_tab.empty else []
    chosen = arms_tab.attrs.get("chosen", {})
    rows = []
    for i, arm in enumerate(arms_tab["arm"] if not arms_tab.empty else []):
        ref = arms_tab["reference"].iloc[i] if "reference" in arms_tab else None
        rows.append({"arm": arm, "reference": ref == arm, "cells": [c[2][i] for c in columns],
                     "link": run_link(links, arm_runs.get(chosen.get(arm)))})
    details = []
    searched = set(study.space)
    for arm in (arms_tab["arm"] if not arms_tab.empty else []):
        config_id = chosen.get(arm) or f"{arm}/c0"
        mine = trials[trials["config_id"].fillna(trials["arm"] + "/c0") == config_id] if not trials.empty else trials
        knobs = ""
        if not mine.empty:
            shown = [c for c in dict.fromkeys([*study.table_columns, *searched]) if c in mine and c != "arm"
                     and pd.notna(mine[c].iloc[0])]
            knobs = ", ".join(f"{c} {_short(mine[c].iloc[0])}" for c in shown)
        matrix = matrices.get(config_id)
        mine_curves = curves[curves["config_id"] == config_id] if curves is not None and not curves.empty else None
        details.append({
            "arm": arm, "config_id": config_id, "knobs": knobs,
            "link": run_link(links, arm_runs.get(config_id)),
            "confusion": confusion_cells(matrix) if matrix is not None else None, "runs": len(mine),
            "curves": _curves_png(mine_curves, f"{arm}: {len(mine_curves['trial'].unique())} run(s)")
            if mine_curves is not None and not mine_curves.empty else None,
        })
    data_reports = [(k, v) for k, v in (state.get("data_report") or {}).items() if isinstance(v, str)]
    data_pictures = [(Path(v).name, embed(v)) for v in (state.get("data_pictures") or []) if embed(v)]
    env = jinja2.Environment(loader=jinja2.PackageLoader("sweeps", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    storage = state.get("optuna_storage")
    html = env.get_template(TEMPLATE).render(
        study=study.name, name=name, question=(study.description or "").strip().splitlines()[0] if study.description else "",
        facts=facts(study, state, trials, arms_tab), how=how, run_note=(state.get("base") or {}).get("_run_note"),
        data_reports=data_reports, data_pictures=data_pictures,
        arm_headers=[c[1] for c in columns], arm_rows=rows, arm_links=links.get("links", False),
        verdict_note=arms_tab.attrs.get("verdict_note") if any(c[1] == "verdict" for c in columns) else None,
        arms_plot=embed(pictures.get("arms")), cd_plot=embed(pictures.get("cd")), corpora_text=corpora_text,
        importance_lines="\n".join(importance.lines(found)).strip("\n") if found else "",
        importance_plot=embed(pictures.get("importances")),
        optuna={"url": mask_uri(storage)} if storage and state.get("samples_per_arm", 1) > 1 else None,
        arm_details=details, mlflow={**links, "parent": run_link(links, tracking.parent_run_id if tracking else None)},
        files=", ".join(Path(f).name for f in (files or []) if f), written=f"{datetime.now():%Y-%m-%d %H:%M}",
        commit=((tracking.tags.get("git_commit") if tracking else None) or git_commit())[:12])
    path.write_text(html, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- emosweep report

WHERE = ("ray", "results", "local")  # where sweeps leave their folders under $EMOSWEEP_HOME


def find_folder(sweep: str | None, home: Path, has: str = "results.html") -> Path:
    """The folder of a sweep that holds `has`: a path to it (or to a file in it), a sweep's name
    under $EMOSWEEP_HOME's ray/, results/ or local/, or, with none given, the latest such."""
    from workloads.core.errors import UserError

    if sweep:
        given = Path(sweep).expanduser()
        for folder in [given if given.is_dir() else given.parent, *(home / w / sweep for w in WHERE)]:
            if (folder / has).is_file():
                return folder
        raise UserError(f"{sweep}: no {has} there, nor in a sweep of that name under {home}")
    found = [p for w in WHERE for p in (home / w).glob(f"*/{has}")]
    if not found:
        raise UserError(f"no sweep under {home} has a {has} yet: run a study first "
                        f"(python sweeps/hubert_pooling.py --smoke)")
    return max(found, key=lambda p: p.stat().st_mtime).parent


def serve(folder: Path, port: int = 0):
    """An HTTP server for `folder` on loopback (a thread); returns (server, its address)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # no line per request on the terminal
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, name="emosweep-report", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="open a sweep's report page (results.html), served on loopback",
                       description="Open a sweep's results.html: what ran, the arm table, which knobs mattered, "
                                   "each arm's confusion matrix and learning curves, and links into MLflow.")
    p.add_argument("sweep", nargs="?", help="the sweep's name or folder (default: the latest sweep with a page)")
    p.add_argument("--file", action="store_true", help="print the page's path and exit; serve nothing")
    p.add_argument("--port", type=int, default=0, help="serve on this loopback port (default: a free one)")
    p.add_argument("--print-only", action="store_true", help="serve and print the address; open no browser")


def report_command(args) -> int:
    import sys
    import time
    import webbrowser

    from workloads.core.errors import UserError
    from workloads.core.paths import emosweep_home

    try:
        folder = find_folder(args.sweep, emosweep_home())
    except UserError as e:
        print(f"emosweep report: {e}", file=sys.stderr)
        return 2
    page = folder / "results.html"
    if args.file:
        print(page)
        return 0
    try:
        server, address = serve(folder, args.port)
    except OSError as e:
        print(f"emosweep report: cannot serve on 127.0.0.1:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    url = address + "results.html"
    opened = not args.print_only and webbrowser.open(url)
    print(f"{folder.name}: {url}" + ("" if opened else "  (open it in a browser)")
          + f"\n  the page as a file: {page}\nCtrl-C stops the server.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0
