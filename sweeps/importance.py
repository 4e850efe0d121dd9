"""Which knobs mattered: Optuna's hyper-parameter importances over a sweep's configurations.

Each configuration (an arm's config_id) is one observation: its searched values and its mean
selection metric over its folds and seeds, the value its arm's Optuna sampler was told. Per
arm, the knobs its sampler searched are ranked by fANOVA (Hutter et al. 2014, Optuna's
`FanovaImportanceEvaluator`, seeded), study switches searched with --search (speaker_norm,
...) among them. A switch that only tells the arms apart is the arm table's question, with
its verdicts, not a knob's. With fewer than MIN_CONFIGS configurations the ranking is noise,
and the line says so instead.
"""
from __future__ import annotations

import math

import pandas as pd

MIN_CONFIGS = 16  # a knob with no effect took up to 0.33 at 8 configurations, 0.06 at 16 (tests/test_importance.py)


def distribution(domain):
    """Optuna's distribution of one of our domains (sweeps/space.py), or of a Tune domain."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from sweeps.space import values_of

    values = values_of(domain)
    if values:
        return CategoricalDistribution(tuple(values))
    return FloatDistribution(float(domain.lower), float(domain.upper), log=bool(getattr(domain, "log", False)))


def _plain(value):
    """A table cell as Optuna takes a categorical value (None, bool, int, float or str)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def configurations(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration that finished at least one run: its arm, first row's values and
    the mean of `metric` over its runs (`value`), `n_runs`."""
    done = trials[(trials["status"] != "ERROR") & trials[metric].notna()] if "status" in trials else trials
    if done.empty:
        return pd.DataFrame()
    ids = done["config_id"].fillna(done["arm"] + "/c0")
    grouped = done.assign(config_id=ids).groupby("config_id", sort=False)
    first = grouped.first()
    return first.assign(value=grouped[metric].mean(), n_runs=grouped.size()).reset_index()


def _values(column: pd.Series) -> list:
    """A column's cells as Optuna takes them (pandas would turn None back into NaN)."""
    return [_plain(v) for v in column]


def _varies(column: pd.Series) -> bool:
    return len(set(map(repr, _values(column)))) > 1


def rank(configs: pd.DataFrame, distributions: dict, mode: str, seed: int) -> dict:
    """{knob: importance} by fANOVA over `configs` (one row per configuration, `value` its
    score), for the knobs in `distributions` whose values vary; importances sum to 1."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import create_trial

    varied = {k: d for k, d in distributions.items() if k in configs and _varies(configs[k])}
    if not varied:
        return {}
    if len(varied) < 2:
        return {}  # one knob takes all of it by construction: nothing ranked
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per ranking
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        optuna.logging.set_verbosity(level)
    for _, row in configs.iterrows():
        params = {k: _plain(row[k]) for k in varied}
        if any(p is None and not isinstance(d, optuna.distributions.CategoricalDistribution)
               for p, d in zip(params.values(), varied.values())):
            continue  # a numeric knob this configuration did not use
        study.add_trial(create_trial(params=params, distributions=varied, value=float(row["value"])))
    if len(study.trials) < 2:
        return {}
    return dict(get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), normalize=True))


def importances(trials: pd.DataFrame, arms: dict, space: dict, metric: str, mode: str, seed: int,
                extra=()) -> dict:
    """{arm: (n_configs, {knob: importance}) or (n_configs, reason)}: each searched arm over its
    own knobs (`space`, the sweep's searched space; `extra`, the switches --search added)."""
    from sweeps.study import arm_space

    configs = configurations(trials, metric) if not trials.empty else pd.DataFrame()
    out: dict = {}
    if configs.empty:
        return out
    for arm in arms:
        own = arm_space(space, arms[arm], extra)
        mine = configs[configs["arm"] == arm]
        if not own or mine.empty:
            continue
        if len(mine) < MIN_CONFIGS:
            out[arm] = (len(mine), f"too few configurations to rank its knobs ({len(mine)} of the {MIN_CONFIGS} "
                                   f"fANOVA needs; --num-samples {MIN_CONFIGS} or more)")
            continue
        ranked = rank(mine, {k: distribution(d) for k, d in own.items()}, mode, seed)
        out[arm] = (len(mine), ranked or "fewer than two searched knobs varied: nothing to rank")
    return out


def lines(found: dict, top: int = 4) -> list[str]:
    """One line per arm, as the terminal prints them under the arm table."""
    text = []
    for arm, (n, ranked) in found.items():
        if isinstance(ranked, str):
            text.append(f"  {arm}: {ranked}")
        else:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in list(ranked.items())[:top])
            more = f", {len(ranked) - top} more" if len(ranked) > top else ""
            text.append(f"  {arm}: {shown}{more}  (fANOVA over {n} configurations)")
    return text


def table(found: dict) -> pd.DataFrame:
    rows = [{"arm": arm, "knob": k, "importance": v, "n_configs": n}
            for arm, (n, ranked) in found.items() if not isinstance(ranked, str) for k, v in ranked.items()]
    return pd.DataFrame(rows, columns=["arm", "knob", "importance", "n_configs"])


def plot(found: dict, path) -> object | None:
    """One panel per ranked arm: its knobs' importances, largest on top. None when none ranked."""
    ranked = {arm: r for arm, (_, r) in found.items() if not isinstance(r, str) and r}
    if not ranked:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sum(len(r) for r in ranked.values())
    fig, axes = plt.subplots(len(ranked), 1, figsize=(6.5, 0.8 + 0.35 * rows + 0.5 * len(ranked)), squeeze=False)
    for ax, (arm, r) in zip(axes[:, 0], ranked.items()):
        keys = list(r)[::-1]
        ax.barh(keys, [r[k] for k in keys], color="tab:blue", alpha=0.85)
        ax.set_xlim(0, 1)
        ax.set_title(f"{arm}: fANOVA importance", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
