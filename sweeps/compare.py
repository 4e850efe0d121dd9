"""`emosweep compare SWEEP [SWEEP …]`: which arm wins across corpora.

Each sweep is one corpus (the corpus its per-item predictions name, else the sweep's name);
or one sweep run on several corpora (S2 with several --corpus), whose within-corpus arms are
read per corpus (the sweep's own end writes the same ranking beside its tables).
From each sweep's arm table it takes every arm's mean test accuracy and prints a corpus × arm
table. Across the corpora (Demšar 2006):
- each arm's average rank, and Friedman's test that the ranks differ (scipy);
- Nemenyi's post-hoc test of every pair (scikit-posthocs), and the critical difference
  q_α·√(k(k+1)/6N);
- the critical-difference diagram (scikit-posthocs), as a PNG;
- a Bayesian signed-rank test across the corpora between the best arm and the reference
  (Benavoli et al. 2017, baycomp): P(better), P(equivalent), P(worse) with the rope.
Written to --out (compare.md, compare.csv, cd.png) and logged as an MLflow run of its own in
the experiment `emosweep-compare` of the tracking server the sweeps use.
"""
from __future__ import annotations

import math
import os
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from workloads.core.errors import UserError
from workloads.core.paths import mask_uri

from .verdicts import ALPHA, ROPE, bayes_verdict


def find_sweep(sweep: str, home: Path) -> Path:
    """A sweep's results.arms.csv: a path to it or to its folder, or a sweep's name (looked for
    where sweeps leave their tables: the Tune storage, results/ and local/ under $EMOSWEEP_HOME)."""
    given = Path(sweep).expanduser()
    candidates = [given, given / "results.arms.csv"] + [home / where / sweep / "results.arms.csv"
                                                       for where in ("ray", "results", "local")]
    for path in candidates:
        if path.is_file() and path.name.endswith(".arms.csv"):
            return path
    raise UserError(f"{sweep}: no sweep's results.arms.csv there, nor a sweep of that name under {home}")


def corpus_of(arms_csv: Path) -> str:
    """The corpus a sweep tested on: the one its per-item predictions name, else its folder's name."""
    predictions = arms_csv.with_name(arms_csv.name.replace(".arms.csv", ".predictions.parquet"))
    if predictions.exists():
        corpora = pd.read_parquet(predictions, columns=["corpus", "split"]).query("split == 'test'")["corpus"].unique()
        if len(corpora) == 1 and corpora[0]:
            return str(corpora[0])
    return arms_csv.parent.name


def corpus_table(sweeps: list[str], home: Path, metric: str = "test_acc") -> tuple[pd.DataFrame, str | None]:
    """(corpus × arm table of each arm's mean `metric`, the reference arm the sweeps share)."""
    found, references = [], set()
    for sweep in sweeps:
        path = find_sweep(sweep, home)
        table = pd.read_csv(path)
        if f"{metric}_mean" not in table:
            raise UserError(f"{path}: no {metric}_mean column")
        found.append((corpus_of(path), path.parent.name, table.set_index("arm")[f"{metric}_mean"]))
        references |= set(table.get("reference", pd.Series(dtype=object)).dropna())
    names = [corpus for corpus, _, _ in found]
    rows = {}
    for corpus, folder, means in found:  # two sweeps of one corpus: told apart by their sweep's name
        rows[corpus if names.count(corpus) == 1 else f"{corpus} ({folder})"] = means
    frame = pd.DataFrame(rows).T
    return frame, (next(iter(references)) if len(references) == 1 else None)


def corpus_arm_table(arms: pd.DataFrame, metric: str = "test_acc") -> tuple[pd.DataFrame, str | None] | None:
    """One sweep run on several corpora (S2 with several --corpus): its within-corpus arms
    (`ARM` on the first corpus, `ARM_on_CORPUS` on the others) as a corpus × arm table of the
    mean `metric`, with the reference they share; None when the sweep ran on one corpus."""
    if not {"train_corpus", "test_corpus", f"{metric}_mean"} <= set(arms):
        return None
    within = arms[arms["train_corpus"].notna() & (arms["train_corpus"] == arms["test_corpus"])]
    if within["test_corpus"].nunique() < 2:
        return None
    method = [_method(a, c) for a, c in zip(within["arm"], within["test_corpus"])]
    frame = within.assign(method=method).pivot_table(index="test_corpus", columns="method", values=f"{metric}_mean")
    frame.index.name = None
    references = {_method(r, c) for r, c in zip(within.get("reference", [None] * len(within)), within["test_corpus"])
                  if isinstance(r, str)}
    return frame, (next(iter(references)) if len(references) == 1 else None)


