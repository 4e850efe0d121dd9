"""How often the arm table's verdicts are wrong: the false-verdict rate under a true null, and
the power to see a planted difference, for each test the table has used.

    python bench/calibration.py                 # 200 repetitions at K = 4, 10 and LOSO: 4 min on 2 cores
    python bench/calibration.py --reps 400 --png docs/calibration.png

The null is built from data, not assumed. Two cheap arms, both seeded (so `--seeds 3` means
something): logistic regression by SGD at a small L2 penalty (arm A), and the same at a larger
penalty (arm B), tuned by bisection until both score within `--tol` (0.002) of each other on
50,000 held-out items of the generated pool, averaged over training sets of the size a fold
trains on. They are different models with the same expected accuracy.

Each repetition draws a fresh data set (n items of `--speakers` speakers, each speaker with an
offset of its own, as in speech), splits it into speaker folds (K = 4, 10, and one per speaker),
trains both arms on every fold with each of 3 seeds, and runs the comparison the study runs:
- old: the paired t-test over every (fold, seed) pair, as the table did before;
- corrected: the corrected resampled t-test over the fold means (Nadeau & Bengio), p < 0.05;
- Bayesian: the correlated t-test (baycomp), rope ±0.01, better/worse at P ≥ 0.95 (the table's default).
A "better" or "worse" verdict under the null is false. Power: the same data with arm B's test
predictions made 3 points worse (a planted difference), the rate of "A better".

Rates are printed with their Wilson 95% interval over the repetitions (the binomial margin).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.smallest import parse  # noqa: E402
from sweeps.verdicts import ROPE, corrected_test, plain_paired_t  # noqa: E402

TESTS = ("old", "corrected", "bayes")
NAMES = {"old": "old: paired t over fold × seed", "corrected": "corrected t (Nadeau-Bengio)",
         "bayes": "Bayesian correlated t (default)"}


class Pool:
    """A generated emotion-like problem: `classes` class centres in `dim` features, each speaker
    shifting every item it says by an offset of its own, item noise on top."""

    def __init__(self, seed: int, classes: int = 4, dim: int = 12, speaker_sd: float = 0.8, noise_sd: float = 1.6):
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(0, 1, (classes, dim))
        self.classes, self.dim, self.speaker_sd, self.noise_sd = classes, dim, speaker_sd, noise_sd

    def draw(self, rng, speakers: int, per_speaker: int):
        """(X, y, speaker) of fresh speakers."""
        offsets = rng.normal(0, self.speaker_sd, (speakers, self.dim))
        who = np.repeat(np.arange(speakers), per_speaker)
        y = rng.integers(0, self.classes, len(who))
        x = self.centres[y] + offsets[who] + rng.normal(0, self.noise_sd, (len(who), self.dim))
        return x.astype(np.float32), y, who


def arm(alpha: float, seed: int):
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=alpha, max_iter=30, tol=None,
                                                         random_state=seed))


def expected_gap(pool: Pool, alpha_a: float, alpha_b: float, n_train: int, speakers: int, draws: int,
                 held_out, seed: int) -> float:
    """acc(B) − acc(A) on the held-out items, averaged over `draws` training sets of n_train
    items (the same draws for both arms: common random numbers)."""
    x_test, y_test, _ = held_out
    rng = np.random.default_rng(seed)
    gaps = []
    for d in range(draws):
        x, y, _ = pool.draw(rng, speakers, max(n_train // speakers, 2))
        a = arm(alpha_a, d).fit(x, y).score(x_test, y_test)
        b = arm(alpha_b, d).fit(x, y).score(x_test, y_test)
        gaps.append(b - a)
    return float(np.mean(gaps))


def calibrate(pool: Pool, alpha_a: float, n_train: int, speakers: int, held: int, draws: int, tol: float,
              seed: int) -> tuple[float, float, float]:
    """arm B's penalty with acc(B) = acc(A) within tol (bisection on log α, above α_A: a more
    regularized model). Returns (α_B, its gap, acc(A))."""
    held_out = pool.draw(np.random.default_rng(seed + 1), max(held // 50, 1), 50)
    lo, hi = math.log10(alpha_a), math.log10(alpha_a) + 4
    gap_hi = expected_gap(pool, alpha_a, 10 ** hi, n_train, speakers, draws, held_out, seed)
    if gap_hi > -tol:
        raise SystemExit(f"no larger penalty costs accuracy up to α = {10 ** hi:g}: widen the search")
    gap = gap_hi
    for _ in range(14):
        mid = (lo + hi) / 2
        gap = expected_gap(pool, alpha_a, 10 ** mid, n_train, speakers, draws, held_out, seed)
        if abs(gap) <= tol / 2:
            hi = mid
            break
        lo, hi = (mid, hi) if gap > 0 else (lo, mid)
    x, y, _ = pool.draw(np.random.default_rng(seed + 2), speakers, max(n_train // speakers, 2))
    acc_a = arm(alpha_a, 0).fit(x, y).score(*held_out[:2])
    return 10 ** hi, gap, acc_a


def speaker_folds(who: np.ndarray, k: int, rng) -> list[np.ndarray]:
    """k folds of whole speakers, shuffled: each fold's test items."""
    speakers = rng.permutation(np.unique(who))
    return [np.isin(who, part) for part in np.array_split(speakers, k)]


