"""Statistics of the claim test: does regime a beat regime b, or are they equivalent?

Confirmation runs only (final round); a difference test (paired t by seed, else Welch) and a TOST
equivalence test against +-margin on ``mean(a) - mean(b)``; verdict "no meaningful difference",
"advantage" or "inconclusive".  Which trials count, the verdict rules, edge cases and the CI:
docs/statistics.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from analysis.design import DEFAULT_CONTRASTS, LOTTERY, sort_regimes
from trainables.records import CONDITIONS  # the confirmation's conditions, in report order

ALPHA = 0.05
DEFAULT_MARGIN_POINTS = 1.0  # equivalence margin, in accuracy points (1 point = 0.01 accuracy)
_ZERO_SE = 1e-12  # a standard error at or below this counts as zero variance

SUMMARY_COLUMNS = ["condition", "regime", "lr", "n", "mean", "sd", "low", "high"]
COMPARE_COLUMNS = ["condition", "lr_a", "lr_b", "n_a", "n_b", "paired", "diff", "low", "high",
                   "p_difference", "p_equivalence", "margin", "verdict", "sentence", "detectable", "half_width",
                   "reach"]
POWER = 0.8  # the power at which the smallest detectable advantage is stated


@dataclass(frozen=True)
class Interval:
    """Mean with a two-sided t confidence interval; ``sd`` uses ddof=1 (NaN where n < 2)."""
    n: int
    mean: float
    sd: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """Result of comparing sample ``a`` with sample ``b`` (see the module docstring)."""
    n_a: int
    n_b: int
    paired: bool
    diff: float
    low: float
    high: float
    p_difference: float
    p_equivalence: float
    margin: float
    verdict: str
    sentence: str
    detectable: float = math.nan  # smallest |a - b| the test finds with POWER at the observed spread
    half_width: float = math.nan  # of the confidence interval, against the equivalence margin
    reach: str = ""  # both in a sentence, and the seeds an interval within the margin would take


def _finite(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[~np.isnan(x)]


def _t_interval(center: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    """``center +- t_{df} * se``.  Built from scipy's t quantile rather than
    ``scipy.stats.t.interval`` so that se == 0 gives a zero-width interval, not NaN."""
    if not (df > 0) or math.isnan(se):
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return center - half, center + half


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean of the non-NaN ``values`` with a two-sided t interval at ``confidence``."""
    x = _finite(values)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    low, high = _t_interval(mean, sd / math.sqrt(n), n - 1, confidence)
    return Interval(n, mean, sd, low, high)


def _pts(x: float, decimals: int) -> str:
    return f"{round(100 * x, decimals) + 0.0:.{decimals}f}"  # + 0.0 turns -0.0 into 0.0


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _sentence(verdict: str, names: tuple[str, str], diff: float, low: float, high: float,
              p_diff: float, p_eq: float, margin: float, alpha: float) -> str:
    a, b = names
    level = f"{100 * (1 - alpha):g}% CI"
    m = f"+-{_pts(margin, 1)} points"
    d = 1 if max(abs(diff), abs(low), abs(high)) >= 0.01 else 2
    if verdict == "advantage":
        ahead, behind, lo, hi = (a, b, low, high) if diff > 0 else (b, a, -high, -low)
        return (f"{ahead} beats {behind} by {_pts(abs(diff), d)} points "
                f"({level} {_pts(lo, d)} to {_pts(hi, d)}, {_p(p_diff)}).")
    ci = f"{level} {_pts(low, d)} to {_pts(high, d)}"
    if verdict == "no meaningful difference":
        real = (f"; the difference is real ({_p(p_diff)}) but negligible" if p_diff < alpha else "")
        return (f"No meaningful difference between {a} and {b}: {a} - {b} = {_pts(diff, d)} points "
                f"({ci}), equivalent within {m} (TOST {_p(p_eq)}){real}.")
    return (f"Inconclusive: {a} - {b} = {_pts(diff, d)} points ({ci}); neither a difference "
            f"({_p(p_diff)}) nor equivalence within {m} (TOST {_p(p_eq)}) could be shown.")