def _method(arm: str, corpus: str) -> str:
    """The arm's name without its corpus: `layers_mean_on_cremad` → `layers_mean`."""
    return arm.removesuffix(f"_on_{corpus}")


def across_corpora(arms: pd.DataFrame, out_stem: Path, rope: float | None = None) -> tuple[str, list[Path]] | None:
    """At a sweep's end, where it ran its arms on several corpora: the ranking across them
    (rank_arms) as `<stem>.corpora.md` and the CD diagram `<stem>.cd.png`. Returns (the
    report's text, the files), or None."""
    rope = ROPE if rope is None else float(rope)
    found = corpus_arm_table(arms)
    if found is None:
        return None
    table, reference = found
    full = table.dropna(axis=1)
    if full.shape[1] < 2:
        return None
    result = rank_arms(full, reference, rope)
    text = report(full, result, rope)
    md = out_stem.with_name(out_stem.name + ".corpora.md")
    md.write_text(text)
    files = [md]
    if "nemenyi" in result:
        files.append(draw_cd(result, out_stem.with_name(out_stem.name + ".cd.png")))
    return text, files


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks (Demšar 2006, eq. 5): q_α·√(k(k+1)/6N),
    q_α the studentized range's quantile over √2 (scipy)."""
    from scipy.stats import studentized_range

    q = studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def rank_arms(table: pd.DataFrame, reference: str | None, rope: float = ROPE) -> dict:
    """Average ranks (1 = best), Friedman's test, Nemenyi's p-values, the critical difference,
    and the best arm against the reference by the Bayesian signed-rank test."""
    import scikit_posthocs as sp
    from baycomp import two_on_multiple
    from scipy.stats import friedmanchisquare

    k, n = table.shape[1], table.shape[0]
    ranks = table.rank(axis=1, ascending=False).mean().sort_values()
    out = {"ranks": ranks, "k": k, "n": n, "cd": critical_difference(k, n)}
    if k >= 3 and n >= 2:
        out["friedman_p"] = float(friedmanchisquare(*[table[c] for c in table]).pvalue)
        out["nemenyi"] = sp.posthoc_nemenyi_friedman(table.reset_index(drop=True))
    best = next((arm for arm in ranks.index if arm != reference), None)  # the best arm that is not the reference
    if reference in table and best is not None and n >= 2:
        probs = two_on_multiple(table[best].to_numpy(), table[reference].to_numpy(), rope=rope)
        better, equivalent, worse = probs if len(probs) == 3 else (probs[0], 0.0, probs[1])
        out["signed_rank"] = {"arm": best, "reference": reference, "p_better": float(better),
                              "p_equivalent": float(equivalent), "p_worse": float(worse),
                              "verdict": bayes_verdict(better, equivalent, worse)}
    return out