def plant(pred: np.ndarray, y: np.ndarray, drop: float, classes: int, rng) -> np.ndarray:
    """Predictions `drop` less accurate in expectation: a correct one turned wrong with
    probability drop / accuracy."""
    right = pred == y
    p = min(drop / max(right.mean(), 1e-9), 1.0)
    turn = right & (rng.random(len(y)) < p)
    out = pred.copy()
    out[turn] = (y[turn] + rng.integers(1, classes, turn.sum())) % classes
    return out


def repetition(pool: Pool, alphas, ks: dict, seeds: int, speakers: int, per_speaker: int, drop: float, rope: float,
               rng) -> dict:
    """One fresh data set: {(K name, seeds, null|planted): {test: verdict}}."""
    x, y, who = pool.draw(rng, speakers, per_speaker)
    out = {}
    for name, k in ks.items():
        folds = speaker_folds(who, k, rng)
        acc = np.zeros((2, 2, len(folds), seeds))  # (null/planted, arm, fold, seed)
        n_train, n_test = [], []
        for f, test in enumerate(folds):
            n_train.append(int((~test).sum()))
            n_test.append(int(test.sum()))
            for s in range(seeds):
                seed = int(rng.integers(2 ** 31))
                pa = arm(alphas[0], seed).fit(x[~test], y[~test]).predict(x[test])
                pb = arm(alphas[1], seed).fit(x[~test], y[~test]).predict(x[test])
                acc[:, 0, f, s] = np.mean(pa == y[test])
                acc[0, 1, f, s] = np.mean(pb == y[test])
                acc[1, 1, f, s] = np.mean(plant(pb, y[test], drop, pool.classes, rng) == y[test])
        ratio = float(np.mean(n_test) / np.mean(n_train))
        for n_seeds in sorted({1, seeds}):
            for h, case in enumerate(("null", "planted")):
                a, b = acc[h, 0, :, :n_seeds], acc[h, 1, :, :n_seeds]
                verdicts = {"old": plain_paired_t(a.ravel(), b.ravel())["verdict"]}
                result = corrected_test(a.mean(1), b.mean(1), ratio, rope)  # seeds averaged within a fold
                verdicts["corrected"] = (("better" if result["diff"] > 0 else "worse") if result["p_value"] < 0.05
                                         else "no difference")
                verdicts["bayes"] = result["verdict"]
                out[(name, n_seeds, case)] = verdicts
    return out


