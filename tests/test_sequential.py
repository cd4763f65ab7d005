"""The sequential confirmation (analysis.sequential, analysis.stats.Replay): the boundaries against
published values, the rule's error rates by simulation, and the looks replayed on tables: a decided
comparison stops at the first look, an undecided one goes on, a candidate that can no longer be
picked stops, and the tuned interval carries the choice of LR."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.sequential import Plan, choice_bootstrap, seeded, upper_bounds
from analysis.stats import Replay, candidates, compare_arrays

PAIR = [("winning_ticket", "random_reinit")]


def test_boundaries_match_gsdesign():
    # gsDesign (R), sfLDOF, k=4 equally spaced, one-sided alpha 0.025: 4.3326 2.9631 2.3590 2.0141
    assert upper_bounds((0.25, 0.5, 0.75, 1.0), 0.025, "obrien-fleming") == pytest.approx(
        (4.3326, 2.9631, 2.3590, 2.0141), abs=1e-3)
    pocock = upper_bounds((0.25, 0.5, 0.75, 1.0), 0.025, "pocock")
    assert max(pocock) - min(pocock) < 0.03 and 2.3 < pocock[0] < 2.4  # about even
    assert upper_bounds((1.0,), 0.025, "pocock") == pytest.approx((1.95996,), abs=1e-4)  # one look: fixed
    assert Plan.fixed(range(5)).levels(0) == pytest.approx((0.05, 0.05))
    plan = Plan.of(1, 10, 40)
    assert plan.looks == (10, 20, 30, 40) and plan.seeds[0] == 1 and plan.new_seeds(1) == tuple(range(11, 21))
    assert all(lv[0] < 0.05 and lv[1] < 0.05 for lv in map(plan.levels, range(4)))


def _run(plan: Plan, draw, reps: int, rng) -> pd.Series:
    """The rule on ``reps`` synthetic confirmations: paired differences (points/100) drawn by
    ``draw(rng, n)``, looks of ``plan``; the verdict where it stopped."""
    out = []
    for _ in range(reps):
        d = draw(rng, plan.looks[-1])
        for k, n in enumerate(plan.looks):
            c = compare_arrays(0.5 + d[:n], np.full(n, 0.5), paired=True, margin_points=1.0,
                               levels=plan.levels(k))
            if c.verdict != "inconclusive":
                break
        out.append((c.verdict, k))
    return pd.DataFrame(out, columns=["verdict", "look"])


@pytest.mark.parametrize("spending", ["pocock", "obrien-fleming"])
def test_the_rule_holds_its_error_rates(spending):
    """2000 confirmations of up to four looks (10 .. 40 seeds, sd 2 points between seeds):
    - no effect: an 'advantage' at most 5% of the time (95% Monte-Carlo tolerance: +1.5 points);
    - an effect of the margin's size (1 point): 'no meaningful difference' at most 5%;
    - an effect of 3 points: decided at the first look almost always (Pocock), 'advantage' always."""
    plan = Plan.of(1, 10, 40, spending=spending)
    rng = np.random.default_rng(7)
    null = _run(plan, lambda r, n: r.normal(0, 0.02, n), 2000, rng)
    assert (null.verdict == "advantage").mean() <= 0.05 + 0.015
    at_margin = _run(plan, lambda r, n: r.normal(0.01, 0.02, n), 2000, rng)
    assert (at_margin.verdict == "no meaningful difference").mean() <= 0.05 + 0.015
    big = _run(plan, lambda r, n: r.normal(0.03, 0.02, n), 200, rng)
    assert (big.verdict == "advantage").all()
    if spending == "pocock":
        assert (big.look == 0).mean() > 0.9
    # the looks do spend: a fixed design at the last look's levels would reject more often
    assert (null.verdict == "advantage").mean() > 0.02


def test_the_choice_carrying_interval_holds_its_error_rate():
    """Both regimes alike, three candidate LRs each whose validation and test accuracy move
    together: picking each regime's best on the same seeds makes the plain interval too narrow
    for the pick-then-compare estimate; the bootstrap's standard error keeps false 'advantage'
    at most 5% (+2 points of tolerance), and is never below the plain one."""
    rng = np.random.default_rng(3)
    reps, n, false, wider = 600, 10, 0, 0
    for i in range(reps):
        seed_effect = rng.normal(0, 0.02, (n, 1))
        val, test = {}, {}
        for r in ("a", "b"):
            lr_effect = rng.normal(0, 0.02, (n, 3))  # each seed's luck at each LR, shared by val and test
            val[r] = 0.6 + seed_effect + lr_effect + rng.normal(0, 0.005, (n, 3))
            test[r] = 0.6 + seed_effect + lr_effect + rng.normal(0, 0.005, (n, 3))
        picks = {r: int(np.argmax(val[r].mean(axis=0))) for r in ("a", "b")}
        diffs, _ = choice_bootstrap(val, test, "a", "b", seeded(i, 0, "sim"))
        se = diffs.std(ddof=1) * math.sqrt(n / (n - 1))
        xa, xb = test["a"][:, picks["a"]], test["b"][:, picks["b"]]
        c = compare_arrays(xa, xb, paired=True, se=se)
        plain = compare_arrays(xa, xb, paired=True)
        false += c.verdict == "advantage"
        wider += (c.high - c.low) >= (plain.high - plain.low) - 1e-12
    assert false / reps <= 0.05 + 0.02
    assert wider == reps


def _rows(regime, condition, lr, seeds, acc, val=None, rng=None, sd=0.0):
    rng = rng or np.random.default_rng(0)
    return [{"phase": "confirm", "status": "completed", "condition": condition, "regime": regime, "lr": lr,
             "seed": s, "prune_round": 2, "rounds": 2, "test_acc": acc + rng.normal(0, sd),
             "val_acc": (acc if val is None else val) + rng.normal(0, sd), "diverged": False} for s in seeds]


def test_a_decided_comparison_stops_and_an_open_one_goes_on():
    plan = Plan.of(1, 4, 12)
    rng = np.random.default_rng(1)
    look1 = tuple(range(1, 5))
    rows = (_rows("winning_ticket", "fixed_small", 0.01, look1, 0.70, rng=rng, sd=0.002)
            + _rows("random_reinit", "fixed_small", 0.01, look1, 0.50, rng=rng, sd=0.002)    # 20 points: decided
            + _rows("winning_ticket", "fixed_large", 0.3, look1, 0.60, rng=rng, sd=0.02)
            + _rows("random_reinit", "fixed_large", 0.3, look1, 0.59, rng=rng, sd=0.02))     # noisy: open
    state = Replay(pd.DataFrame(rows), PAIR, plan)
    by = {c["condition"]: c for c in state.comparisons}
    assert by["fixed_small"]["state"] == "decided" and by["fixed_small"]["verdict"] == "advantage"
    assert by["fixed_small"]["look"] == 1 and "Decided at look 1 of 3 (4 seeds" in by["fixed_small"]["reach"]
    assert by["fixed_large"]["state"] == "open" and "Open after look 1 of 3" in by["fixed_large"]["reach"]
    k, configs = state.next_look()
    assert k == 1 and configs == [("winning_ticket", "fixed_large", 0.3), ("random_reinit", "fixed_large", 0.3)]
    # the second and third looks, still undecided: inconclusive at the cap, with what it could detect
    for k in (1, 2):
        new = plan.new_seeds(k)
        rows += (_rows("winning_ticket", "fixed_large", 0.3, new, 0.60, rng=rng, sd=0.02)
                 + _rows("random_reinit", "fixed_large", 0.3, new, 0.60, rng=rng, sd=0.02))
    state = Replay(pd.DataFrame(rows), PAIR, plan)
    by = {c["condition"]: c for c in state.comparisons}
    assert by["fixed_small"]["look"] == 1 and by["fixed_large"]["look"] == 3
    assert by["fixed_large"]["state"] == "cap" and by["fixed_large"]["verdict"] == "inconclusive"
    assert by["fixed_large"]["n_a"] == 12 and "Undecided at the cap, look 3 of 3 (12 seeds" in by["fixed_large"]["reach"]
    assert "Detectable with 12 seeds" in by["fixed_large"]["reach"] and state.next_look() is None


def test_a_candidate_that_can_no_longer_be_picked_stops_and_the_interval_carries_the_choice():
    plan = Plan.of(1, 6, 18)
    rng = np.random.default_rng(2)
    look1 = plan.seeds_at(0)
    rows = (_rows("winning_ticket", "tuned", 0.1, look1, 0.60, rng=rng, sd=0.03)
            + _rows("winning_ticket", "tuned", 0.2, look1, 0.605, rng=rng, sd=0.03)   # a flat top: both stay
            + _rows("winning_ticket", "tuned", 0.8, look1, 0.30, rng=rng, sd=0.03)    # far below: dropped
            + _rows("random_reinit", "tuned", 0.2, look1, 0.61, rng=rng, sd=0.03))    # level, noisy: open
    t = pd.DataFrame(rows)
    state = Replay(t, PAIR, plan)
    tuned = state.comparisons[0]
    assert tuned["state"] == "open" and tuned["choice"].startswith("picked on 2000 resamples of the seeds")
    assert state.alive("winning_ticket", 1) == [0.1, 0.2] and state.alive("random_reinit", 1) == [0.2]
    k, configs = state.next_look()
    assert k == 1 and configs == [("winning_ticket", "tuned", 0.1), ("winning_ticket", "tuned", 0.2),
                                  ("random_reinit", "tuned", 0.2)]
    # with the choice the interval is at least as wide as at the picked LRs alone
    pick = tuned["lr_a"]
    xa = t[(t.regime == "winning_ticket") & (t.lr == pick)].sort_values("seed").test_acc.to_numpy()
    xb = t[t.regime == "random_reinit"].sort_values("seed").test_acc.to_numpy()
    plain = compare_arrays(xa, xb, paired=True, levels=plan.levels(0))
    assert tuned["high"] - tuned["low"] >= plain.high - plain.low - 1e-12
    # the dropped candidate: fewer seeds in the candidates table, never picked
    new = plan.new_seeds(1)
    more = pd.DataFrame(_rows("winning_ticket", "tuned", 0.1, new, 0.60, rng=rng, sd=0.03)
                        + _rows("winning_ticket", "tuned", 0.2, new, 0.605, rng=rng, sd=0.03)
                        + _rows("random_reinit", "tuned", 0.2, new, 0.61, rng=rng, sd=0.03))
    table = candidates(pd.concat([t, more], ignore_index=True)).set_index("lr")
    wt = table[table.regime == "winning_ticket"]
    assert wt.loc[0.8, "dropped_after"] == 6 and not wt.loc[0.8, "picked"] and math.isnan(wt.loc[0.8, "share"])
    assert wt.loc[[0.1, 0.2], "share"].sum() == pytest.approx(1.0) and wt.picked.sum() == 1


def test_the_replay_is_the_same_every_time():
    plan = Plan.of(1, 5, 10)
    rng = np.random.default_rng(4)
    rows = []
    for lr, acc in ((0.1, 0.60), (0.2, 0.61), (0.4, 0.605)):
        rows += _rows("winning_ticket", "tuned", lr, plan.seeds, acc, rng=rng, sd=0.01)
        rows += _rows("random_reinit", "tuned", lr, plan.seeds, acc - 0.01, rng=rng, sd=0.01)
    t = pd.DataFrame(rows)
    first, second = Replay(t, PAIR, plan).frame(), Replay(t.sample(frac=1, random_state=1), PAIR, plan).frame()
    pd.testing.assert_frame_equal(first, second)


def test_the_ui_compare_link_selects_the_picked_lrs_only(tmp_path):
    """study.ui's second link: the tuned runs at each regime's picked LR, not every candidate's."""
    from study.ui import comparison_runs
    rng = np.random.default_rng(5)
    rows = []
    for regime, best in (("winning_ticket", 0.2), ("random_reinit", 0.1)):
        for lr in (0.1, 0.2, 0.4):
            rows += _rows(regime, "tuned", lr, range(1, 4), 0.7 if lr == best else 0.6, rng=rng, sd=0.001)
    t = pd.DataFrame(rows)
    t["mlflow_run_id"] = [f"run-{r}-{lr}-{s}" for r, lr, s in zip(t.regime, t.lr, t.seed)]
    (tmp_path / "results").mkdir()
    t.to_parquet(tmp_path / "results" / "trials.parquet")
    pd.DataFrame({"trial_id": []}).to_parquet(tmp_path / "results" / "epochs.parquet")
    what, ids = comparison_runs(tmp_path)
    assert "condition tuned" in what and len(ids) == 6
    assert {i.rsplit("-", 1)[0] for i in ids} == {"run-winning_ticket-0.2", "run-random_reinit-0.1"}


def test_a_look_prints_only_what_changed():
    """After each look the driver prints each comparison's state once: a comparison decided at an
    earlier look is not printed again; one still open is, at its new look."""
    import io

    from study.course import _print_look
    decided = {"condition": "fixed_small", "a": "winning_ticket", "b": "random_reinit", "look": 1,
               "state": "decided", "verdict": "advantage", "diff": 0.167}
    open1 = {"condition": "tuned", "a": "winning_ticket", "b": "random_reinit", "look": 1, "state": "open",
             "diff": 0.013, "low": -0.01, "high": 0.036}
    out, shown = io.StringIO(), set()
    _print_look([open1, decided], shown, out)
    _print_look([{**open1, "look": 2, "state": "decided", "verdict": "advantage", "diff": 0.022}, decided], shown, out)
    assert out.getvalue().splitlines() == [
        "    look 1: tuned winning_ticket vs random_reinit: open (+1.3 points, CI -1.0 to 3.6)",
        "    look 1: fixed_small winning_ticket vs random_reinit: advantage (+16.7 points)",
        "    look 2: tuned winning_ticket vs random_reinit: advantage (+2.2 points)"]
