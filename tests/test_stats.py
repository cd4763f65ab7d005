"""analysis.stats: checked against scipy on fixed arrays and on synthetic tables with a known truth."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.stats import (ALPHA, DEFAULT_MARGIN_POINTS, Comparison, Interval, compare_arrays,
                            compare_regimes, confirm_rows, mean_interval, summarize)

A = np.array([0.912, 0.905, 0.921, 0.899, 0.917, 0.908])
B = np.array([0.884, 0.890, 0.879, 0.893, 0.881, 0.887])
C = np.array([0.901, 0.873, 0.915, 0.889])  # a third sample of another size, for Welch


def trial(regime: str, seed: int, acc: float, condition: str = "tuned", lr: float = 0.1, **kw) -> dict:
    row = {"phase": "confirm", "condition": condition, "regime": regime, "lr": lr, "seed": seed,
           "prune_round": 5, "rounds": 5, "status": "completed", "test_acc": acc, "diverged": False}
    row.update(kw)
    return row


def table(shift: float, sd: float, seeds: int, rng_seed: int, base: float = 0.90,
          condition: str = "tuned") -> pd.DataFrame:
    """winning_ticket ~ N(base + shift, sd), random_reinit ~ N(base, sd), same seeds."""
    rng = np.random.default_rng(rng_seed)
    rows = [trial("winning_ticket", s, base + shift + rng.normal(0, sd), condition) for s in range(seeds)]
    rows += [trial("random_reinit", s, base + rng.normal(0, sd), condition, lr=0.05) for s in range(seeds)]
    return pd.DataFrame(rows)


# ---- against scipy --------------------------------------------------------------------------------

def test_mean_interval_matches_scipy():
    iv = mean_interval(A, confidence=0.9)
    low, high = stats.t.interval(0.9, len(A) - 1, loc=A.mean(), scale=stats.sem(A))
    assert isinstance(iv, Interval) and iv.n == 6
    assert iv.mean == pytest.approx(A.mean()) and iv.sd == pytest.approx(A.std(ddof=1))
    assert (iv.low, iv.high) == pytest.approx((low, high))


def test_mean_interval_small_and_nan():
    one = mean_interval([0.5])
    assert one.n == 1 and one.mean == 0.5 and all(math.isnan(v) for v in (one.sd, one.low, one.high))
    assert mean_interval([]).n == 0 and math.isnan(mean_interval([]).mean)
    assert mean_interval([0.4, np.nan, 0.6]).n == 2
    flat = mean_interval([0.7, 0.7, 0.7])
    assert flat.sd == pytest.approx(0, abs=1e-12) and (flat.low, flat.high) == pytest.approx((0.7, 0.7))


def test_compare_paired_matches_scipy():
    c = compare_arrays(A, B, paired=True, names=("winning_ticket", "random_reinit"))
    ref = stats.ttest_rel(A, B)
    d, m = A - B, DEFAULT_MARGIN_POINTS / 100
    assert isinstance(c, Comparison) and c.paired and (c.n_a, c.n_b) == (6, 6)
    assert c.diff == pytest.approx(d.mean()) and c.margin == pytest.approx(0.01)
    assert c.p_difference == pytest.approx(ref.pvalue)
    assert (c.low, c.high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    p_lo = stats.ttest_1samp(d, -m, alternative="greater").pvalue
    p_hi = stats.ttest_1samp(d, m, alternative="less").pvalue
    assert c.p_equivalence == pytest.approx(max(p_lo, p_hi))


def test_compare_welch_matches_scipy():
    c = compare_arrays(A, C, paired=False, margin_points=2.0)
    ref = stats.ttest_ind(A, C, equal_var=False)
    m = 0.02
    assert not c.paired and (c.n_a, c.n_b) == (6, 4)
    assert c.diff == pytest.approx(A.mean() - C.mean())
    assert c.p_difference == pytest.approx(ref.pvalue)
    assert (c.low, c.high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    # TOST by hand: H0 diff <= -m and H0 diff >= +m, each one-sided Welch test on the shifted data
    t_lo = (A.mean() - C.mean() + m) / math.sqrt(A.var(ddof=1) / 6 + C.var(ddof=1) / 4)
    p_lo = stats.ttest_ind(A, C - m, equal_var=False, alternative="greater").pvalue
    p_hi = stats.ttest_ind(A, C + m, equal_var=False, alternative="less").pvalue
    assert stats.ttest_ind(A, C - m, equal_var=False).statistic == pytest.approx(t_lo)
    assert c.p_equivalence == pytest.approx(max(p_lo, p_hi))


def test_verdict_follows_p_values():
    c = compare_arrays(A, B, paired=True, names=("winning_ticket", "random_reinit"))
    assert c.p_difference < ALPHA and c.p_equivalence >= ALPHA and c.verdict == "advantage"
    assert c.sentence == ("winning_ticket beats random_reinit by 2.5 points (95% CI 1.1 to 3.9, p=0.006).")
    flipped = compare_arrays(B, A, paired=True, names=("winning_ticket", "random_reinit"))
    assert flipped.verdict == "advantage" and flipped.sentence.startswith("random_reinit beats winning_ticket")
    # a real but negligible difference: both tests significant -> equivalence wins
    rng = np.random.default_rng(0)
    x = rng.normal(0.9, 0.001, 50)
    y = x - 0.003 + rng.normal(0, 0.0005, 50)
    c = compare_arrays(x, y, paired=True)
    assert c.p_difference < ALPHA and c.p_equivalence < ALPHA
    assert c.verdict == "no meaningful difference" and "negligible" in c.sentence


def test_edge_cases():
    same = compare_arrays([0.8, 0.8, 0.8], [0.8, 0.8, 0.8], paired=True)
    assert (same.diff, same.p_difference, same.p_equivalence) == (0, 1.0, 0.0)
    assert same.verdict == "no meaningful difference" and same.low == same.high == 0
    flat = compare_arrays([0.8, 0.8], [0.8, 0.8, 0.8], paired=False)
    assert flat.verdict == "no meaningful difference" and flat.p_difference == 1.0
    far = compare_arrays([0.9, 0.9], [0.8, 0.8], paired=False)  # constant 10-point gap
    assert far.verdict == "advantage" and far.p_difference == 0.0 and far.p_equivalence == 1.0
    few = compare_arrays([0.9], [0.8, 0.85], paired=False, names=("x", "y"))
    assert few.verdict == "inconclusive" and "too few seeds" in few.sentence
    assert math.isnan(few.p_difference) and math.isnan(few.p_equivalence) and math.isnan(few.low)
    assert compare_arrays([0.9, np.nan], [0.8, 0.7], paired=True).verdict == "inconclusive"
    with pytest.raises(ValueError):
        compare_arrays([0.9, 0.8], [0.8], paired=True)


# ---- synthetic tables with a known truth ---------------------------------------------------------

def test_equal_distributions_are_equivalent():
    res = compare_regimes(table(0.0, 0.002, 30, rng_seed=1))
    assert len(res) == 1
    r = res.iloc[0]
    assert r["condition"] == "tuned" and r["paired"] and r["n_a"] == r["n_b"] == 30
    assert r["verdict"] == "no meaningful difference" and r["p_equivalence"] < ALPHA
    assert -0.01 < r["low"] < r["high"] < 0.01
    assert r["lr_a"] == pytest.approx(0.1) and r["lr_b"] == pytest.approx(0.05)


def test_three_point_shift_is_an_advantage():
    r = compare_regimes(table(0.03, 0.003, 5, rng_seed=2)).iloc[0]
    assert r["verdict"] == "advantage" and r["diff"] == pytest.approx(0.03, abs=0.005)
    assert r["low"] < 0.03 < r["high"]
    assert r["sentence"].startswith("winning_ticket beats random_reinit by ")


def test_few_noisy_seeds_are_inconclusive():
    r = compare_regimes(table(0.005, 0.05, 3, rng_seed=3)).iloc[0]
    assert r["verdict"] == "inconclusive" and r["p_difference"] >= ALPHA and r["p_equivalence"] >= ALPHA
    assert "Inconclusive" in r["sentence"] and "+-1.0 points" in r["sentence"]


def test_pairing_by_seed_set():
    t = table(0.01, 0.01, 6, rng_seed=4)
    shuffled = t.sample(frac=1.0, random_state=0)  # row order must not matter when pairing
    paired = compare_regimes(shuffled).iloc[0]
    ra = t[t.regime == "winning_ticket"].sort_values("seed")["test_acc"].to_numpy()
    rb = t[t.regime == "random_reinit"].sort_values("seed")["test_acc"].to_numpy()
    assert paired["paired"] and paired["p_difference"] == pytest.approx(stats.ttest_rel(ra, rb).pvalue)
    other = t.copy()
    other.loc[other.regime == "random_reinit", "seed"] += 100
    unpaired = compare_regimes(other).iloc[0]
    assert not unpaired["paired"]
    assert unpaired["p_difference"] == pytest.approx(stats.ttest_ind(ra, rb, equal_var=False).pvalue)
    dup = pd.concat([t, pd.DataFrame([trial("random_reinit", 0, 0.9)])], ignore_index=True)
    assert not compare_regimes(dup).iloc[0]["paired"]


def test_excluded_rows_do_not_count():
    t = table(0.03, 0.003, 5, rng_seed=5)
    junk = pd.DataFrame([
        trial("winning_ticket", 0, 0.1, phase="search", condition=None),
        trial("winning_ticket", 1, 0.1, status="error"),
        trial("random_reinit", 2, 0.99, prune_round=2),
        trial("random_reinit", 99, 0.99, phase="search", condition=None),
    ])
    full = pd.concat([t, junk], ignore_index=True)
    assert len(confirm_rows(full)) == len(t)
    pd.testing.assert_frame_equal(compare_regimes(full), compare_regimes(t))
    pd.testing.assert_frame_equal(summarize(full), summarize(t))


def test_diverged_runs_count_as_is():
    t = table(0.0, 0.002, 5, rng_seed=6)
    t.loc[0, ["test_acc", "diverged"]] = [0.1, True]
    s = summarize(t)
    wt = s[s.regime == "winning_ticket"].iloc[0]
    assert wt["n"] == 5 and wt["mean"] == pytest.approx(t[t.regime == "winning_ticket"]["test_acc"].mean())


def test_summarize_per_condition_and_regime():
    t = pd.concat([table(0.03, 0.003, 5, 7, condition="fixed_large"),
                   table(0.0, 0.002, 4, 8, condition="tuned"),
                   table(0.01, 0.01, 3, 9, condition="fixed_small")], ignore_index=True)
    t.loc[(t.condition == "tuned") & (t.regime == "winning_ticket") & (t.seed == 0), "lr"] = 0.4
    s = summarize(t, confidence=0.95)
    assert list(s.columns) == ["condition", "regime", "lr", "n", "mean", "sd", "low", "high"]
    assert list(zip(s.condition, s.regime)) == [
        ("tuned", "winning_ticket"), ("tuned", "random_reinit"),
        ("fixed_small", "winning_ticket"), ("fixed_small", "random_reinit"),
        ("fixed_large", "winning_ticket"), ("fixed_large", "random_reinit")]
    for _, row in s.iterrows():
        acc = t[(t.condition == row.condition) & (t.regime == row.regime)]["test_acc"].to_numpy()
        low, high = stats.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=stats.sem(acc))
        assert row["n"] == len(acc) and row["mean"] == pytest.approx(acc.mean())
        assert row["sd"] == pytest.approx(acc.std(ddof=1)) and (row["low"], row["high"]) == pytest.approx((low, high))
    tuned_wt = s[(s.condition == "tuned") & (s.regime == "winning_ticket")].iloc[0]
    assert tuned_wt["lr"] == pytest.approx(math.sqrt(0.1 * 0.4))  # geometric mean of the LRs used
    assert list(compare_regimes(t)["condition"]) == ["tuned", "fixed_small", "fixed_large"]


def test_missing_regime_gives_empty_frame():
    t = table(0.0, 0.002, 5, rng_seed=10)
    res = compare_regimes(t, a="winning_ticket", b="late_rewind")
    assert res.empty and "verdict" in res.columns and "p_equivalence" in res.columns
    assert compare_regimes(t.iloc[:0]).empty


def test_each_comparison_says_what_it_could_detect():
    d = np.array([0.01, 0.03, -0.02, 0.04, 0.00])  # paired differences, 5 seeds
    b = np.full(5, 0.7)
    c = compare_arrays(b + d, b, paired=True, margin_points=1.0)
    se = d.std(ddof=1) / np.sqrt(5)
    from statsmodels.stats.power import TTestPower  # the exact (noncentral t) power of the paired test
    effect = TTestPower().solve_power(effect_size=None, nobs=5, alpha=0.05, power=0.8)
    assert c.detectable == pytest.approx(effect * se * np.sqrt(5))
    assert c.detectable > (stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * se  # above the normal approximation
    assert c.half_width == pytest.approx((c.high - c.low) / 2)
    need = int(np.ceil(5 * (c.half_width / 0.01) ** 2))  # the interval is wider than the margin here
    assert c.verdict == "inconclusive" and f"about {need} seeds would bring it within the margin" in c.reach
    assert c.reach.startswith(f"Detectable with 5 seeds: {100 * c.detectable:.1f} points (80% power")
    tight = compare_arrays(b + d / 20, b, paired=True, margin_points=1.0)  # an interval inside the margin
    assert "seeds would bring" not in tight.reach and tight.detectable < c.detectable


def test_the_tuned_lr_is_the_candidate_of_best_mean_validation_accuracy():
    from analysis.stats import candidates, confirm_rows, picked_lrs
    rows = []
    for regime, vals in (("winning_ticket", {0.1: 0.70, 0.2: 0.72, 0.4: 0.71}), ("random_reinit", {0.1: 0.6, 0.2: 0.6})):
        for lr, v in vals.items():
            for seed in range(1, 5):
                rows.append({"phase": "confirm", "status": "completed", "condition": "tuned", "regime": regime,
                             "lr": lr, "seed": seed, "prune_round": 2, "rounds": 2, "val_acc": v + 0.001 * seed,
                             "test_acc": v - 0.01})
    rows.append({**rows[0], "prune_round": 1})  # a sweep row at a candidate that was not picked
    t = pd.DataFrame(rows)
    table = candidates(t)
    assert list(table[table.picked].lr) == [0.2, 0.1]  # ties (random_reinit) go to the smaller LR
    assert table.set_index(["regime", "lr"]).loc[("winning_ticket", 0.2), "val_mean"] == pytest.approx(0.7225)
    assert picked_lrs(t) == {"winning_ticket": 0.2, "random_reinit": 0.1}
    c = confirm_rows(t)
    assert set(zip(c.regime, c.lr)) == {("winning_ticket", 0.2), ("random_reinit", 0.1)} and len(c) == 8


def test_the_confirmation_plan_trains_candidates_then_sweeps_the_picked_lr():
    from study.config import StudyConfig
    from study.confirmation import candidate_lrs, confirm_specs, sweep_specs
    search = pd.DataFrame({"phase": "search", "status": "completed", "regime": ["winning_ticket"] * 5,
                           "lr": [0.1, 0.2, 0.2, 0.4, 0.8], "val_acc": [0.5, 0.7, 0.7, 0.6, 0.65]})
    lrs = candidate_lrs(search, 3)
    assert lrs == {"winning_ticket": [0.2, 0.8, 0.4]}  # distinct LRs, best first
    cfg = StudyConfig().updated(regimes=("winning_ticket",), confirm_seeds=2, rounds=3)
    first = confirm_specs(cfg, lrs)  # each spec: all fresh seeds, trained together
    assert len(first) == 3 + 2 and {s.prune_round for s in first} == {3} and {s.seeds for s in first} == {(1, 2)}
    assert [s.lr for s in first if s.condition == "tuned"] == [0.2, 0.8, 0.4]
    sweep = sweep_specs(cfg, {"winning_ticket": 0.8})
    assert {(s.lr, s.prune_round) for s in sweep} == {(0.8, 1), (0.8, 2)} and len(sweep) == 2
    assert sweep_specs(cfg.updated(sweep=False), {"winning_ticket": 0.8}) == []