def draw_cd(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * result["k"]))
    sp.critical_difference_diagram(result["ranks"], result["nemenyi"], ax=ax)
    ax.set_title(f"average rank over {result['n']} corpora (1 = best); bars join arms Nemenyi cannot tell apart, "
                 f"CD = {result['cd']:.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(table: pd.DataFrame, result: dict, rope: float) -> str:
    from .results import markdown

    shown = table.T.assign(**{"average rank": result["ranks"]}).sort_values("average rank")
    lines = [f"# {result['k']} arms across {result['n']} corpora", "",
             markdown(shown.reset_index(names="arm"), floatfmt=".3f"), ""]
    if "friedman_p" in result:
        lines.append(f"Friedman's test over the ranks: p = {result['friedman_p']:.3g}; Nemenyi's critical "
                     f"difference of average ranks at α = {ALPHA:g}: {result['cd']:.2f} (Demšar 2006).")
    else:
        lines.append("Friedman's test needs 3 arms or more.")
    if "signed_rank" in result:
        s = result["signed_rank"]
        lines.append(f"Bayesian signed-rank test across the corpora (Benavoli et al. 2017), rope ±{rope:g}: "
                     f"{s['arm']} against {s['reference']}: P(better/equivalent/worse) = {s['p_better']:.2f}/"
                     f"{s['p_equivalent']:.2f}/{s['p_worse']:.2f}, {s['verdict']}.")
    return "\n".join(lines) + "\n"


def compare_command(args) -> int:
    from workloads.core.paths import emosweep_home

    home = emosweep_home()
    one = corpus_arm_table(pd.read_csv(find_sweep(args.sweeps[0], home))) if len(args.sweeps) == 1 else None
    if len(args.sweeps) < 2 and one is None:
        raise UserError("compare: give two sweeps or more (one per corpus), or one sweep run on several corpora")
    table, reference = one if one is not None else corpus_table(args.sweeps, home, args.metric)
    full = table.dropna(axis=1)
    if len(full.columns) < table.shape[1]:
        print(f"[emosweep] left out, not run on every corpus: {', '.join(sorted(set(table) - set(full)))}",
              file=sys.stderr)
    if full.shape[1] < 2:
        raise UserError("compare: fewer than two arms ran on every corpus")
    result = rank_arms(full, args.reference or reference, args.rope)
    out = Path(args.out or home / "compare" / f"compare-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    text = report(full, result, args.rope)
    files = [out / "compare.md", out / "compare.csv"]
    files[0].write_text(text)
    full.to_csv(files[1], index_label="corpus")
    if "nemenyi" in result:
        files.append(draw_cd(result, out / "cd.png"))
    print(text)
    print(f"written: {', '.join(str(f) for f in files)}")
    if not args.no_tracking:
        from workloads.core.console import QUIET_ENV
        from workloads.core.tracking import fail_fast_requests, tracking_server

        for key, value in QUIET_ENV.items():  # MLflow's own "View run" lines: the one below says it
            os.environ.setdefault(key, value)
        fail_fast_requests()
        try:
            with tracking_server(args.tracking_uri) as uri:
                log_comparison(uri, args.sweeps, files)
        except Exception as e:  # the files are written either way
            print(f"[emosweep] could not log the comparison to MLflow ({type(e).__name__}: {str(e)[:200]})",
                  file=sys.stderr)
    return 0


def log_comparison(uri: str, sweeps: list[str], files: list[Path]) -> None:
    """A run of its own, tagged with the sweeps it compares, holding the table and the diagram."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("emosweep-compare") or client.get_experiment(
        client.create_experiment("emosweep-compare"))
    run = client.create_run(experiment.experiment_id, run_name="compare: " + ", ".join(Path(s).name for s in sweeps),
                            tags={"emosweep_row": "compare", "sweeps": ",".join(sweeps)})
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    print(f"MLflow: {mask_uri(uri)}, experiment 'emosweep-compare', run {run.info.run_id}")


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="rank the arms of sweeps run on different corpora (Friedman, Nemenyi, "
                                       "critical-difference diagram, Bayesian signed-rank)")
    p.add_argument("sweeps", nargs="+", metavar="SWEEP",
                   help="a sweep's name, folder or results.arms.csv; one per corpus, or one run on several corpora")
    p.add_argument("--metric", default="test_acc", help="the arm table's metric to rank by (default test_acc)")
    p.add_argument("--reference", metavar="ARM", help="the arm the best is tested against (default: the sweeps' own)")
    p.add_argument("--rope", type=float, default=ROPE, help=f"the Bayesian test's rope, in accuracy (default {ROPE})")
    p.add_argument("--out", help="folder for compare.md, compare.csv and cd.png (default $EMOSWEEP_HOME/compare/…)")
    p.add_argument("--tracking-uri", help="the MLflow server to log them to, as a run of the experiment "
                                          "'emosweep-compare' (default: $EMOSWEEP_TRACKING_URI, else the shared one)")
    p.add_argument("--no-tracking", action="store_true", help="write the files only")
