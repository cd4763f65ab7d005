"""Statistics of the claim test: does regime a beat regime b, or are they equivalent?

Confirmation runs only (final round); a difference test (paired t by seed, else Welch) and a TOST
equivalence test against +-margin on ``mean(a) - mean(b)``; verdict "no meaningful difference",
"advantage" or "inconclusive".  Which trials count, the verdict rules, edge cases and the CI:
docs/statistics.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from analysis.design import DEFAULT_CONTRASTS, LOTTERY, sort_regimes
from analysis.formats import p_text, points
from analysis.sequential import BOOTSTRAP, Plan, choice_bootstrap, pick_shares, seeded
from trainables.records import CONDITIONS  # the confirmation's conditions, in report order

ALPHA = 0.05
DEFAULT_MARGIN_POINTS = 1.0  # equivalence margin, in accuracy points (1 point = 0.01 accuracy)
_ZERO_SE = 1e-12  # a standard error at or below this counts as zero variance

SUMMARY_COLUMNS = ["condition", "regime", "lr", "n", "mean", "sd", "low", "high"]
COMPARE_COLUMNS = ["condition", "lr_a", "lr_b", "n_a", "n_b", "paired", "diff", "low", "high",
                   "p_difference", "p_equivalence", "margin", "verdict", "sentence", "detectable", "half_width",
                   "reach", "a", "b", "look", "looks", "state", "level_difference", "level_equivalence", "choice"]
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


def _sentence(verdict: str, names: tuple[str, str], diff: float, low: float, high: float,
              p_diff: float, p_eq: float, margin: float, alpha: float, level_diff: float) -> str:
    """``level_diff`` below ``alpha``: a look of the sequential confirmation, whose interval is a
    repeated one (it covers at every look at once at ``1 - alpha``)."""
    a, b = names
    level = f"{100 * (1 - alpha):g}% {'CI' if level_diff >= alpha else 'repeated CI'}"
    m = f"+-{points(margin, 1)} points"
    d = 1 if max(abs(diff), abs(low), abs(high)) >= 0.01 else 2
    if verdict == "advantage":
        ahead, behind, lo, hi = (a, b, low, high) if diff > 0 else (b, a, -high, -low)
        return (f"{ahead} beats {behind} by {points(abs(diff), d)} points "
                f"({level} {points(lo, d)} to {points(hi, d)}, {p_text(p_diff)}).")
    ci = f"{level} {points(low, d)} to {points(high, d)}"
    if verdict == "no meaningful difference":
        real = (f"; the difference is real ({p_text(p_diff)}) but negligible" if p_diff < level_diff else "")
        return (f"No meaningful difference between {a} and {b}: {a} - {b} = {points(diff, d)} points "
                f"({ci}), equivalent within {m} (TOST {p_text(p_eq)}){real}.")
    return (f"Inconclusive: {a} - {b} = {points(diff, d)} points ({ci}); neither a difference "
            f"({p_text(p_diff)}) nor equivalence within {m} (TOST {p_text(p_eq)}) could be shown.")


def compare_arrays(a: Iterable[float], b: Iterable[float], *, paired: bool,
                   margin_points: float = DEFAULT_MARGIN_POINTS, alpha: float = ALPHA,
                   names: tuple[str, str] = ("a", "b"), levels: tuple[float, float] | None = None,
                   se: float | None = None) -> Comparison:
    """Compare two accuracy samples: difference test, TOST equivalence test, CI and verdict.

    ``paired``: ``a[i]`` and ``b[i]`` come from the same seed (equal lengths required); a pair
    with a NaN is dropped.  Otherwise NaNs are dropped per sample and Welch's test is used.
    ``levels``: the nominal levels the tests are held to (two-sided for the difference test,
    one-sided for each of TOST's tests; default ``(alpha, alpha)``, the fixed design) - a look of
    the sequential confirmation has its own (``analysis.sequential``); the interval is two-sided at
    ``1 - levels[0]``.  ``se``: a standard error of the difference to use instead of the samples'
    own (paired only: the tuned comparison's, which carries the choice of LR).
    """
    if margin_points <= 0:
        raise ValueError(f"margin_points must be > 0 (got {margin_points})")
    margin = margin_points / 100
    level_diff, level_eq = levels or (alpha, alpha)
    xa, xb = _samples(a, b, paired)
    n_a, n_b = len(xa), len(xb)
    diff = float(xa.mean() - xb.mean()) if n_a and n_b else math.nan

    if min(n_a, n_b) < 2:
        what = f"{n_a} paired seeds" if paired else f"{n_a} and {n_b} seeds"
        sentence = (f"Inconclusive: too few seeds to compare {names[0]} with {names[1]} "
                    f"({what}; at least 2 needed on each side).")
        return Comparison(n_a, n_b, paired, diff, math.nan, math.nan, math.nan, math.nan, margin,
                          "inconclusive", sentence)

    se, given, df = _standard_error(xa, xb, paired, se)
    low, high = _t_interval(diff, se, df, 1 - level_diff)
    if se <= _ZERO_SE:  # t statistics undefined: the difference is known exactly
        low = high = diff
    p_diff, p_eq = _p_values(xa, xb, diff, se, df, given, paired, margin)

    if p_eq < level_eq:
        verdict = "no meaningful difference"
    elif p_diff < level_diff:
        verdict = "advantage"
    else:
        verdict = "inconclusive"
    sentence = _sentence(verdict, names, diff, low, high, p_diff, p_eq, margin, alpha, level_diff)
    detectable, half, reach = _reach(se, df, n_a, n_b, paired, low, high, margin, level_diff)
    return Comparison(n_a, n_b, paired, diff, low, high, p_diff, p_eq, margin, verdict, sentence,
                      detectable, half, reach)


def _samples(a: Iterable[float], b: Iterable[float], paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """The two samples without NaNs: paired, a pair with a NaN dropped (equal lengths required)."""
    if not paired:
        return _finite(a), _finite(b)
    xa, xb = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if len(xa) != len(xb):
        raise ValueError(f"paired samples need equal lengths (got {len(xa)} and {len(xb)})")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    return xa[keep], xb[keep]


def _standard_error(xa: np.ndarray, xb: np.ndarray, paired: bool, se: float | None) -> tuple[float, bool, float]:
    """(the difference's standard error, whether it is the given ``se``, the degrees of freedom)."""
    n_a, n_b = len(xa), len(xb)
    if paired:
        own = float((xa - xb).std(ddof=1)) / math.sqrt(n_a)
        given = se is not None and se > own  # the choice-carrying standard error (never below the plain one)
        return (float(se) if given else own), given, n_a - 1
    va, vb = xa.var(ddof=1) / n_a, xb.var(ddof=1) / n_b
    se = float(math.sqrt(va + vb))
    # Welch-Satterthwaite degrees of freedom (the CI is built by hand so that it also works with
    # scipy < 1.11, whose ttest_ind result has no confidence_interval()).
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)) if se > 0 else math.inf
    return se, False, df


def _p_values(xa: np.ndarray, xb: np.ndarray, diff: float, se: float, df: float, given: bool, paired: bool,
              margin: float) -> tuple[float, float]:
    """(the difference test's p, TOST's p)."""
    if se <= _ZERO_SE:  # t statistics undefined: the difference is known exactly
        return (1.0 if abs(diff) <= _ZERO_SE else 0.0,  # tolerate rounding in the means
                0.0 if abs(diff) < margin else 1.0)
    if given:  # the t tests on the given standard error (statsmodels' TOST computes its own)
        return (float(2 * stats.t.sf(abs(diff) / se, df)),
                float(max(stats.t.sf((diff + margin) / se, df), stats.t.sf((margin - diff) / se, df))))
    if paired:
        return float(stats.ttest_rel(xa, xb).pvalue), float(ttost_paired(xa, xb, -margin, margin)[0])
    return (float(stats.ttest_ind(xa, xb, equal_var=False).pvalue),
            float(ttost_ind(xa, xb, -margin, margin, usevar="unequal")[0]))


@lru_cache(maxsize=1024)
def _effect(n_a: int, n_b: int, paired: bool, level: float) -> float:
    """The standardised effect a two-sided t test at ``level`` finds with ``POWER`` (statsmodels'
    power of the paired / two-sample t test; it depends on the counts and the level only)."""
    if paired:
        return float(TTestPower().solve_power(effect_size=None, nobs=n_a, alpha=level, power=POWER))
    return float(TTestIndPower().solve_power(effect_size=None, nobs1=n_a, ratio=n_b / n_a, alpha=level, power=POWER))


def detectable_difference(se: float, n_a: int, n_b: int, paired: bool, level: float) -> float:
    """The smallest difference a two-sided t test at ``level`` finds with ``POWER``, at the spread
    behind ``se``, in accuracy units."""
    sd = se * math.sqrt(n_a) if paired else se / math.sqrt(1 / n_a + 1 / n_b)
    return _effect(n_a, n_b, paired, level) * sd


def _reach(se: float, df: float, n_a: int, n_b: int, paired: bool, low: float, high: float, margin: float,
           level: float) -> tuple[float, float, str]:
    """What the comparison could detect: the smallest difference its test finds with ``POWER`` at
    this standard error and level; the interval's half-width against the margin; and about how many
    seeds (per side) would bring the half-width under the margin (it shrinks as 1/sqrt(n))."""
    half = (high - low) / 2
    if not se > _ZERO_SE or not math.isfinite(df):
        return 0.0, half, f"Detectable: any difference (no spread between seeds); interval +-{points(half, 1)} points."
    detectable = detectable_difference(se, n_a, n_b, paired, level)
    seeds = "" if half < margin else \
        f"; about {math.ceil(n_a * (half / margin) ** 2)} seeds would bring it within the margin"
    return detectable, half, (f"Detectable with {n_a} seeds: {points(detectable, 1)} points ({100 * POWER:g}% power at the "
                              f"observed spread); interval +-{points(half, 1)} points against the +-{points(margin, 1)}-point "
                              f"margin{seeds}.")


def _final_round(trials: pd.DataFrame) -> pd.Series:
    final = (trials["prune_round"] == trials["rounds"]) | trials["prune_round"].isna()
    return final.fillna(False).astype(bool)


CANDIDATE_COLUMNS = ["regime", "lr", "n", "val_mean", "val_low", "val_high", "test_mean", "test_low", "test_high",
                     "picked", "share", "dropped_after"]


def _tuned_rows(trials: pd.DataFrame, completed: bool = True) -> pd.DataFrame:
    keep = (trials["phase"] == "confirm") & (trials["condition"] == "tuned") & _final_round(trials)
    if completed:
        keep &= trials["status"] == "completed"
    return trials[keep.fillna(False).astype(bool)]


def candidates(trials: pd.DataFrame, confidence: float = 0.95, shares: bool = True) -> pd.DataFrame:
    """The tuned condition's candidate LRs (each regime's best search LRs, trained on the fresh
    seeds): per regime and LR, the mean validation and test accuracy over its seeds with their t
    intervals.  A candidate the sequential confirmation stopped (``analysis.sequential``) has fewer
    seeds than its regime's others: ``dropped_after`` says after how many.  ``picked`` marks each
    regime's tuned LR: of the candidates that took every seed, the one of highest mean validation
    accuracy (ties: the smaller LR); ``share`` (with ``shares``) how often each of those would be
    picked on a bootstrap resample of the seeds."""
    rows = _tuned_rows(trials)
    ran = _tuned_rows(trials, completed=False).groupby(["regime", "lr"])["seed"].nunique()
    out = []
    for regime in sort_regimes(pd.unique(rows["regime"])):
        g = rows[rows["regime"] == regime]
        most = ran[regime].max()
        for lr in sorted(pd.unique(g["lr"])):
            at = g[g["lr"] == lr]
            val = at["val_acc"] if "val_acc" in at else pd.Series(math.nan, index=at.index)  # tables made by hand
            v, t = mean_interval(val, confidence), mean_interval(at["test_acc"], confidence)
            out.append({"regime": regime, "lr": float(lr), "n": v.n, "val_mean": v.mean, "val_low": v.low,
                        "val_high": v.high, "test_mean": t.mean, "test_low": t.low, "test_high": t.high,
                        "picked": False, "share": math.nan,
                        "dropped_after": int(ran[(regime, lr)]) if ran[(regime, lr)] < most else None})
    table = pd.DataFrame(out, columns=CANDIDATE_COLUMNS)
    for regime in pd.unique(table["regime"]):
        alive = table[(table["regime"] == regime) & table["dropped_after"].isna()]
        g = alive[alive["val_mean"].notna()]
        if len(g):
            table.loc[g["val_mean"].idxmax(), "picked"] = True  # idxmax: the first (smallest LR) of ties
        if shares and len(g) > 1:
            val = _matrix(rows, regime, list(g["lr"]), "val_acc")
            if len(val) >= 2:
                share = pick_shares(val.to_numpy(), seeded(int(val.index[0]), 0, "pick", regime))
                table.loc[g.index, "share"] = share
        elif len(g) == 1:
            table.loc[g.index, "share"] = 1.0
    return table


def _matrix(rows: pd.DataFrame, regime: str, lrs: list[float], column: str,
            seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """[seed x LR] of ``column`` for ``regime``'s rows at ``lrs`` (seeds in order); seeds missing a
    value at some LR are left out."""
    g = rows[(rows["regime"] == regime) & rows["lr"].isin(lrs)]
    if seeds is not None:
        g = g[g["seed"].isin(list(seeds))]
    m = g.pivot_table(index="seed", columns="lr", values=column, aggfunc="mean")
    return m.reindex(columns=sorted(lrs)).dropna().sort_index()


def picked_lrs(trials: pd.DataFrame) -> dict[str, float]:
    """Each regime's tuned LR: of its candidates that took every seed, the one of highest mean
    validation accuracy over them."""
    c = candidates(trials, shares=False)
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


def _rows(rows: pd.DataFrame, regime: str, condition, seeds: tuple[int, ...] | None,
          lrs: list[float] | None = None) -> pd.DataFrame:
    g = _in_condition(rows, condition)
    g = g[g["regime"] == regime]
    if lrs is not None:
        g = g[g["lr"].isin(lrs)]
    return g if seeds is None else g[g["seed"].isin(list(seeds))]


def _pick(rows: pd.DataFrame, regime: str, lrs: list[float], seeds: tuple[int, ...] | None) -> float | None:
    """Of ``lrs``, the one of highest mean validation accuracy over ``seeds`` (ties: the smaller);
    None without validation accuracies (tables made by hand)."""
    g = _rows(rows, regime, "tuned", seeds, lrs)
    if "val_acc" not in g or g["val_acc"].isna().all():
        return None
    means = g.groupby("lr")["val_acc"].mean()
    return float(means.index[int(np.argmax(means.to_numpy()))])


def _eliminate(rows: pd.DataFrame, regime: str, lrs: list[float], seeds: tuple[int, ...], level: float) -> list[float]:
    """The candidates that can still be picked after a look: a candidate whose validation accuracy
    is below the best's by more than the look allows (paired by seed, one-sided at ``level / 2``:
    the difference test's boundary on one side) takes no more seeds."""
    val = _matrix(rows, regime, lrs, "val_acc", seeds)
    n = len(val)
    if n < 2 or len(lrs) < 2:
        return list(lrs)
    v = val.to_numpy()
    best = int(np.argmax(v.mean(axis=0)))
    keep = []
    for j, lr in enumerate(val.columns):
        d = v[:, best] - v[:, j]
        se = d.std(ddof=1) / math.sqrt(n)
        worse = d.mean() > _ZERO_SE if se <= _ZERO_SE else stats.t.sf(d.mean() / se, n - 1) < level / 2
        if j == best or not worse:
            keep.append(float(lr))
    return keep


class Replay:
    """The sequential confirmation replayed on a trials table (``analysis.sequential``): every
    comparison (condition x contrast) look by look until it is decided, reaches the last look, or
    meets a look not trained yet; each regime's tuned candidates that can still be picked."""

    def __init__(self, trials: pd.DataFrame, pairs: list[tuple[str, str]], plan: Plan,
                 names: Callable[[str, str], tuple[str, str]] | None = None):
        self.plan = plan
        ran = (trials["phase"] == "confirm") & _final_round(trials)
        self.ran = trials[ran.fillna(False).astype(bool)]  # any status: a look trained, even if a run failed
        self.rows = self.ran[self.ran["status"] == "completed"]
        self.sequential = len(plan.looks) > 1
        self._alive: dict[str, list[list[float]]] = {}
        self.comparisons: list[dict] = []
        for a, b in pairs:  # contrast order, then condition order
            for cond in _conditions(self.rows):
                present = set(_in_condition(self.rows, cond)["regime"])
                if a in present and b in present:
                    self.comparisons.append(self._replay(cond, a, b, names(a, b) if names else (a, b)))

    def _seeds(self, k: int, new: bool = False) -> tuple[int, ...] | None:
        if not self.sequential:
            return None  # the fixed design: every row
        return self.plan.new_seeds(k) if new else self.plan.seeds_at(k)

    def alive(self, regime: str, k: int) -> list[float]:
        """``regime``'s tuned candidates that take look ``k``'s seeds."""
        looks = self._alive.setdefault(regime, [sorted(float(x) for x in pd.unique(
            _rows(self.ran, regime, "tuned", None)["lr"]))])
        while len(looks) <= k:
            j, prev = len(looks) - 1, looks[-1]
            trained = len(_rows(self.ran, regime, "tuned", self._seeds(j, new=True), prev)) > 0
            looks.append(_eliminate(self.rows, regime, prev, self.plan.seeds_at(j), self.plan.levels(j)[0])
                         if trained and self.sequential else prev)
        return looks[k]

    def _lrs(self, regime: str, cond, k: int) -> list[float] | None:
        return self.alive(regime, k) if cond == "tuned" else None

    def _replay(self, cond, a: str, b: str, names: tuple[str, str]) -> dict:
        plan, last = self.plan, len(self.plan.looks) - 1
        row: dict = {"condition": cond, "a": a, "b": b, "look": 0, "looks": len(plan.looks), "state": "open"}
        for k in range(len(plan.looks)):
            new = self._seeds(k, new=True)
            if any(_rows(self.ran, r, cond, new, self._lrs(r, cond, k)).empty for r in (a, b)):
                break  # this look is not trained (yet)
            seeds = self._seeds(k)
            picks = {r: _pick(self.rows, r, self._lrs(r, cond, k), seeds) if cond == "tuned" else None for r in (a, b)}
            ra, rb = (_rows(self.rows, r, cond, seeds, None if picks[r] is None else [picks[r]]) for r in (a, b))
            paired = _pairable(ra, rb)
            if paired:
                ra, rb = ra.sort_values("seed"), rb.sort_values("seed")
            se, choice = None, ""
            if cond == "tuned" and paired and None not in picks.values() and \
                    max(len(self._lrs(a, cond, k)), len(self._lrs(b, cond, k))) > 1:
                se, choice = self._choice(a, b, k, names)
            levels = plan.levels(k)
            c = compare_arrays(ra["test_acc"].to_numpy(float), rb["test_acc"].to_numpy(float), paired=paired,
                               margin_points=plan.margin_points, alpha=plan.alpha, names=names, levels=levels, se=se)
            decided = c.verdict != "inconclusive"
            state = "decided" if decided else ("cap" if k == last else "open")
            row.update({"lr_a": picks[a] if picks[a] is not None else _lr(ra["lr"]),
                        "lr_b": picks[b] if picks[b] is not None else _lr(rb["lr"]),
                        "n_a": c.n_a, "n_b": c.n_b, "paired": c.paired, "diff": c.diff, "low": c.low,
                        "high": c.high, "p_difference": c.p_difference, "p_equivalence": c.p_equivalence,
                        "margin": c.margin, "verdict": c.verdict, "sentence": c.sentence,
                        "detectable": c.detectable, "half_width": c.half_width,
                        "reach": self._look_text(k, state, levels, choice) + c.reach, "look": k + 1,
                        "state": state, "level_difference": levels[0], "level_equivalence": levels[1],
                        "choice": choice})
            if state != "open":
                break
        if "verdict" not in row:  # no look trained: nothing to compare yet
            row.update(verdict="inconclusive", sentence=f"Inconclusive: no confirmation runs of {names[0]} and "
                                                        f"{names[1]} on the first look's seeds yet.", reach="")
        return row

    def _choice(self, a: str, b: str, k: int, names: tuple[str, str]) -> tuple[float | None, str]:
        """The tuned comparison's standard error with the choice of LR in it, and how often each
        candidate is picked (``analysis.sequential.choice_bootstrap``)."""
        seeds = self.plan.seeds_at(k) if self.sequential else None
        lrs = {r: self.alive(r, k) for r in (a, b)}
        val = {r: _matrix(self.rows, r, lrs[r], "val_acc", seeds) for r in (a, b)}
        test = {r: _matrix(self.rows, r, lrs[r], "test_acc", seeds) for r in (a, b)}
        common = sorted(set.intersection(*(set(m.index) for m in (*val.values(), *test.values()))))
        n = len(common)
        if n < 3:
            return None, ""
        v = {r: val[r].loc[common].to_numpy() for r in (a, b)}
        t = {r: test[r].loc[common].to_numpy() for r in (a, b)}
        diffs, picks = choice_bootstrap(v, t, a, b, seeded(int(common[0]), k, "choice", a, b))
        se = float(diffs.std(ddof=1)) * math.sqrt(n / (n - 1))
        parts = []
        for r, name in zip((a, b), names):
            share = np.bincount(picks[r], minlength=len(lrs[r])) / len(picks[r])
            order = np.argsort(-share, kind="stable")
            parts.append(f"{name} " + ", ".join(f"{lrs[r][j]:.3g} {100 * share[j]:.0f}%" for j in order if share[j] > 0))
        return se, f"picked on {BOOTSTRAP} resamples of the seeds: " + "; ".join(parts)

    def _look_text(self, k: int, state: str, levels: tuple[float, float], choice: str) -> str:
        if not self.sequential:
            return ""
        n, looks = self.plan.looks[k], len(self.plan.looks)
        where = {"decided": f"Decided at look {k + 1} of {looks} ({n} seeds",
                 "cap": f"Undecided at the cap, look {looks} of {looks} ({n} seeds",
                 "open": f"Open after look {k + 1} of {looks} ({n} seeds"}[state]
        carried = f"; the interval carries the choice of LR ({choice})" if choice else ""
        return (f"{where}; thresholds p<{levels[0]:.3g} for a difference, TOST p<{levels[1]:.3g}{carried}). ")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.comparisons, columns=COMPARE_COLUMNS)

    def next_look(self) -> tuple[int, list[tuple[str, str, float]]] | None:
        """The next look to train and its configurations ``(regime, condition, lr)``: every regime of
        an open comparison, in its condition (tuned: its candidates that can still be picked); None
        when every comparison is decided or at the last look."""
        open_ = [c for c in self.comparisons if c["state"] == "open" and 1 <= c["look"] < len(self.plan.looks)]
        if not open_:
            return None
        k = max(c["look"] for c in open_)  # the next look's index (looks are 1-based in the rows)
        configs = set()
        for c in open_:
            for r in (c["a"], c["b"]):
                lrs = self.alive(r, k) if c["condition"] == "tuned" else \
                    sorted(float(x) for x in pd.unique(_rows(self.ran, r, c["condition"], None)["lr"]))
                configs |= {(r, c["condition"], lr) for lr in lrs}
        order = {r: i for i, r in enumerate(sort_regimes({c[0] for c in configs}))}
        return k, sorted(configs, key=lambda x: (order[x[0]], str(x[1]), x[2]))


def compare_contrasts(trials: pd.DataFrame, contrasts: Iterable[tuple[str, str]] | None = None,
                      margin_points: float = DEFAULT_MARGIN_POINTS, alpha: float = ALPHA,
                      names: Callable[[str, str], tuple[str, str]] | None = None,
                      plan: Plan | None = None) -> pd.DataFrame:
    """Every contrast ``(a, b)`` (default: the lottery pair) in every condition that has both, in
    condition then contrast order, replayed over the looks of ``plan`` (default: one look at every
    seed, the fixed design); columns ``COMPARE_COLUMNS``.  ``names(a, b)``: the sentence's names."""
    pairs = DEFAULT_CONTRASTS[LOTTERY] if contrasts is None else list(contrasts)
    if plan is None:
        plan = Plan.fixed(trials["seed"].dropna() if "seed" in trials else (), alpha=alpha,
                          margin_points=margin_points)
    return Replay(trials, pairs, plan, names).frame()


def compare_regimes(trials: pd.DataFrame, a: str = "winning_ticket", b: str = "random_reinit",
                    margin_points: float = DEFAULT_MARGIN_POINTS, alpha: float = ALPHA,
                    names: tuple[str, str] | None = None, plan: Plan | None = None) -> pd.DataFrame:
    """Regime ``a`` against regime ``b`` in each condition that has both (``compare_contrasts``)."""
    return compare_contrasts(trials, [(a, b)], margin_points, alpha, (lambda x, y: names) if names else None, plan)