def compare_arrays(a: Iterable[float], b: Iterable[float], *, paired: bool,
                   margin_points: float = DEFAULT_MARGIN_POINTS, alpha: float = ALPHA,
                   names: tuple[str, str] = ("a", "b")) -> Comparison:
    """Compare two accuracy samples: difference test, TOST equivalence test, CI and verdict.

    ``paired``: ``a[i]`` and ``b[i]`` come from the same seed (equal lengths required); a pair
    with a NaN is dropped.  Otherwise NaNs are dropped per sample and Welch's test is used.
    """
    if margin_points <= 0:
        raise ValueError(f"margin_points must be > 0 (got {margin_points})")
    margin = margin_points / 100
    if paired:
        xa, xb = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
        if len(xa) != len(xb):
            raise ValueError(f"paired samples need equal lengths (got {len(xa)} and {len(xb)})")
        keep = ~(np.isnan(xa) | np.isnan(xb))
        xa, xb = xa[keep], xb[keep]
    else:
        xa, xb = _finite(a), _finite(b)
    n_a, n_b = len(xa), len(xb)
    diff = float(xa.mean() - xb.mean()) if n_a and n_b else math.nan

    if min(n_a, n_b) < 2:
        what = f"{n_a} paired seeds" if paired else f"{n_a} and {n_b} seeds"
        sentence = (f"Inconclusive: too few seeds to compare {names[0]} with {names[1]} "
                    f"({what}; at least 2 needed on each side).")
        return Comparison(n_a, n_b, paired, diff, math.nan, math.nan, math.nan, math.nan, margin,
                          "inconclusive", sentence)

    if paired:
        d = xa - xb
        se, df = float(d.std(ddof=1)) / math.sqrt(n_a), n_a - 1
    else:
        va, vb = xa.var(ddof=1) / n_a, xb.var(ddof=1) / n_b
        se = float(math.sqrt(va + vb))
        # Welch-Satterthwaite degrees of freedom (the CI is built by hand so that it also works with
        # scipy < 1.11, whose ttest_ind result has no confidence_interval()).
        df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)) if se > 0 else math.inf
    low, high = _t_interval(diff, se, df, 1 - alpha)

    if se <= _ZERO_SE:  # t statistics undefined: the difference is known exactly
        low = high = diff
        p_diff = 1.0 if abs(diff) <= _ZERO_SE else 0.0  # tolerate rounding in the means
        p_eq = 0.0 if abs(diff) < margin else 1.0
    elif paired:
        p_diff = float(stats.ttest_rel(xa, xb).pvalue)
        # TOST: scipy has no equivalence test, so it is built from its two one-sided tests.
        p_lo = stats.ttest_1samp(d, -margin, alternative="greater").pvalue  # H0: diff <= -margin
        p_hi = stats.ttest_1samp(d, margin, alternative="less").pvalue      # H0: diff >= +margin
        p_eq = float(max(p_lo, p_hi))
    else:
        p_diff = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
        # TOST (not in scipy), from two one-sided Welch tests with b shifted by -+margin.
        p_lo = stats.ttest_ind(xa, xb - margin, equal_var=False, alternative="greater").pvalue
        p_hi = stats.ttest_ind(xa, xb + margin, equal_var=False, alternative="less").pvalue
        p_eq = float(max(p_lo, p_hi))

    if p_eq < alpha:
        verdict = "no meaningful difference"
    elif p_diff < alpha:
        verdict = "advantage"
    else:
        verdict = "inconclusive"
    sentence = _sentence(verdict, names, diff, low, high, p_diff, p_eq, margin, alpha)
    detectable, half, reach = _reach(se, df, n_a, low, high, margin, alpha)
    return Comparison(n_a, n_b, paired, diff, low, high, p_diff, p_eq, margin, verdict, sentence,
                      detectable, half, reach)