def wilson(hits: int, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    return proportion_confint(hits, n, alpha=0.05, method="wilson")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=200, help="data sets drawn per setting (default 200)")
    p.add_argument("--speakers", type=int, default=12, help="speakers per data set (LOSO: one fold each)")
    p.add_argument("--per-speaker", type=int, default=40, help="items per speaker")
    p.add_argument("--ks", default="4,10,loso", help="the fold counts (default 4,10,loso)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per fold (also run with 1)")
    p.add_argument("--drop", type=float, default=0.03, help="the planted difference, in accuracy (default 0.03)")
    p.add_argument("--rope", type=float, default=ROPE)
    p.add_argument("--held-out", type=int, default=50000, help="items the two arms are matched on")
    p.add_argument("--tol", type=float, default=0.002, help="how close the arms' expected accuracies are made")
    p.add_argument("--draws", type=int, default=40, help="training sets averaged per step of the matching")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", help="draw the rates with their intervals here")
    args = parse(p, argv, reps=12, ks="4", held_out=5000, draws=6, tol=0.02)
    ks = {k: (args.speakers if k == "loso" else int(k)) for k in args.ks.split(",")}
    pool = Pool(args.seed)
    alpha_a = 0.01
    n_train = args.speakers * args.per_speaker * (min(ks.values()) - 1) // min(ks.values())
    t = time.perf_counter()
    alpha_b, gap, acc_a = calibrate(pool, alpha_a, n_train, args.speakers, args.held_out, args.draws, args.tol,
                                    args.seed)
    print(f"arms: SGD logistic regression, α_A = {alpha_a:g}, α_B = {alpha_b:.4g}; expected accuracy "
          f"{acc_a:.3f}, gap B − A = {gap:+.4f} on {args.held_out} held-out items ({args.draws} training sets of "
          f"{n_train}; {time.perf_counter() - t:.0f} s)")
    rng = np.random.default_rng(args.seed + 3)
    counts: dict = {}
    t = time.perf_counter()
    for r in range(args.reps):
        for key, verdicts in repetition(pool, (alpha_a, alpha_b), ks, args.seeds, args.speakers, args.per_speaker,
                                        args.drop, args.rope, rng).items():
            for test, verdict in verdicts.items():
                hit = verdict in ("better", "worse") if key[2] == "null" else verdict == "better"
                counts[(*key, test)] = counts.get((*key, test), 0) + int(hit)
        if (r + 1) % max(args.reps // 10, 1) == 0:
            print(f"  {r + 1}/{args.reps} repetitions, {(time.perf_counter() - t) / (r + 1):.2f} s each", flush=True)
    print(f"\n{args.reps} data sets of {args.speakers} speakers × {args.per_speaker} items; "
          f"planted difference {args.drop:.0%}; rope ±{args.rope:g}\n")
    print("| folds | seeds | test | false verdicts under the null (95% CI) | power at the planted difference |")
    print("|---|---:|---|---|---|")
    rows = []
    for name in ks:
        for n_seeds in sorted({1, args.seeds}):
            for test in TESTS:
                false = counts[(name, n_seeds, "null", test)]
                found = counts[(name, n_seeds, "planted", test)]
                lo, hi = wilson(false, args.reps)
                rows.append((name, n_seeds, test, false / args.reps, lo, hi, found / args.reps))
                print(f"| {name if name == 'loso' else 'K=' + name} | {n_seeds} | {NAMES[test]} | "
                      f"{false / args.reps:.3f} ({lo:.3f}–{hi:.3f}) | {found / args.reps:.3f} |")
    def where(r) -> str:
        return f"{r[0] if r[0] == 'loso' else 'K=' + r[0]}, {r[1]} seed{'s' if r[1] > 1 else ''}"

    for test in ("bayes", "corrected", "old"):
        worst = max((r for r in rows if r[2] == test), key=lambda r: r[3])
        verdict = "within 0.05" if worst[4] <= 0.05 else "ABOVE 0.05 beyond its margin"
        print(f"{NAMES[test]}: worst false-verdict rate {worst[3]:.3f} (Wilson 95% CI {worst[4]:.3f}–{worst[5]:.3f}, "
              f"at {where(worst)}): {verdict}")
    if args.png:
        draw(rows, args.png)
        print(f"plot: {args.png}")


def draw(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = []
    for i, (name, seeds, test, rate, lo, hi, _) in enumerate(rows):
        ax.errorbar(rate, i, xerr=[[rate - lo], [hi - rate]], fmt="o",
                    color={"old": "tab:red", "corrected": "tab:blue", "bayes": "tab:green"}[test])
        labels.append(f"{name}, {seeds} seed{'s' if seeds > 1 else ''}: {test}")
    ax.axvline(0.05, color="k", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("false better/worse verdicts under the null (Wilson 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
