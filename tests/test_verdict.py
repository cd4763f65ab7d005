"""A verdict is a measurement: the same command twice gives the same chosen LRs and verdicts, and no
configuration is trained twice (a repeated search suggestion is answered from its first result)."""
from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli

# 5 grid points (0.01 .. 1 at 2 per decade) and 6 trials per regime: at least one repeat each
ARGS = ["--regimes", "winning_ticket,random_reinit", "--num-samples", "6", "--startup-trials", "3",
        "--lr-grid", "2", "--lr-min", "0.01", "--lr-max", "1", "--epochs", "1", "--rounds", "1",
        "--confirm-seeds", "2", "--max-confirm-seeds", "4", "--candidates", "2", "--no-fixed", "--num-cpus", "2"]


def _run(tmp_path, name, ray_env, data_dir):
    r = run_cli([*ARGS, "--root", str(tmp_path / name), "--name", "twice", "--data-dir", data_dir], ray_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = tmp_path / name / "twice"
    return r.stdout, pq.read_table(study / "results" / "trials.parquet").to_pandas(), study


def test_the_same_command_twice_gives_the_same_answer_and_trains_nothing_twice(tmp_path, ray_env, data_dir):
    out1, t1, study = _run(tmp_path, "first", ray_env, data_dir)
    out2, t2, _ = _run(tmp_path, "second", ray_env, data_dir)  # its own folder: nothing cached from the first

    def search(t):
        s = t[t.phase == "search"].sort_values(["regime", "optuna_trial"])
        return list(zip(s.regime, s.optuna_trial, s.lr, s.val_acc))
    assert search(t1) == search(t2)  # the same suggestions, in the same order, with the same results

    def verdicts(out):
        return [ln for ln in out.splitlines() if re.match(r"^tuned: ", ln)]
    assert verdicts(out1) and verdicts(out1) == verdicts(out2)

    search1 = t1[t1.phase == "search"]
    # (a trial whose pretraining diverged has no final training: its stages are cached artifacts)
    trained = search1[search1.reused_from.isna() & search1.train_epochs.notna()]
    assert not trained.duplicated(["regime", "lr", "seed", "prune_round"]).any()  # each trained once
    repeats = search1[search1.reused_from.notna()]
    assert len(repeats) >= 2  # 6 suggestions on 5 points, per regime
    first = trained.set_index("trial_id")
    for _, r in repeats.iterrows():  # answered from the trial that trained it: the same numbers
        src = first.loc[r.reused_from]
        assert (src.regime, src.lr, src.val_acc, src.test_acc) == (r.regime, r.lr, r.val_acc, r.test_acc)
    results = [p for p in (study / "artifacts").iterdir() if p.name.startswith("result-")]
    assert len(results) == len(t1[t1.reused_from.isna() & t1.train_epochs.notna()])  # one per configuration
    assert re.search(r"winning_ticket .* \d+ +[1-5] +\d+\n", out1)  # the summary's distinct-LR count

    # the confirmation in two looks of 2 fresh seeds each: the same runs both times; each regime's 2
    # best search LRs on the first look's seeds, the second look only where the comparison was open
    # (and only for a candidate that could still be picked); the tuned LR the better on validation
    from analysis.design import study_plan
    from analysis.report import replay
    from analysis.stats import picked_lrs

    def confirmed(t):
        c = t[(t.phase == "confirm") & (t.prune_round == t.rounds)].sort_values(["regime", "lr", "seed"])
        return list(zip(c.regime, c.lr, c.seed, c.val_acc, c.test_acc))
    assert confirmed(t1) == confirmed(t2)
    confirm = t1[(t1.phase == "confirm") & (t1.prune_round == t1.rounds)]
    assert (confirm.groupby("regime").lr.nunique() == 2).all()
    assert set(confirm.groupby(["regime", "lr"]).seed.apply(frozenset)) <= {frozenset({1, 2}), frozenset({1, 2, 3, 4})}
    state = replay(t1, 1.0, [("winning_ticket", "random_reinit")], "lottery", study_plan(study))
    assert state.next_look() is None and {c["state"] for c in state.comparisons} <= {"decided", "cap"}
    looks = state.comparisons[0]["look"]
    assert set(confirm.seed) == ({1, 2} if looks == 1 else {1, 2, 3, 4})
    assert f"look {looks} of 2" in verdicts(out1)[0]
    picked = picked_lrs(t1)
    assert f"at LR {picked['winning_ticket']:.3g}" in verdicts(out1)[0]
    assert "runners-up: " in verdicts(out1)[0] and f"Detectable with {2 * looks} seeds" in verdicts(out1)[0]


def test_a_search_judges_each_lr_on_several_seeds(tmp_path, ray_env, data_dir):
    import optuna
    r = run_cli(["--regimes", "winning_ticket", "--num-samples", "2", "--startup-trials", "2", "--search-seeds", "3",
                 "--lr-grid", "2", "--lr-min", "0.03", "--lr-max", "0.3", "--epochs", "1", "--rounds", "1",
                 "--no-confirm", "--root", str(tmp_path / "s"), "--name", "multi", "--data-dir", data_dir,
                 "--num-cpus", "2"], ray_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = tmp_path / "s" / "multi"
    t = pq.read_table(study / "results" / "trials.parquet").to_pandas()
    assert len(t) == 2 * 3 and sorted(set(t.seed)) == [0, 1_000_000, 2_000_000]  # a row per trial and seed
    o = optuna.load_study(study_name="multi.winning_ticket", storage=f"sqlite:///{study / 'optuna.db'}")
    for trial in o.trials:  # Optuna's value: the mean validation accuracy of the trial's seeds
        rows = t[t.optuna_trial == trial.number]
        assert len(rows) == 3 and trial.value == pytest.approx(rows.val_acc.mean())