def _reach(se: float, df: float, n: int, low: float, high: float, margin: float,
           alpha: float) -> tuple[float, float, str]:
    """What the comparison could detect: the smallest difference a two-sided t test at ``alpha``
    finds with ``POWER`` at this standard error, (t_{1-alpha/2} + t_{POWER}) * se; the interval's
    half-width against the margin; and about how many seeds (per side) would bring the half-width
    under the margin (the half-width shrinks as 1/sqrt(n))."""
    half = (high - low) / 2
    if not se > _ZERO_SE or not math.isfinite(df):
        return 0.0, half, f"Detectable: any difference (no spread between seeds); interval +-{_pts(half, 1)} points."
    detectable = float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(POWER, df)) * se)
    seeds = "" if half < margin else \
        f"; about {math.ceil(n * (half / margin) ** 2)} seeds would bring it within the margin"
    return detectable, half, (f"Detectable with {n} seeds: {_pts(detectable, 1)} points ({100 * POWER:g}% power at the "
                              f"observed spread); interval +-{_pts(half, 1)} points against the +-{_pts(margin, 1)}-point "
                              f"margin{seeds}.")


def _final_round(trials: pd.DataFrame) -> pd.Series:
    final = (trials["prune_round"] == trials["rounds"]) | trials["prune_round"].isna()
    return final.fillna(False).astype(bool)


CANDIDATE_COLUMNS = ["regime", "lr", "n", "val_mean", "val_low", "val_high", "test_mean", "test_low", "test_high",
                     "picked"]


def candidates(trials: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The tuned condition's candidate LRs (each regime's best search LRs, trained on the fresh
    seeds): per regime and LR, the mean validation and test accuracy over the seeds with their t
    intervals; ``picked`` marks each regime's LR of highest mean validation accuracy (the tuned
    LR; ties go to the smaller LR)."""
    done = (trials["phase"] == "confirm") & (trials["status"] == "completed") & (trials["condition"] == "tuned")
    rows = trials[done.fillna(False).astype(bool) & _final_round(trials)]
    out = []
    for regime in sort_regimes(pd.unique(rows["regime"])):
        g = rows[rows["regime"] == regime]
        for lr in sorted(pd.unique(g["lr"])):
            at = g[g["lr"] == lr]
            val = at["val_acc"] if "val_acc" in at else pd.Series(math.nan, index=at.index)  # tables made by hand
            v, t = mean_interval(val, confidence), mean_interval(at["test_acc"], confidence)
            out.append({"regime": regime, "lr": float(lr), "n": v.n, "val_mean": v.mean, "val_low": v.low,
                        "val_high": v.high, "test_mean": t.mean, "test_low": t.low, "test_high": t.high,
                        "picked": False})
    table = pd.DataFrame(out, columns=CANDIDATE_COLUMNS)
    for regime in pd.unique(table["regime"]):
        g = table[(table["regime"] == regime) & table["val_mean"].notna()]
        if len(g):
            table.loc[g["val_mean"].idxmax(), "picked"] = True  # idxmax: the first (smallest LR) of ties
    return table


def picked_lrs(trials: pd.DataFrame) -> dict[str, float]:
    """Each regime's tuned LR: its candidate of highest mean validation accuracy over the fresh seeds."""
    c = candidates(trials)
    return {r["regime"]: r["lr"] for _, r in c[c["picked"]].iterrows()}


def only_picked(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` without the tuned condition's candidates that were not picked (all rounds)."""
    picks = picked_lrs(trials)
    tuned = (trials["phase"] == "confirm") & (trials["condition"] == "tuned")
    other = trials["regime"].map(picks).pipe(lambda p: p.notna() & (trials["lr"] != p))
    return trials[~(tuned.fillna(False).astype(bool) & other)]


def confirm_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """Completed confirmation runs at the final pruning round (``prune_round == rounds``, or a null
    ``prune_round``: a trial that names no round is not part of a sweep); of the tuned condition,
    only each regime's picked candidate LR (``candidates``)."""
    keep = (trials["phase"] == "confirm") & (trials["status"] == "completed") & _final_round(trials)
    return only_picked(trials[keep.fillna(False).astype(bool)])


def _lr(lrs: pd.Series) -> float:
    """The LR used; if several distinct LRs, their geometric mean."""
    u = np.unique(_finite(lrs))
    return float(stats.gmean(u)) if len(u) else math.nan


def _conditions(rows: pd.DataFrame) -> list:
    """Conditions in the order tuned, fixed_small, fixed_large, then the others sorted (null last)."""
    present = list(pd.unique(rows["condition"]))
    known = [c for c in CONDITIONS if c in present]
    others = sorted(c for c in present if isinstance(c, str) and c not in CONDITIONS)
    nulls = [c for c in present if not isinstance(c, str)][:1]
    return known + others + nulls


def _in_condition(rows: pd.DataFrame, condition) -> pd.DataFrame:
    if isinstance(condition, str):
        return rows[rows["condition"] == condition]
    return rows[rows["condition"].isna()]


def summarize(trials: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (condition, regime) of the confirmation runs: LR, n, mean, sd and t interval of test_acc
    (conditions as ``_conditions`` orders them, regimes in ``analysis.design.REGIME_ORDER``)."""
    rows = confirm_rows(trials)
    out = []
    for cond in _conditions(rows):
        g = _in_condition(rows, cond)
        for regime in sort_regimes(pd.unique(g["regime"])):
            r = g[g["regime"] == regime]
            iv = mean_interval(r["test_acc"], confidence)
            out.append({"condition": cond, "regime": regime, "lr": _lr(r["lr"]), "n": iv.n,
                        "mean": iv.mean, "sd": iv.sd, "low": iv.low, "high": iv.high})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def _pairable(ra: pd.DataFrame, rb: pd.DataFrame) -> bool:
    """Same seed set in both regimes, each seed once per regime, no missing seed."""
    sa, sb = ra["seed"], rb["seed"]
    return (not sa.isna().any() and not sb.isna().any() and sa.is_unique and sb.is_unique
            and set(sa) == set(sb))


def compare_regimes(trials: pd.DataFrame, a: str = "winning_ticket", b: str = "random_reinit",
                    margin_points: float = DEFAULT_MARGIN_POINTS, alpha: float = ALPHA,
                    names: tuple[str, str] | None = None) -> pd.DataFrame:
    """Regime ``a`` against regime ``b`` in each condition that has both (see the module docstring).
    ``names``: how the sentences name the two regimes (default: their ids ``a`` and ``b``)."""
    names = (a, b) if names is None else names
    rows = confirm_rows(trials)
    out = []
    for cond in _conditions(rows):
        g = _in_condition(rows, cond)
        ra, rb = g[g["regime"] == a], g[g["regime"] == b]
        if ra.empty or rb.empty:
            continue
        paired = _pairable(ra, rb)
        if paired:
            ra, rb = ra.sort_values("seed"), rb.sort_values("seed")
        c = compare_arrays(ra["test_acc"].to_numpy(float), rb["test_acc"].to_numpy(float), paired=paired,
                           margin_points=margin_points, alpha=alpha, names=names)
        out.append({"condition": cond, "lr_a": _lr(ra["lr"]), "lr_b": _lr(rb["lr"]), "n_a": c.n_a,
                    "n_b": c.n_b, "paired": c.paired, "diff": c.diff, "low": c.low, "high": c.high,
                    "p_difference": c.p_difference, "p_equivalence": c.p_equivalence,
                    "margin": c.margin, "verdict": c.verdict, "sentence": c.sentence, "detectable": c.detectable,
                    "half_width": c.half_width, "reach": c.reach})
    return pd.DataFrame(out, columns=COMPARE_COLUMNS)


def compare_contrasts(trials: pd.DataFrame, contrasts: Iterable[tuple[str, str]] | None = None,
                      margin_points: float = DEFAULT_MARGIN_POINTS, alpha: float = ALPHA,
                      names: Callable[[str, str], tuple[str, str]] | None = None) -> pd.DataFrame:
    """``compare_regimes`` for every contrast ``(a, b)`` (default: the lottery pair), stacked in
    contrast order, with columns ``a`` and ``b`` added; a contrast whose regimes did not both run
    in some condition gives no row there.  ``names(a, b)``: the sentence's names (default: ids)."""
    pairs = DEFAULT_CONTRASTS[LOTTERY] if contrasts is None else list(contrasts)
    frames = []
    for a, b in pairs:
        df = compare_regimes(trials, a=a, b=b, margin_points=margin_points, alpha=alpha,
                             names=names(a, b) if names else None)
        if len(df):
            frames.append(df.assign(a=a, b=b))
    if not frames:
        return pd.DataFrame(columns=[*COMPARE_COLUMNS, "a", "b"])
    return pd.concat(frames, ignore_index=True)
